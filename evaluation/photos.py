"""The edits a copy of a photo may have undergone, for copy detection."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from devenv.photos import center_crop, encode, rescale

Transform = Callable[[Image.Image], bytes]


def offset_crop(image: Image.Image, fraction: float) -> Image.Image:
    """The top-left part, fraction of each side: unlike a centre crop, the model's own
    centre crop no longer sees the same middle."""
    width, height = image.size
    return image.crop((0, 0, round(width * fraction), round(height * fraction)))


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
