"""The manifest of an exported model directory (model.onnx + manifest.json); no torch needed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extractor_service.preprocess import PreprocessConfig

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
PRECISIONS = frozenset({"fp32", "fp16", "bf16", "int8"})

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A model directory's manifest is missing, malformed, or does not match its files."""


@dataclass(frozen=True)
class Manifest:
    """What a serving process must know about an exported model. mean/std apply to [0, 1] RGB."""

    name: str
    version: str
    layer: str
    dimension: int
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    precision: str
    input_name: str
    output_name: str
    onnx_file: str
    onnx_sha256: str
    weights_source: str
    opset: int
    format_version: int = FORMAT_VERSION

    def preprocess_config(self, *, max_pixels: int | None = None) -> PreprocessConfig:
        """The preprocessing this model was trained with (and a decoded-size limit)."""
        limits = {} if max_pixels is None else {"max_pixels": max_pixels}
        return PreprocessConfig(
            input_size=self.input_size,
            resize_size=self.resize_size,
            mean=self.mean,
            std=self.std,
            **limits,
        )


def make_version(layer: str, precision: str, weights_sha256: str) -> str:
    """Derived from the weights, not the ONNX bytes, so re-exporting gives the same version."""
    return f"{layer}-{precision}-{weights_sha256[:12]}"


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    text = json.dumps(dataclasses.asdict(manifest), sort_keys=True, indent=2) + "\n"
    target = model_dir / MANIFEST_FILE
    temporary = model_dir / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    temporary.write_text(text, encoding="utf-8")
    # A reader sees the old manifest or the new one, never half of one.
    temporary.replace(target)


def verify_checksum(model_dir: Path, manifest: Manifest) -> None:
    path = model_dir / manifest.onnx_file
    if not path.is_file():
        raise ManifestError(f"{path}: missing (named by {model_dir / MANIFEST_FILE})")
    actual = sha256_file(path)
    if actual != manifest.onnx_sha256:
        raise ManifestError(
            f"{path}: sha256 mismatch: manifest expects {manifest.onnx_sha256}, file has {actual}"
        )


def load_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest (is {model_dir} an exported model?)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return _Validator(path, raw).manifest()


class _Validator:
    """Checks one field at a time so every message names the file and the field."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path = path
        self.raw = raw

    def fail(self, field: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.path}: field {field!r}: {problem}")

    def get(self, field: str) -> Any:
        if field not in self.raw:
            raise self.fail(field, "missing")
        return self.raw[field]

    def text(self, field: str) -> str:
        value = self.get(field)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"expected a non-empty string, got {value!r}")
        return value

    def integer(self, field: str, minimum: int) -> int:
        value = self.get(field)
        # bool is an int subclass; true is not a dimension.
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(field, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def triple(self, field: str, *, positive: bool) -> tuple[float, float, float]:
        value = self.get(field)
        numbers = (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        )
        if not numbers or not all(math.isfinite(v) and (v > 0 or not positive) for v in value):
            kind = "positive" if positive else "finite"
            raise self.fail(field, f"expected a list of 3 {kind} numbers, got {value!r}")
        return (float(value[0]), float(value[1]), float(value[2]))

    def manifest(self) -> Manifest:
        known = {f.name for f in dataclasses.fields(Manifest)}
        unknown = sorted(set(self.raw) - known)
        if unknown:
            raise self.fail(unknown[0], "unknown field (a typo, or a newer format?)")
        format_version = self.integer("format_version", 1)
        if format_version != FORMAT_VERSION:
            raise self.fail("format_version", f"{format_version} unsupported, expected 1")
        precision = self.text("precision")
        if precision not in PRECISIONS:
            raise self.fail("precision", f"{precision!r} is not one of {sorted(PRECISIONS)}")
        onnx_file = self.text("onnx_file")
        # The file must sit inside the model directory; never follow a path out of it.
        if Path(onnx_file).name != onnx_file or onnx_file in {".", ".."}:
            raise self.fail("onnx_file", f"expected a bare file name, got {onnx_file!r}")
        onnx_sha256 = self.text("onnx_sha256")
        if not _SHA256.fullmatch(onnx_sha256):
            raise self.fail("onnx_sha256", f"expected 64 lowercase hex digits, got {onnx_sha256!r}")
        input_size = self.integer("input_size", 1)
        resize_size = self.integer("resize_size", 1)
        if resize_size < input_size:
            raise self.fail("resize_size", f"{resize_size} is smaller than input_size {input_size}")
        return Manifest(
            name=self.text("name"),
            version=self.text("version"),
            layer=self.text("layer"),
            dimension=self.integer("dimension", 1),
            input_size=input_size,
            resize_size=resize_size,
            mean=self.triple("mean", positive=False),
            std=self.triple("std", positive=True),
            precision=precision,
            input_name=self.text("input_name"),
            output_name=self.text("output_name"),
            onnx_file=onnx_file,
            onnx_sha256=onnx_sha256,
            weights_source=self.text("weights_source"),
            opset=self.integer("opset", 1),
            format_version=format_version,
        )
