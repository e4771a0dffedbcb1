"""Finding the image files under a folder, their keys, and their metadata."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagesearch_cli.client import CliError

# Decided by content, not by name: a renamed PNG is still indexed, a text file called
# .jpg is not. Anything Pillow decodes in the extractor starts with one of these.
_MAGIC: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class ImageFile:
    """An image file and the key it is stored under."""

    path: Path
    key: str
    size: int


@dataclass
class Scan:
    """What a folder holds: image files (sorted by key) and the other files skipped."""

    images: list[ImageFile] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def is_image(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            head = file.read(12)
    except OSError:
        return False
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def key_for(path: Path, root: Path) -> str:
    """The key of a file: its path relative to root, with / on every platform."""
    return path.relative_to(root).as_posix()


def scan(folder: Path, root: Path | None = None) -> Scan:
    """Every image under folder, recursively, keyed relative to root (default: folder)."""
    if not folder.is_dir():
        raise CliError(f"{folder} is not a directory")
    root = root or folder
    found = Scan()
    for directory, subdirectories, names in os.walk(folder):
        subdirectories.sort()
        present = set(names)
        for name in sorted(names):
            path = Path(directory, name)
            if name.endswith(SIDECAR_SUFFIX) and name.removesuffix(SIDECAR_SUFFIX) in present:
                continue  # a sidecar: metadata for the image beside it
            if path.is_file() and is_image(path):
                found.images.append(ImageFile(path, key_for(path, root), path.stat().st_size))
            else:
                found.skipped.append(path)
    found.images.sort(key=lambda image: image.key)
    return found


def load_mapping(path: Path) -> dict[str, dict[str, Any]]:
    """A --metadata-file: a JSON object mapping each key to its metadata object."""
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CliError(f"metadata file {path}: {error}") from error
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
        raise CliError(f"metadata file {path}: must map each key to a JSON object")
    return mapping


def metadata_for(image: ImageFile, mapping: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mapping's entry for the image, overridden key by key by its sidecar file."""
    metadata = dict(mapping.get(image.key, {}))
    sidecar = image.path.with_name(image.path.name + SIDECAR_SUFFIX)
    if sidecar.is_file():
        try:
            extra = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CliError(f"sidecar {sidecar.name}: {error}") from error
        if not isinstance(extra, dict):
            raise CliError(f"sidecar {sidecar.name}: must hold a JSON object")
        metadata.update(extra)
    return metadata


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
