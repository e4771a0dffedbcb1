"""Local pictures for the HTML page, the contact sheet and the map: thumbnails, captions."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (225, 225, 225)
INK = (40, 40, 40)


@dataclass(frozen=True)
class Shown:
    """One picture to show: its local file (None when there is none) and its caption."""

    path: Path | None
    title: str
    lines: tuple[str, ...] = ()


def resolve(root: Path, key: str) -> Path | None:
    """The local file a stored key names, if it is under root and exists."""
    base = root.resolve()
    path = (base / key).resolve()
    # Keys come from the server: one spelled ../../x must not reach outside root.
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def thumbnail(path: Path | None, size: int) -> Image.Image | None:
    """The picture fitted into size x size, upright (EXIF), RGB; None if unreadable."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEGs decode at a fraction of their size
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    upright.thumbnail((size, size), Image.Resampling.LANCZOS)
    return upright


def font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def placeholder(width: int, height: int, text: str = "missing") -> Image.Image:
    """A grey box that says why there is no picture."""
    box = Image.new("RGB", (width, height), PLACEHOLDER)
    draw = ImageDraw.Draw(box)
    face = font(max(10, height // 10))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    position = ((width - (right - left)) / 2, (height - (bottom - top)) / 2)
    draw.text(position, text, fill=INK, font=face)
    return box


def fitted(path: Path | None, size: int) -> Image.Image:
    """A thumbnail, or a placeholder of the same size when the file is missing."""
    return thumbnail(path, size) or placeholder(size, size)


def data_uri(image: Image.Image) -> str:
    """The image as an inline JPEG, so the HTML page is one self-contained file."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def clipped(draw: ImageDraw.ImageDraw, text: str, face: Font, width: int) -> str:
    """text shortened with a leading ellipsis until it fits width pixels."""
    if draw.textlength(text, font=face) <= width:
        return text
    while text and draw.textlength("…" + text, font=face) > width:
        text = text[1:]
    return "…" + text
