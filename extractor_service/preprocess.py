"""Image bytes to a model input tensor, following torchvision's ImageNet eval recipe."""

from __future__ import annotations

import io
import math
import struct
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import (
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from service_core.errors import InvalidArgument, ResourceExhausted

# Each format is opened through its plugin class rather than Image.open, whose
# decompression-bomb check (a process-wide threshold that first warns, then raises)
# would run before ours: that way max_pixels is the limit that decides, and no
# DecompressionBombWarning reaches the log for a file we reject anyway.
_SIGNATURES: tuple[tuple[bytes, str, type[ImageFile.ImageFile]], ...] = (
    (b"\xff\xd8\xff", "JPEG", JpegImagePlugin.JpegImageFile),
    (b"\x89PNG\r\n\x1a\n", "PNG", PngImagePlugin.PngImageFile),
    (b"GIF87a", "GIF", GifImagePlugin.GifImageFile),
    (b"GIF89a", "GIF", GifImagePlugin.GifImageFile),
    (b"BM", "BMP", BmpImagePlugin.BmpImageFile),
    (b"II*\x00", "TIFF", TiffImagePlugin.TiffImageFile),
    (b"MM\x00*", "TIFF", TiffImagePlugin.TiffImageFile),
)
_SUPPORTED = "JPEG, PNG, GIF, WebP, BMP or TIFF"

# What Pillow raises for malformed input, varying by format and by how far parsing
# got. UserWarning is here because under an "error" warnings filter (pytest,
# python -W error) its complaints about malformed files arrive as exceptions.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    UserWarning,
)

_GREY_MODES = frozenset({"1", "L", "LA"})

# Up to this long:short ratio the whole image is resized, exactly as torchvision does.
_MAX_EXACT_ASPECT = 8

# JPEGs decode at 1/2, 1/4 or 1/8 size only while the short side stays at least
# this many times resize_size, so that the antialiased resize still does part of
# the shrinking: with no headroom the DCT downscale's own filter shows in the pixels,
# and a 12 MP photo still decodes at 1/8 (docs/extractor-performance.md).
_DRAFT_HEADROOM = 1.25

# For each EXIF orientation, how the stored picture becomes the shown one: mirror
# x, mirror y, then swap the axes (EXIF 2.3, Orientation tag).
_ORIENTATIONS = {
    2: (True, False, False),
    3: (True, True, False),
    4: (False, True, False),
    5: (False, False, True),
    6: (False, True, True),
    7: (True, True, True),
    8: (True, False, True),
}

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PreprocessConfig:
    """A model's input recipe: resize the short side, center-crop, normalise."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if not 0 < self.input_size <= self.resize_size:
            raise ValueError("need 0 < input_size <= resize_size")
        if len(self.mean) != 3 or len(self.std) != 3 or 0 in self.std:
            raise ValueError("mean and std need three values each, std non-zero")
        if self.max_pixels <= 0:
            raise ValueError("max_pixels must be positive")


class PixelBudget:
    """The pixels one request may decode, shared by its decode threads.

    Decoding costs time in proportion to pixels (a 6320x6320 PNG, 114 kB on the wire,
    takes most of a CPU-second): without a budget, a single request of large images
    would hold every decode thread for seconds. Images past it are refused one by one.
    """

    def __init__(self, pixels: int) -> None:
        self.left = pixels
        self.total = pixels
        self._lock = threading.Lock()

    def take(self, size: tuple[int, int], item: str) -> None:
        pixels = size[0] * size[1]
        with self._lock:
            if pixels > self.left:
                raise ResourceExhausted(
                    f"image {item!r}: its {size[0]}x{size[1]} pixels would pass the "
                    f"{self.total} one request may decode; send it in another request",
                    reason="REQUEST_PIXELS_EXCEEDED",
                    metadata={"limit": str(self.total)},
                    retryable=False,
                )
            self.left -= pixels


def preprocess(
    data: bytes, config: PreprocessConfig, *, item: str, budget: PixelBudget | None = None
) -> npt.NDArray[np.float32]:
    """Decode one image and return it as float32 (3, input_size, input_size), CHW."""
    if not data:
        raise InvalidArgument(f"image {item!r}: empty (0 bytes)", reason="EMPTY_IMAGE")
    fmt, factory = _identify(data, item)
    if fmt == "WebP":
        # libwebp allocates the whole canvas when the file is opened, so the
        # header's own claim has to be checked before that.
        _check_size(_webp_size(data), config.max_pixels, item)
    try:
        image = factory(io.BytesIO(data))
        _check_size(image.size, config.max_pixels, item)
        if fmt == "JPEG":
            _check_jpeg_length(data, item)
        if budget is not None:
            budget.take(_decoded_size(image, config), item)
        box = _load_upright(image, config)
        upright = _to_rgb_or_grey(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit, still applied inside some plugins (a GIF frame larger
        # than its screen, a TIFF tile).
        raise ResourceExhausted(
            f"image {item!r}: too many pixels to decode safely",
            reason="IMAGE_TOO_LARGE",
            retryable=False,
        ) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidArgument(
            f"image {item!r}: truncated or corrupt {fmt} file", reason="CORRUPT_IMAGE"
        ) from exc
    # Outside the try: past decoding, a failure is a bug to report, not bad input.
    return _normalise(_resize_and_crop(upright, box, config), config)


def _identify(data: bytes, item: str) -> tuple[str, type[ImageFile.ImageFile]]:
    for signature, fmt, factory in _SIGNATURES:
        if data.startswith(signature):
            return fmt, factory
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP", WebPImagePlugin.WebPImageFile
    raise InvalidArgument(
        f"image {item!r}: unsupported or unrecognised format (want {_SUPPORTED})",
        reason="UNSUPPORTED_FORMAT",
    )


def _webp_size(data: bytes) -> tuple[int, int]:
    """The canvas size a WebP header claims, per the RIFF container spec."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30:
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    # Anything else libwebp rejects before allocating; Pillow reports it as corrupt.
    return 1, 1


# Start-of-frame markers of Huffman-coded JPEGs: baseline, extended, progressive.
# (Arithmetic coding, SOF9 and up, can spend less than a bit on a block.)
_HUFFMAN_SOF = {0xC0: 2, 0xC1: 2, 0xC2: 1}


def _check_jpeg_length(data: bytes, item: str) -> None:
    """Refuses a JPEG too short to hold the picture its header declares.

    libjpeg fills whatever the data does not cover with grey and only warns, and
    Pillow passes no warning on: a header saying 6000x6000 over 768x576 of data
    would decode as a grey picture. A Huffman-coded block costs at least two bits
    in a sequential scan (its DC code and end-of-block) and one in a progressive
    file's DC scan, so fewer bits than that are a truncated (or forged) file.
    """
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return  # not a marker where one must be: left to the decoder to refuse
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # start of scan: no frame header seen
            return
        if marker in _HUFFMAN_SOF and at + 10 <= len(data):
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            count = data[at + 9]
            sampling = data[at + 11 : at + 11 + 3 * count : 3]
            if len(sampling) != count or not count or not width or not height:
                return
            h_max = max(s >> 4 for s in sampling) or 1
            v_max = max(s & 15 for s in sampling) or 1
            mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
            blocks = mcus * sum((s >> 4) * (s & 15) for s in sampling)
            if len(data) * 8 < blocks * _HUFFMAN_SOF[marker]:
                raise InvalidArgument(
                    f"image {item!r}: {len(data)} bytes cannot hold the {width}x{height} "
                    "picture the header declares: truncated or corrupt JPEG file",
                    reason="CORRUPT_IMAGE",
                )
            return
        at += 2 + length


def _decoded_size(image: ImageFile.ImageFile, config: PreprocessConfig) -> tuple[int, int]:
    """The pixels decoding will produce: a JPEG decodes at a reduced scale (draft)."""
    width, height = image.size
    if isinstance(image, JpegImagePlugin.JpegImageFile):
        floor = math.ceil(config.resize_size * _DRAFT_HEADROOM)
        scale = 1
        while scale < 8 and min(width, height) // (scale * 2) >= floor:
            scale *= 2
        return math.ceil(width / scale), math.ceil(height / scale)
    return width, height


def _check_size(size: tuple[int, int], max_pixels: int, item: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ResourceExhausted(
            f"image {item!r}: {width}x{height} is {width * height} pixels, "
            f"over the limit of {max_pixels}",
            reason="IMAGE_TOO_LARGE",
            metadata={"limit": str(max_pixels)},
            retryable=False,
        )
    if width == 0 or height == 0:
        raise InvalidArgument(f"image {item!r}: zero width or height", reason="CORRUPT_IMAGE")


def _load_upright(image: ImageFile.ImageFile, config: PreprocessConfig) -> Box:
    """Decode frame 0, EXIF orientation applied; returns the box that holds the picture.

    A freshly opened file holds frame 0 of an animation. A JPEG decoded at 1/s
    size covers width / s pixels: its last column and row may be partial, so the
    box, not the pixel count, keeps the geometry of the full-size recipe.
    """
    box: Box = (0.0, 0.0, float(image.width), float(image.height))
    if isinstance(image, JpegImagePlugin.JpegImageFile):
        # Both sides stay >= the request, so whatever the orientation the resize
        # below only ever shrinks.
        request = math.ceil(config.resize_size * _DRAFT_HEADROOM)
        drafted = image.draft("RGB", (request, request))
        if drafted is not None:
            box = drafted[1]
    image.load()
    width, height = image.size
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    ImageOps.exif_transpose(image, in_place=True)
    mirror_x, mirror_y, swap = _ORIENTATIONS.get(orientation, (False, False, False))
    left, top, right, bottom = box
    if mirror_x:
        left, right = width - right, width - left
    if mirror_y:
        top, bottom = height - bottom, height - top
    return (top, left, bottom, right) if swap else (left, top, right, bottom)


def _to_rgb_or_grey(image: Image.Image) -> Image.Image:
    """Mode RGB or L: grey resized once, then repeated, equals convert("RGB") resized."""
    if image.mode.startswith("I;16"):
        # 16-bit samples fill 0..65535; Pillow's convert would clip them to 255.
        samples = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((samples + 128) // 257).astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        return Image.fromarray(_scale_to_8bit(np.asarray(image), image.mode == "F"), "L")
    # Alpha is dropped, not composited: torchvision's ImageFolder loader, timm and
    # CLIP all call convert("RGB"), so vectors stay comparable with embeddings made
    # by the usual offline pipelines. Removing "transparency" first keeps Pillow
    # from warning that palette transparency needs RGBA; the colours are the same.
    image.info.pop("transparency", None)
    if image.mode in ("RGB", "L"):
        return image
    return image.convert("L" if image.mode in _GREY_MODES else "RGB")


def _scale_to_8bit(samples: npt.NDArray[np.generic], is_float: bool) -> npt.NDArray[np.uint8]:
    """Map 32-bit samples to 0..255 by the smallest usual full scale that holds them.

    Such files do not say their range: floats are usually 0..1, integers 8- or
    16-bit data widened; anything else (negative, larger) is stretched min..max.
    """
    values: npt.NDArray[np.float32] = np.nan_to_num(
        samples.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0
    )
    low, high = float(values.min()), float(values.max())
    scales = (1.0, 255.0, 65535.0) if is_float else (255.0, 65535.0)
    full_scale = next((s for s in scales if low >= 0 and high <= s), None)
    if full_scale is None:
        values -= np.float32(low)
        full_scale = (high - low) or 1.0
    scaled: npt.NDArray[np.float32] = np.clip(
        np.rint(values * np.float32(255.0 / full_scale)), 0, 255
    )
    return scaled.astype(np.uint8)


def _resize_and_crop(image: Image.Image, box: Box, config: PreprocessConfig) -> Image.Image:
    """torchvision's Resize(resize_size) (PIL bilinear, antialiased) then CenterCrop."""
    left_edge, top_edge, right_edge, bottom_edge = box
    width, height = right_edge - left_edge, bottom_edge - top_edge
    short, long = min(width, height), max(width, height)
    # torchvision's rounding of the long side: int() truncates. Box sides are the
    # full size over a power of two, so this is bit-for-bit the full-size figure.
    new_long = int(config.resize_size * long / short)
    new_width, new_height = (
        (config.resize_size, new_long) if width <= height else (new_long, config.resize_size)
    )
    crop = config.input_size
    # CenterCrop's offsets; round() ties to even, as torchvision's does.
    top = round((new_height - crop) / 2.0)
    left = round((new_width - crop) / 2.0)
    if new_long <= _MAX_EXACT_ASPECT * config.resize_size:
        resized = image.resize(
            (new_width, new_height), Image.Resampling.BILINEAR, box=box, reducing_gap=None
        )
        return resized.crop((left, top, left + crop, top + crop))
    # A panorama or a sliver (a 1x40000 PNG would resize to 256x10240000): resample
    # only the part of the box the crop keeps. Same filter, but Pillow takes boxes
    # in float32, which moves some samples by a level; not worth it for normal shapes.
    x_scale, y_scale = width / new_width, height / new_height
    kept = (
        left_edge + left * x_scale,
        top_edge + top * y_scale,
        left_edge + (left + crop) * x_scale,
        top_edge + (top + crop) * y_scale,
    )
    return image.resize((crop, crop), Image.Resampling.BILINEAR, box=kept, reducing_gap=None)


def _normalise(image: Image.Image, config: PreprocessConfig) -> npt.NDArray[np.float32]:
    """uint8 RGB or grey to float32 CHW, as ToTensor then Normalize compute it."""
    mean = np.asarray(config.mean, dtype=np.float32)[:, np.newaxis]
    std = np.asarray(config.std, dtype=np.float32)[:, np.newaxis]
    # Every uint8 value through the same float32 operations in the same order, once:
    # identical results, one lookup per sample instead of four array passes.
    table: npt.NDArray[np.float32] = (
        np.arange(256, dtype=np.float32) / np.float32(255.0) - mean
    ) / std
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        return np.stack([table[c].take(pixels) for c in range(3)])
    return np.stack([table[c].take(pixels[:, :, c]) for c in range(3)])
