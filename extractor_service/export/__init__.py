"""Model export (needs torch): build a CNN with its weights and write an ONNX model directory."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from extractor_service.manifest import sha256_file

# torch.hub's naming convention: name-<first hex digits of the file's sha256>.pth.
_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.pth?$")


class WeightsError(RuntimeError):
    """The weights cannot be obtained, or do not fit the model; the message says what to do."""


@dataclass(frozen=True)
class SourceModel:
    """A torch module in eval mode mapping (N, 3, S, S) float32 images to (N, dimension)."""

    module: nn.Module
    name: str
    layer: str
    dimension: int
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_source: str
    weights_sha256: str


def check_name_hash(path: Path, sha256: str) -> None:
    """Catch a truncated or swapped checkpoint whose name promises another hash."""
    match = _NAME_HASH.search(path.name)
    if match and not sha256.startswith(match.group(1)):
        raise WeightsError(
            f"{path}: its name promises a sha256 starting {match.group(1)}, the file has {sha256}"
        )


def read_checkpoint(path: Path) -> tuple[object, str]:
    """A checkpoint's contents (tensors only, no pickled code) and its file's sha256."""
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist or is not a file")
    digest = sha256_file(path)
    check_name_hash(path, digest)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), digest
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise WeightsError(f"{path} is not a loadable torch checkpoint: {exc}") from exc


def load_strict(module: nn.Module, state_dict: object, origin: str) -> None:
    """Every key present with the right shape, none extra: else the weights are not this model's."""
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{origin} holds a {type(state_dict).__name__}, not a state dict")
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        # torch lists every missing or unexpected key over many lines; keep one line.
        detail = " ".join(str(exc).split())
        if len(detail) > 400:
            detail = detail[:400] + "..."
        raise WeightsError(f"{origin} does not fit {type(module).__name__}: {detail}") from exc
