"""Static int8 quantization of an exported fp32 model directory, calibrated on real photos."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnxruntime import quantization
from PIL import Image

from extractor_service.export import WeightsError
from extractor_service.manifest import (
    Manifest,
    load_manifest,
    make_version,
    sha256_file,
    verify_checksum,
    write_manifest,
)
from extractor_service.preprocess import PreprocessConfig, preprocess

PRECISION = "int8"
DARKNET_DIR = Path("/usr/share/darknet/data")
# Photos kept out of calibration so that tests and benchmarks can measure int8 against fp32
# on images the quantizer never saw. Both sources are optional at run time.
HELD_OUT = frozenset({"chelsea", "motorcycle", "dog", "eagle", "giraffe", "person"})
_SKIMAGE = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field",
    "retina", "moon", "coins", "brick", "grass", "gravel",
)  # fmt: skip
_DARKNET = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")
# Separates the weights' provenance from the quantization note in the manifest.
PROVENANCE_SEPARATOR = " | "


@dataclass(frozen=True)
class Variant:
    """One way to quantize: the knobs of onnxruntime.quantization.quantize_static."""

    name: str
    quant_format: quantization.QuantFormat = quantization.QuantFormat.QDQ
    activation_type: quantization.QuantType = quantization.QuantType.QUInt8
    per_channel: bool = True
    symmetric_activations: bool = False
    calibrate_method: quantization.CalibrationMethod = quantization.CalibrationMethod.MinMax
    # Op types left in fp32 (e.g. "Gemm": VGG16's FC layers are memory-bound at batch 1).
    exclude_op_types: tuple[str, ...] = ()
    # Leave the first convolution (raw pixels in) in fp32, a usual accuracy fix.
    exclude_first_conv: bool = False
    # Keep the nodes after the last quantizable op (pooling, reshape) in fp32.
    exclude_last_n: int = 0
    percentile: float | None = None

    def describe(self) -> str:
        fields = [
            f"{self.quant_format.name}",
            f"act {self.activation_type.name}{' sym' if self.symmetric_activations else ''}",
            f"weights QInt8 {'per-channel' if self.per_channel else 'per-tensor'}",
            f"{self.calibrate_method.name} calibration",
        ]
        if self.percentile is not None:
            fields.append(f"percentile {self.percentile}")
        if self.exclude_op_types:
            fields.append(f"fp32 {'/'.join(self.exclude_op_types)}")
        if self.exclude_first_conv:
            fields.append("fp32 first conv")
        return ", ".join(fields)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("qdq"),
        Variant("qdq-per-tensor", per_channel=False),
        Variant("qdq-s8s8", activation_type=quantization.QuantType.QInt8),
        Variant("qdq-s8s8-per-tensor", activation_type=quantization.QuantType.QInt8,
                per_channel=False),
        Variant("qoperator-s8s8", quant_format=quantization.QuantFormat.QOperator,
                activation_type=quantization.QuantType.QInt8),
        Variant("qdq-sym", symmetric_activations=True),
        Variant("qdq-fp32-first-conv", exclude_first_conv=True),
        Variant("qdq-fp32-gemm", exclude_op_types=("Gemm",)),
        Variant("qoperator", quant_format=quantization.QuantFormat.QOperator),
        Variant("qdq-percentile", calibrate_method=quantization.CalibrationMethod.Percentile,
                percentile=99.999),
    )
}
DEFAULT_VARIANT = "qdq"


def sample_photos(*, include_held_out: bool = False) -> dict[str, bytes]:
    """Real photos available offline: scikit-image's samples and Debian darknet's JPEGs."""
    photos: dict[str, bytes] = {}
    try:
        import skimage.data
    except ImportError:
        skimage_data = None
    else:
        skimage_data = skimage.data
    if skimage_data is not None:
        for name in _SKIMAGE:
            if name in HELD_OUT and not include_held_out:
                continue
            if name == "motorcycle":
                pixels = skimage_data.stereo_motorcycle()[0]
            else:
                pixels = getattr(skimage_data, name)()
            photos[name] = _png(Image.fromarray(pixels))
    for name in _DARKNET:
        path = DARKNET_DIR / f"{name}.jpg"
        if path.is_file() and (include_held_out or name not in HELD_OUT):
            photos[name] = path.read_bytes()
    return photos


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def augmentations(data: bytes) -> Iterator[bytes]:
    """The photo, mirrored, and three crops: what a collection's photos vary by."""
    yield data
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    yield _png(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    for left, top, fraction in ((0.0, 0.0, 0.7), (0.3, 0.3, 0.7), (0.15, 0.15, 0.5)):
        box = (
            round(width * left),
            round(height * top),
            round(width * min(1.0, left + fraction)),
            round(height * min(1.0, top + fraction)),
        )
        yield _png(image.crop(box))


def calibration_inputs(
    photos: Mapping[str, bytes], config: PreprocessConfig
) -> list[npt.NDArray[np.float32]]:
    """Each photo and its augmentations, preprocessed exactly as the service does."""
    inputs: list[npt.NDArray[np.float32]] = []
    for name in sorted(photos):
        for i, data in enumerate(augmentations(photos[name])):
            inputs.append(preprocess(data, config, item=f"{name}#{i}"))
    return inputs


def preprocess_config(manifest: Manifest) -> PreprocessConfig:
    return PreprocessConfig(
        input_size=manifest.input_size,
        resize_size=manifest.resize_size,
        mean=manifest.mean,
        std=manifest.std,
    )


class _Reader(quantization.CalibrationDataReader):
    """Feeds calibration images one at a time (the calibrator's memory grows with batch)."""

    def __init__(self, input_name: str, inputs: Sequence[npt.NDArray[np.float32]]) -> None:
        self.input_name = input_name
        self.inputs = iter(inputs)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        item = next(self.inputs, None)
        return None if item is None else {self.input_name: item[np.newaxis]}


def _excluded_nodes(model_path: Path, variant: Variant) -> list[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    excluded = [n.name for n in graph.node if n.op_type in variant.exclude_op_types]
    if variant.exclude_first_conv:
        excluded += [next(n.name for n in graph.node if n.op_type == "Conv")]
    return excluded


def _weights_digest(manifest: Manifest) -> str:
    """The weights' digest prefix inside an fp32 version (make_version's format)."""
    prefix = f"{manifest.layer}-{manifest.precision}-"
    if not manifest.version.startswith(prefix):
        raise WeightsError(f"version {manifest.version!r} is not of the form {prefix}<digest>")
    return manifest.version.removeprefix(prefix)


def quantize_model(
    fp32_dir: Path,
    out_dir: Path,
    *,
    variant: Variant | None = None,
    photos: Mapping[str, bytes] | None = None,
    calibration_cache: Path | None = None,
) -> Manifest:
    """Write an int8 model directory from an fp32 one; calibrates on photos (default: samples)."""
    variant = variant or VARIANTS[DEFAULT_VARIANT]
    source = load_manifest(fp32_dir)
    verify_checksum(fp32_dir, source)
    if source.precision != "fp32":
        raise WeightsError(f"{fp32_dir} holds a {source.precision} model; quantize an fp32 one")
    photos = sample_photos() if photos is None else photos
    if not photos:
        raise WeightsError(
            "no calibration photos: install scikit-image (its sample photos ship in the wheel) "
            "or Debian's darknet package"
        )
    inputs = calibration_inputs(photos, preprocess_config(source))
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = fp32_dir / source.onnx_file
    temporary = out_dir / f".{source.onnx_file}.{os.getpid()}.tmp"
    extra: dict[str, object] = {"ActivationSymmetric": variant.symmetric_activations}
    if variant.percentile is not None:
        extra["CalibPercentile"] = variant.percentile
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".calibration-") as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            quantization.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantization.quantize_static(
                str(prepared),
                str(temporary),
                _Reader(source.input_name, inputs),
                quant_format=variant.quant_format,
                per_channel=variant.per_channel,
                activation_type=variant.activation_type,
                weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=_excluded_nodes(prepared, variant),
                calibrate_method=variant.calibrate_method,
                extra_options=extra,
                calibration_cache_path=calibration_cache,
            )
        onnx.checker.check_model(str(temporary))
        digest = hashlib.sha256()
        for name in sorted(photos):
            digest.update(name.encode() + b"\0" + hashlib.sha256(photos[name]).digest())
        note = (
            f"int8 static ({variant.name}: {variant.describe()}) calibrated on {len(inputs)} "
            f"images from {len(photos)} photos ({', '.join(sorted(photos))}; "
            f"set sha256:{digest.hexdigest()[:16]})"
        )
        manifest = dataclasses.replace(
            source,
            version=make_version(source.layer, PRECISION, _weights_digest(source)),
            precision=PRECISION,
            onnx_sha256=sha256_file(temporary),
            weights_source=f"{source.weights_source}{PROVENANCE_SEPARATOR}{note}",
        )
        temporary.replace(out_dir / source.onnx_file)
    finally:
        temporary.unlink(missing_ok=True)
    write_manifest(out_dir, manifest)
    return manifest
