"""An exported model loaded into ONNX Runtime on the best hardware available."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from extractor_service.manifest import Manifest, ManifestError, load_manifest, verify_checksum

log = logging.getLogger(__name__)

# Best first: TensorRT compiles the graph for the GPU, CUDA runs it there, the CPU
# always works.
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message says why."""


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The execution providers to use: the requested ones, or the best available."""
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise ModelLoadError(
                f"execution provider(s) {', '.join(unknown)} not available in this "
                f"onnxruntime build, which offers: {', '.join(available)}"
            )
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible: the affinity mask is all there is
    return cpus


class OnnxModel:
    """One ONNX Runtime session for an exported model; ``run`` is thread-safe."""

    def __init__(self, manifest: Manifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self.session = session
        self.providers: list[str] = session.get_providers()

    @classmethod
    def load(
        cls, model_dir: Path, *, providers: Sequence[str] = (), intra_op_threads: int = 0
    ) -> OnnxModel:
        """Loads ``model_dir`` after checking its manifest and the ONNX file's checksum."""
        try:
            manifest = load_manifest(model_dir)
            verify_checksum(model_dir, manifest)
        except ManifestError as error:
            raise ModelLoadError(f"{error}; export a model with `make model`") from error
        chosen = choose_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or available_cpus()
        # One batch runs at a time (the batcher's single worker), so parallelism
        # inside operators is all there is; more inter-op threads only contend.
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(model_dir / manifest.onnx_file), sess_options=options, providers=chosen
        )
        model = cls(manifest, session)
        model._check_signature()
        log.info(
            "model loaded",
            extra={
                "model": manifest.name,
                "version": manifest.version,
                "dimension": manifest.dimension,
                "providers": model.providers,
                "intra_op_threads": options.intra_op_num_threads,
            },
        )
        return model

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Embeds a (N, 3, S, S) batch into (N, dimension) float32 vectors."""
        outputs = self.session.run([self.manifest.output_name], {self.manifest.input_name: batch})
        return np.asarray(outputs[0], dtype=np.float32)

    def warm_up(self) -> None:
        """Runs one batch so the first caller does not pay for lazy initialisation."""
        size = self.manifest.input_size
        self.run(np.zeros((1, 3, size, size), dtype=np.float32))

    def _check_signature(self) -> None:
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if self.manifest.input_name not in inputs or self.manifest.output_name not in outputs:
            raise ModelLoadError(
                f"graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, but the "
                f"manifest names {self.manifest.input_name!r} and {self.manifest.output_name!r}"
            )
        width = outputs[self.manifest.output_name][-1]
        if isinstance(width, int) and width != self.manifest.dimension:
            raise ModelLoadError(
                f"graph output is {width}-D, the manifest says {self.manifest.dimension}-D"
            )
