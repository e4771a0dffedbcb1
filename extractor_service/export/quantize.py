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
_SKIMAGE_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field",
    "retina", "moon", "coins", "brick", "grass", "gravel",
)  # fmt: skip
_DARKNET_PHOTOS = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")
# Never calibrated on, so that tests and benchmarks can compare int8 with fp32 on photos the
# quantizer has not seen (names as in devenv/photos.py).
HELD_OUT = frozenset({"chelsea", "motorcycle", "dog", "eagle", "giraffe", "person"})
# Between the weights' provenance and the quantization note in an int8 manifest.
PROVENANCE_SEPARATOR = " | "

QDQ = quantization.QuantFormat.QDQ
U8 = quantization.QuantType.QUInt8
MIN_MAX = quantization.CalibrationMethod.MinMax


class CalibrationError(WeightsError):
    """No calibration photos, or a model directory that cannot be quantized."""


@dataclass(frozen=True)
class Variant:
    """One way to quantize: the choices passed to onnxruntime's quantize_static."""

    name: str
    quant_format: quantization.QuantFormat = QDQ
    activation_type: quantization.QuantType = U8
    per_channel: bool = True
    calibrate_method: quantization.CalibrationMethod = MIN_MAX
    percentile: float | None = None
    exclude_op_types: tuple[str, ...] = ()
    exclude_first_conv: bool = False

    def describe(self) -> str:
        parts = [
            self.quant_format.name,
            f"activations {self.activation_type.name}",
            f"weights QInt8 {'per channel' if self.per_channel else 'per tensor'}",
            f"{self.calibrate_method.name} calibration",
        ]
        if self.percentile is not None:
            parts[-1] += f" at {self.percentile}"
        parts += [f"{op} in fp32" for op in self.exclude_op_types]
        if self.exclude_first_conv:
            parts.append("first Conv in fp32")
        return ", ".join(parts)


# The default, every Conv and Gemm in QDQ form with u8 activations and s8 per-channel
# weights, is what ORT's x86 kernels run fastest, and nothing tried was both as fast and
# more accurate; the other variants stay so that `python -m benchmarks.bench_precision
# --variants` can re-measure them. Their figures, and those of what was dropped, are in
# docs/extractor-performance.md. bf16 is absent because ORT's CPU provider cannot run it
# (no bf16 Conv or MatMul kernel). Without VNNI, ORT's u8s8 kernels can saturate;
# onnxruntime advises reduce_range=True there, which these variants do not set.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("qdq"),
        # Raw pixels into an fp32 conv: does the first layer's rounding cost accuracy?
        Variant("qdq-fp32-first-conv", exclude_first_conv=True),
        # One scale per tensor: Lite0's channels differ in scale, so it loses accuracy.
        Variant("qdq-per-tensor", per_channel=False),
        # s8 activations, which ORT runs at a different speed per model.
        Variant("qdq-s8s8", activation_type=quantization.QuantType.QInt8),
        # VGG16's FC layers in fp32: most of its weights, so most of the file.
        Variant("qdq-fp32-gemm", exclude_op_types=("Gemm",)),
        Variant("qoperator", quant_format=quantization.QuantFormat.QOperator),
        Variant(
            "qdq-percentile",
            calibrate_method=quantization.CalibrationMethod.Percentile,
            percentile=99.999,
        ),
    )
}
DEFAULT_VARIANT = "qdq"


def sample_photos(*, include_held_out: bool = False) -> dict[str, bytes]:
    """Real photos found offline: scikit-image's samples (PNG) and Debian darknet's JPEGs."""
    photos: dict[str, bytes] = {}
    try:
        import skimage.data
    except ImportError:
        pass  # darknet's photos may still be there; the caller checks for none at all
    else:
        for name in _SKIMAGE_PHOTOS:
            if include_held_out or name not in HELD_OUT:
                if name == "motorcycle":
                    # The left view of a stereo pair; skimage leaves this function untyped.
                    pixels = skimage.data.stereo_motorcycle()[0]  # type: ignore[no-untyped-call]
                else:
                    pixels = getattr(skimage.data, name)()
                photos[name] = _png(Image.fromarray(pixels))
    for name in _DARKNET_PHOTOS:
        path = DARKNET_DIR / f"{name}.jpg"
        if path.is_file() and (include_held_out or name not in HELD_OUT):
            photos[name] = path.read_bytes()
    return photos


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def augmentations(data: bytes) -> Iterator[bytes]:
    """The photo, its mirror image and three crops: how a collection's framings vary."""
    yield data
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    yield _png(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    for left, top, side in ((0.0, 0.0, 0.7), (0.3, 0.3, 0.7), (0.25, 0.25, 0.5)):
        box = (
            round(width * left),
            round(height * top),
            round(width * (left + side)),
            round(height * (top + side)),
        )
        yield _png(image.crop(box))


def calibration_inputs(
    photos: Mapping[str, bytes], config: PreprocessConfig
) -> list[npt.NDArray[np.float32]]:
    """Each photo and its augmentations, preprocessed exactly as the service does."""
    return [
        preprocess(data, config, item=f"{name}#{i}")
        for name in sorted(photos)
        for i, data in enumerate(augmentations(photos[name]))
    ]


def weights_provenance(manifest: Manifest) -> str:
    """The weights' provenance without the quantization note an int8 manifest adds."""
    return manifest.weights_source.split(PROVENANCE_SEPARATOR, 1)[0]


class _Reader:
    """One image per call, for quantize_static; a CalibrationDataReader by its get_next.

    Not a subclass: onnxruntime is untyped, and its reader ABC accepts any get_next anyway.
    """

    def __init__(self, input_name: str, inputs: Sequence[npt.NDArray[np.float32]]) -> None:
        self.input_name = input_name
        self.inputs = iter(inputs)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        item = next(self.inputs, None)
        return None if item is None else {self.input_name: item[np.newaxis]}


def _excluded_nodes(model_path: Path, variant: Variant) -> list[str]:
    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    excluded = [n.name for n in nodes if n.op_type in variant.exclude_op_types]
    if variant.exclude_first_conv:
        excluded.append(next(n.name for n in nodes if n.op_type == "Conv"))
    return excluded


def _weights_digest(manifest: Manifest) -> str:
    """The weights' digest prefix inside an fp32 version, as make_version wrote it."""
    prefix = f"{manifest.layer}-{manifest.precision}-"
    if not manifest.version.startswith(prefix):
        raise CalibrationError(f"version {manifest.version!r} does not read {prefix}<digest>")
    return manifest.version.removeprefix(prefix)


def _note(variant: Variant, photos: Mapping[str, bytes], images: int) -> str:
    digest = hashlib.sha256()
    for name in sorted(photos):
        digest.update(name.encode() + b"\0" + hashlib.sha256(photos[name]).digest())
    return (
        f"int8 static ({variant.describe()}), calibrated on {images} images "
        f"({images // len(photos)} views each of {', '.join(sorted(photos))}; "
        f"set sha256:{digest.hexdigest()[:16]})"
    )


def quantize_model(
    fp32_dir: Path,
    out_dir: Path,
    *,
    variant: Variant | None = None,
    photos: Mapping[str, bytes] | None = None,
    calibration_cache: Path | None = None,
) -> Manifest:
    """Write an int8 model directory from an fp32 one, calibrated on photos (default: samples).

    calibration_cache: a JSON file of tensor ranges, written on the first call and read on
    later ones, so that variants sharing a calibration method skip the calibration runs.
    """
    variant = variant or VARIANTS[DEFAULT_VARIANT]
    source = load_manifest(fp32_dir)
    verify_checksum(fp32_dir, source)
    if source.precision != "fp32":
        raise CalibrationError(f"{fp32_dir} holds a {source.precision} model, not fp32")
    photos = sample_photos() if photos is None else photos
    if not photos:
        raise CalibrationError(
            "int8 needs calibration photos: install scikit-image (its sample photos ship in "
            "the wheel) or Debian's darknet package"
        )
    inputs = calibration_inputs(photos, source.preprocess_config())
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = out_dir / f".{source.onnx_file}.{os.getpid()}.tmp"
    extra: dict[str, object] = {}
    if variant.percentile is not None:
        extra["CalibPercentile"] = variant.percentile
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".quantize-") as scratch:
            # Shape inference and ORT's basic fusions first, as quantize_static asks; without
            # them it warns and quantizes a less optimised graph.
            prepared = Path(scratch) / "prepared.onnx"
            quantization.quant_pre_process(
                str(fp32_dir / source.onnx_file), str(prepared), skip_symbolic_shape=True
            )
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
        manifest = dataclasses.replace(
            source,
            version=make_version(source.layer, PRECISION, _weights_digest(source)),
            precision=PRECISION,
            onnx_sha256=sha256_file(temporary),
            weights_source=(
                source.weights_source + PROVENANCE_SEPARATOR + _note(variant, photos, len(inputs))
            ),
        )
        # Model first, then manifest, as export_model does: a crash in between leaves a
        # manifest whose checksum fails, so nothing serves a half-written directory.
        temporary.replace(out_dir / source.onnx_file)
    finally:
        temporary.unlink(missing_ok=True)
    write_manifest(out_dir, manifest)
    return manifest
