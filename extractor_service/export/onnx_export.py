"""Export a SourceModel to a model directory: a checked, self-contained model.onnx + manifest."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import onnx
import torch

from extractor_service.export import SourceModel
from extractor_service.manifest import Manifest, make_version, sha256_file, write_manifest

# The dynamo exporter's native opset; asking for an older one adds a version-conversion
# pass that can fail. ONNX Runtime has run opset 18 since 1.14.
OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
ONNX_FILE = "model.onnx"
PRECISION = "fp32"
# torch.export specialises a dimension whose example size is 0 or 1, which would fix the
# batch; an example batch of 2 keeps it symbolic.
_EXAMPLE_BATCH = 2


def _to_onnx(source: SourceModel, path: Path, opset: int) -> None:
    example = torch.zeros(_EXAMPLE_BATCH, 3, source.input_size, source.input_size)
    batch = torch.export.Dim("batch", min=1)
    # The legacy TorchScript exporter still works but warns that it is deprecated and
    # scheduled for removal; the dynamo exporter (torch.export + onnxscript) is the default
    # and the maintained one, and its optimizer folds TF-style asymmetric padding into Conv.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    # It logs one line per torchvision op it skips; torchvision is deliberately absent.
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch 2.13's own export pipeline deep-copies a pytree LeafSpec, which trips
            # typing_extensions' deprecation of LeafSpec; nothing in our code can act on it.
            warnings.filterwarnings(
                "ignore",
                message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
            )
            program = torch.onnx.export(
                source.module.eval(),
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    finally:
        registration_log.setLevel(level)
    if program is None:  # only None when given a file to write, which we do not
        raise RuntimeError("torch.onnx.export returned no program")
    graph = program.model.graph
    names = ([v.name for v in graph.inputs], [v.name for v in graph.outputs])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise RuntimeError(f"exported graph has inputs/outputs {names}")
    # One self-contained file: the serving side checksums and loads a single path. VGG16
    # fp32 (537 MB) is well under protobuf's 2 GB limit, past which this raises.
    program.save(path, external_data=False)


def export_model(source: SourceModel, out_dir: Path, *, opset: int = OPSET) -> Manifest:
    """Write out_dir/model.onnx then out_dir/manifest.json, each by rename from a temp file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = out_dir / f".{ONNX_FILE}.{os.getpid()}.tmp"
    try:
        _to_onnx(source, temporary, opset)
        # The path form checks a file of any size; the in-memory form stops at 2 GB.
        onnx.checker.check_model(str(temporary))
        manifest = Manifest(
            name=source.name,
            version=make_version(source.layer, PRECISION, source.weights_sha256),
            layer=source.layer,
            dimension=source.dimension,
            input_size=source.input_size,
            resize_size=source.resize_size,
            mean=source.mean,
            std=source.std,
            precision=PRECISION,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            onnx_file=ONNX_FILE,
            onnx_sha256=sha256_file(temporary),
            weights_source=source.weights_source,
            opset=opset,
        )
        # Model first: a crash before the manifest lands leaves an old manifest whose
        # checksum no longer verifies, so nothing serves or skips a half-finished export.
        temporary.replace(out_dir / ONNX_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    write_manifest(out_dir, manifest)
    return manifest
