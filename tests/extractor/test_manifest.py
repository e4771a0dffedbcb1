"""The model directory manifest: round trip, checksums, and field-by-field validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from extractor_service.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    make_version,
    sha256_file,
    verify_checksum,
    write_manifest,
)

ONNX_BYTES = b"not really onnx, but bytes to checksum"


def _manifest(**changes: object) -> Manifest:
    manifest = Manifest(
        name="vgg16",
        version=make_version("fc7", "fp32", "397923af" + "0" * 56),
        layer="fc7",
        dimension=4096,
        input_size=224,
        resize_size=256,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        precision="fp32",
        input_name="images",
        output_name="embeddings",
        onnx_file="model.onnx",
        onnx_sha256=hashlib.sha256(ONNX_BYTES).hexdigest(),
        weights_source="https://download.pytorch.org/models/vgg16-397923af.pth sha256:397923af",
        opset=18,
    )
    return dataclasses.replace(manifest, **changes)  # type: ignore[arg-type]


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "model.onnx").write_bytes(ONNX_BYTES)
    write_manifest(tmp_path, _manifest())
    return tmp_path


def _rewrite(model_dir: Path, **changes: object) -> None:
    path = model_dir / "manifest.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def _drop(model_dir: Path, field: str) -> None:
    path = model_dir / "manifest.json"
    raw = json.loads(path.read_text())
    del raw[field]
    path.write_text(json.dumps(raw))


def test_round_trip_gives_back_the_same_manifest(model_dir):
    assert load_manifest(model_dir) == _manifest()


def test_manifest_file_is_sorted_indented_json(model_dir):
    text = (model_dir / "manifest.json").read_text()
    raw = json.loads(text)
    assert list(raw) == sorted(raw)
    assert text == json.dumps(raw, sort_keys=True, indent=2) + "\n"
    assert raw["format_version"] == 1
    assert raw["mean"] == [0.485, 0.456, 0.406]


def test_write_leaves_no_temporary_files(model_dir):
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "model.onnx"]


def test_version_depends_on_the_weights_not_on_the_export():
    weights = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    assert make_version("global_pool", "fp32", weights) == "global_pool-fp32-579344248a93"
    assert make_version("fc7", "fp32", weights) != make_version("fc7", "int8", weights)


def test_sha256_file_matches_hashlib_over_several_chunks(tmp_path):
    data = bytes(range(256)) * 12_289  # about 3 MB: more than one read
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_checksum_verifies_an_untouched_file(model_dir):
    verify_checksum(model_dir, load_manifest(model_dir))


def test_checksum_fails_on_a_modified_file_naming_both_hashes(model_dir):
    manifest = load_manifest(model_dir)
    (model_dir / "model.onnx").write_bytes(ONNX_BYTES + b"!")
    with pytest.raises(ManifestError) as caught:
        verify_checksum(model_dir, manifest)
    message = str(caught.value)
    assert manifest.onnx_sha256 in message
    assert hashlib.sha256(ONNX_BYTES + b"!").hexdigest() in message
    assert "model.onnx" in message


def test_checksum_fails_on_a_missing_file(model_dir):
    manifest = load_manifest(model_dir)
    (model_dir / "model.onnx").unlink()
    with pytest.raises(ManifestError, match=r"model\.onnx: missing"):
        verify_checksum(model_dir, manifest)


def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest\.json: no manifest"):
        load_manifest(tmp_path)


def test_invalid_json_names_the_file(model_dir):
    (model_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"manifest\.json: unreadable"):
        load_manifest(model_dir)


def test_a_json_list_is_not_a_manifest(model_dir):
    (model_dir / "manifest.json").write_text("[]")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        load_manifest(model_dir)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Manifest)])
def test_each_missing_field_is_named(model_dir, field):
    _drop(model_dir, field)
    with pytest.raises(ManifestError) as caught:
        load_manifest(model_dir)
    assert str(model_dir / "manifest.json") in str(caught.value)
    assert f"field {field!r}: missing" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("version", 3),
        ("layer", None),
        ("dimension", "4096"),
        ("dimension", 0),
        ("dimension", True),
        ("input_size", 22.4),
        ("resize_size", 200),
        ("mean", [0.5, 0.5]),
        ("mean", [0.5, "0.5", 0.5]),
        ("std", [0.2, 0.0, 0.2]),
        ("std", [0.2, float("inf"), 0.2]),
        ("precision", "fp64"),
        ("input_name", "  "),
        ("onnx_file", "../model.onnx"),
        ("onnx_file", "/etc/passwd"),
        ("onnx_sha256", "ABC"),
        ("onnx_sha256", "A" * 64),
        ("weights_source", ""),
        ("opset", -1),
        ("format_version", 2),
        ("extra_field", 1),
    ],
)
def test_each_invalid_field_is_named(model_dir, field, value):
    _rewrite(model_dir, **{field: value})
    with pytest.raises(ManifestError) as caught:
        load_manifest(model_dir)
    assert str(model_dir / "manifest.json") in str(caught.value)
    assert f"field {field!r}" in str(caught.value)


def test_manifest_error_is_a_value_error():
    assert issubclass(ManifestError, ValueError)
