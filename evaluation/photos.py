"""Real photos for copy detection, and the edits a copy may have undergone."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

# Debian's darknet package ships these sample photos (apt-get install darknet).
DARKNET_DIR = Path("/usr/share/darknet/data")
DARKNET_PHOTOS = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")
# Files bundled in the scikit-image wheel (no download); read with Pillow, so scikit-image
# need only be installed, never imported.
SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "moon": "moon.png",
    "coins": "coins.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}

Transform = Callable[[Image.Image], bytes]


def originals() -> dict[str, bytes]:
    """Name -> the photo's file bytes, for every photo found on this machine."""
    found: dict[str, bytes] = {}
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
        for name, file in SKIMAGE_PHOTOS.items():
            if (data_dir / file).is_file():
                found[name] = (data_dir / file).read_bytes()
    for name in DARKNET_PHOTOS:
        path = DARKNET_DIR / f"{name}.jpg"
        if path.is_file():
            found[name] = path.read_bytes()
    return found


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=quality)
    return buffer.getvalue()


def center_crop(image: Image.Image, fraction: float) -> Image.Image:
    width, height = image.size
    new_width, new_height = round(width * fraction), round(height * fraction)
    left, top = (width - new_width) // 2, (height - new_height) // 2
    return image.crop((left, top, left + new_width, top + new_height))


def offset_crop(image: Image.Image, fraction: float) -> Image.Image:
    """The top-left part, fraction of each side: unlike a centre crop, the model's own
    centre crop no longer sees the same middle."""
    width, height = image.size
    return image.crop((0, 0, round(width * fraction), round(height * fraction)))


def rescale(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def jitter(
    image: Image.Image, brightness: float, contrast: float, saturation: float
) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(brightness)
    image = ImageEnhance.Contrast(image).enhance(contrast)
    return ImageEnhance.Color(image).enhance(saturation)


def _jpeg(edit: Callable[[Image.Image], Image.Image], quality: int = 90) -> Transform:
    return lambda image: encode(edit(image), "JPEG", quality)


# Each copy is saved as a JPEG (quality 90 unless the edit is the quality itself).
TRANSFORMS: dict[str, Transform] = {
    "re-encoded (JPEG q90)": _jpeg(lambda i: i),
    "JPEG q30": _jpeg(lambda i: i, 30),
    "JPEG q10": _jpeg(lambda i: i, 10),
    "flipped left-right": _jpeg(lambda i: i.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    "centre crop 80%": _jpeg(lambda i: center_crop(i, 0.8)),
    "centre crop 50%": _jpeg(lambda i: center_crop(i, 0.5)),
    "corner crop 70%": _jpeg(lambda i: offset_crop(i, 0.7)),
    "scaled to 50%": _jpeg(lambda i: rescale(i, 0.5)),
    "scaled to 20%": _jpeg(lambda i: rescale(i, 0.2)),
    "rotated 10°": _jpeg(lambda i: i.rotate(10, Image.Resampling.BILINEAR)),
    "rotated 90°": _jpeg(lambda i: i.transpose(Image.Transpose.ROTATE_90)),
    "colour jitter": _jpeg(lambda i: jitter(i, 1.3, 0.7, 0.5)),
    "greyscale": _jpeg(lambda i: i.convert("L").convert("RGB")),
    "crop 80% + 50% + q50": _jpeg(lambda i: rescale(center_crop(i, 0.8), 0.5), 50),
    # Harsher edits, to find where it breaks.
    "JPEG q3": _jpeg(lambda i: i, 3),
    "centre crop 30%": _jpeg(lambda i: center_crop(i, 0.3)),
    "scaled to 32 px wide": _jpeg(lambda i: rescale(i, 32 / i.width)),
    "rotated 45°": _jpeg(lambda i: i.rotate(45, Image.Resampling.BILINEAR)),
    "blurred (radius 6)": _jpeg(lambda i: i.filter(ImageFilter.GaussianBlur(6))),
    "inverted": _jpeg(ImageOps.invert),
}
