"""Preprocessing: torchvision's ImageNet eval recipe, every input mode, every bad input."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from PIL import ExifTags, Image

from extractor_service.preprocess import PreprocessConfig, preprocess
from service_core.errors import InvalidArgument, ResourceExhausted, ServiceError
from tests.photos import (
    DARKNET_PHOTOS,
    available_photos,
    encode,
    large_jpeg,
    photo,
    photo_bytes,
    requires_darknet,
    rescale,
)

Array = npt.NDArray[np.float32]

CONFIG = PreprocessConfig(
    input_size=224, resize_size=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
ITEM = "holiday/cat 1.jpg"


def recipe(image: Image.Image, config: PreprocessConfig = CONFIG) -> Array:
    """torchvision's eval transforms on a PIL image, written out step by step.

    convert("RGB") as ImageFolder's loader does, Resize(resize_size) (PIL bilinear,
    antialiased), CenterCrop(input_size), ToTensor, Normalize(mean, std).
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    size = config.resize_size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    resized = rgb.resize((new_width, new_height), Image.Resampling.BILINEAR)
    crop = config.input_size
    top = int(round((new_height - crop) / 2.0))  # noqa: RUF046 - torchvision's own expression
    left = int(round((new_width - crop) / 2.0))  # noqa: RUF046
    pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels / np.float32(255) - mean) / std).transpose(2, 0, 1))


def torch_reference(pixels: npt.NDArray[np.uint8], config: PreprocessConfig = CONFIG) -> Array:
    """The same recipe computed by torch alone: float antialiased bilinear on uint8 RGB."""
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float()
    height, width = pixels.shape[:2]
    size = config.resize_size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    resized = torch.nn.functional.interpolate(
        tensor, size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False
    )[0]
    crop = config.input_size
    top, left = int(round((new_height - crop) / 2.0)), int(round((new_width - crop) / 2.0))  # noqa: RUF046
    cropped = resized[:, top : top + crop, left : left + crop] / 255
    mean = torch.tensor(config.mean)[:, None, None]
    std = torch.tensor(config.std)[:, None, None]
    result: Array = ((cropped - mean) / std).numpy()
    return result


def in_levels(a: Array, b: Array, config: PreprocessConfig = CONFIG) -> Array:
    """|a - b| undone from normalisation, in 8-bit grey levels."""
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    levels: Array = np.abs(a - b) * std * 255
    return levels


def decoded_rgb(data: bytes) -> Image.Image:
    """An independent decode with Image.open, frame 0, alpha dropped."""
    image: Image.Image = Image.open(io.BytesIO(data))
    if "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png(image: Image.Image, **params: object) -> bytes:
    return save(image, "PNG", **params)


# --- the recipe --------------------------------------------------------------------


@pytest.mark.parametrize("name", available_photos())
def test_output_is_float32_chw_and_equals_torchvision_recipe_exactly(name: str) -> None:
    # Lossless input, so the decode is not in question: the pipeline is bit-exact.
    image = photo(name)
    out = preprocess(png(image), CONFIG, item=name)
    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, recipe(image))


@pytest.mark.parametrize(
    "size",
    [
        (451, 300),
        (300, 451),
        (256, 256),
        (257, 300),
        (289, 256),
        (100, 80),
        (1500, 400),
        (2048, 256),
    ],
    ids=str,
)
def test_matches_independent_torch_computation(size: tuple[int, int]) -> None:
    # Pillow resamples 8-bit data in two passes with fixed-point weights and rounds
    # each pass to uint8; torch keeps floats throughout. Two roundings of at most half
    # a level each: no sample may differ by more than one grey level (plus float
    # slack), and on average they differ by about a quarter level.
    image = photo("chelsea").resize(size, Image.Resampling.BICUBIC)
    out = preprocess(png(image), CONFIG, item="chelsea")
    diff = in_levels(out, torch_reference(np.asarray(image)))
    assert diff.max() <= 1.01
    assert diff.mean() <= 0.4


def test_grey_photo_has_three_equal_channels() -> None:
    out = preprocess(photo_bytes("camera"), CONFIG, item="camera")
    std = np.asarray(CONFIG.std, dtype=np.float32)[:, None, None]
    mean = np.asarray(CONFIG.mean, dtype=np.float32)[:, None, None]
    pixels = out * std + mean
    np.testing.assert_allclose(pixels[0], pixels[1], atol=1e-6)
    np.testing.assert_allclose(pixels[0], pixels[2], atol=1e-6)


def test_other_model_sizes_and_statistics() -> None:
    config = PreprocessConfig(input_size=240, resize_size=274, mean=(0.5,) * 3, std=(0.5,) * 3)
    image = photo("coffee")
    out = preprocess(png(image), config, item="coffee")
    assert out.shape == (3, 240, 240)
    np.testing.assert_array_equal(out, recipe(image, config))


@pytest.mark.parametrize("size", [(30, 3000), (4000, 40)], ids=str)
def test_extreme_aspect_ratio_stays_within_one_level_of_torch(size: tuple[int, int]) -> None:
    # Beyond 8:1 only the kept box is resampled; Pillow's float32 box coordinates
    # may move a sample by one more level than the full resize would.
    image = photo("rocket").resize(size, Image.Resampling.BICUBIC)
    out = preprocess(png(image), CONFIG, item="rocket")
    assert out.shape == (3, 224, 224)
    diff = in_levels(out, torch_reference(np.asarray(image)))
    assert diff.max() <= 2.01
    assert diff.mean() <= 0.5


def test_one_pixel_sliver_does_not_resize_the_whole_strip() -> None:
    # Resized whole this would be 256 x 10,240,000 RGB: 7.8 GB.
    sliver = Image.new("RGB", (1, 40_000), (200, 30, 30))
    out = preprocess(png(sliver), CONFIG, item="sliver")
    assert out.shape == (3, 224, 224)
    expected = (np.float32(200 / 255) - np.float32(0.485)) / np.float32(0.229)
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_config_rejects_a_crop_larger_than_the_resize() -> None:
    with pytest.raises(ValueError, match="input_size"):
        PreprocessConfig(input_size=256, resize_size=224, mean=(0,) * 3, std=(1,) * 3)


def test_concurrent_calls_agree_with_sequential_ones() -> None:
    names = available_photos()[:8]
    inputs = [photo_bytes(name) for name in names]
    sequential = [preprocess(data, CONFIG, item="x") for data in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda data: preprocess(data, CONFIG, item="x"), inputs * 3))
    for index, result in enumerate(concurrent):
        np.testing.assert_array_equal(result, sequential[index % len(inputs)])


# --- EXIF orientation ----------------------------------------------------------------

# What a viewer shows for each EXIF Orientation value, from the EXIF 2.3 spec's
# description of where row 0 and column 0 go (independent of Pillow's own table).
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return save(image, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    # Image.open leaves the stored pixels as they are; 451x300 is too small to
    # decode at reduced size, so the result must be the recipe exactly.
    data = jpeg_with_orientation(photo("chelsea"), orientation)
    stored = np.asarray(Image.open(io.BytesIO(data)))
    shown = np.ascontiguousarray(DISPLAYED[orientation](stored))
    out = preprocess(data, CONFIG, item="cat")
    np.testing.assert_array_equal(out, recipe(Image.fromarray(shown)))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_the_draft_path(orientation: int) -> None:
    # 2265x1500 decodes at 1/4 with a partial last column (566.25 pixels), which
    # mirroring moves to the other side: a misplaced box shows as a shifted picture
    # (measured: 2 to 6 grey levels mean difference instead of about 0.5).
    source = photo("astronaut").resize((2265, 1500), Image.Resampling.LANCZOS)
    data = jpeg_with_orientation(source, orientation)
    stored = np.asarray(Image.open(io.BytesIO(data)))
    shown = recipe(Image.fromarray(np.ascontiguousarray(DISPLAYED[orientation](stored))))
    diff = in_levels(preprocess(data, CONFIG, item="astronaut"), shown)
    assert diff.mean() < 1.0


# --- large JPEGs decode at reduced size ------------------------------------------------


def cosine(a: Array, b: Array) -> float:
    return float(a.ravel() @ b.ravel()) / float(np.linalg.norm(a) * np.linalg.norm(b))


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
def test_large_jpeg_takes_the_draft_path_and_stays_close(name: str) -> None:
    data = large_jpeg(name)  # 4000x3000, quality 90: a 12-megapixel photo
    full = recipe(decoded_rgb(data))
    out = preprocess(data, CONFIG, item=name)
    # A full decode would reproduce the recipe bit for bit (see the lossless tests),
    # so any difference shows the reduced-size decode ran.
    assert not np.array_equal(out, full)
    assert in_levels(out, full).mean() < 1.0
    assert cosine(out, full) > 0.9995


@pytest.mark.parametrize(
    "size", [(4529, 3000), (3000, 4529), (1207, 800), (853, 640), (2001, 1999)], ids=str
)
@pytest.mark.parametrize("name", ["chelsea", "astronaut"])
def test_draft_keeps_the_full_size_geometry(name: str, size: tuple[int, int]) -> None:
    # Sizes that 1/2, 1/4, 1/8 do not divide leave a partial last row and column:
    # counting it as a whole pixel shifts the picture (measured: up to 6 grey levels
    # mean difference, pixel cosine 0.97 on a textured photo).
    data = encode(photo(name).convert("RGB").resize(size, Image.Resampling.LANCZOS), quality=92)
    full = recipe(decoded_rgb(data))
    out = preprocess(data, CONFIG, item=name)
    assert in_levels(out, full).mean() < 1.25
    assert cosine(out, full) > 0.999


@pytest.mark.parametrize(
    ("mode", "options"),
    [("RGB", {"progressive": True}), ("RGB", {"subsampling": 0}), ("L", {}), ("CMYK", {})],
    ids=["progressive", "4:4:4", "greyscale", "CMYK"],
)
def test_draft_path_takes_every_kind_of_jpeg(mode: str, options: dict[str, object]) -> None:
    image = photo("astronaut").resize((3001, 2251), Image.Resampling.LANCZOS)
    data = save(image.convert(mode), "JPEG", quality=90, **options)
    full = recipe(decoded_rgb(data))
    out = preprocess(data, CONFIG, item="astronaut")
    assert in_levels(out, full).mean() < 1.0
    assert cosine(out, full) > 0.9995


@pytest.mark.parametrize("size", [(900, 600), (639, 2000), (500, 500)], ids=str)
def test_jpeg_without_room_to_shrink_is_decoded_in_full(size: tuple[int, int]) -> None:
    # Below 2 x 1.25 x resize_size on the short side no reduced decode can keep the
    # headroom, so the result is the exact recipe.
    data = encode(photo("coffee").resize(size, Image.Resampling.LANCZOS), quality=92)
    np.testing.assert_array_equal(
        preprocess(data, CONFIG, item="coffee"), recipe(decoded_rgb(data))
    )


@requires_darknet
@pytest.mark.parametrize("name", sorted(DARKNET_PHOTOS))
def test_camera_jpegs_match_full_decode_closely(name: str) -> None:
    data = photo_bytes(name)
    diff = in_levels(preprocess(data, CONFIG, item=name), recipe(decoded_rgb(data)))
    assert diff.mean() < 1.0


# --- every pixel mode ----------------------------------------------------------------


def palette_with_alpha() -> bytes:
    image = photo("coffee").convert("P", palette=Image.Palette.ADAPTIVE)
    return save(image, "PNG", transparency=bytes(range(0, 256)))


def rgba_transparent_webp() -> bytes:
    image = photo("coffee").convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return save(image, "WEBP", lossless=True)


EIGHT_BIT_FILES: dict[str, Callable[[], bytes]] = {
    "1 PNG": lambda: save(photo("camera").convert("1"), "PNG"),
    "L PNG": lambda: save(photo("camera"), "PNG"),
    "LA PNG": lambda: save(photo("camera").convert("LA"), "PNG"),
    "P GIF": lambda: save(photo("coffee"), "GIF"),
    "P PNG": lambda: save(photo("coffee").convert("P"), "PNG"),
    "P PNG with alpha": palette_with_alpha,
    "RGB BMP": lambda: save(photo("coffee"), "BMP"),
    "RGBA PNG": lambda: save(photo("coffee").convert("RGBA"), "PNG"),
    "RGBA WebP": rgba_transparent_webp,
    "CMYK JPEG": lambda: save(photo("coffee").convert("CMYK"), "JPEG", quality=95),
    "CMYK TIFF": lambda: save(photo("coffee").convert("CMYK"), "TIFF"),
    "YCbCr TIFF": lambda: save(photo("coffee").convert("YCbCr"), "TIFF"),
    "LAB TIFF": lambda: save(photo("coffee").convert("LAB"), "TIFF"),
}


@pytest.mark.parametrize("case", EIGHT_BIT_FILES)
def test_eight_bit_modes_convert_as_convert_rgb_does(case: str) -> None:
    data = EIGHT_BIT_FILES[case]()
    mode = case.split()[0]
    assert Image.open(io.BytesIO(data)).mode == mode
    np.testing.assert_array_equal(preprocess(data, CONFIG, item=case), recipe(decoded_rgb(data)))


def test_alpha_is_dropped_not_composited() -> None:
    # What torchvision's loader (convert("RGB")) does: the colour under the alpha.
    image = photo("chelsea").convert("RGBA")
    image.putalpha(0)
    out = preprocess(png(image), CONFIG, item="invisible cat")
    np.testing.assert_array_equal(out, recipe(photo("chelsea")))


def grey_as(dtype: str, scale: float) -> Image.Image:
    """The greyscale camera photo's 8-bit samples times scale, stored as dtype."""
    samples = np.asarray(photo("camera")).astype(np.float64) * scale
    return Image.fromarray(samples.astype(dtype))


DEEP_FILES: dict[str, Callable[[], bytes]] = {
    "I;16 PNG": lambda: png(grey_as("uint16", 257)),
    "I;16 TIFF": lambda: save(grey_as("uint16", 257), "TIFF"),
    "I;16B TIFF": lambda: save(grey_as(">u2", 257), "TIFF"),
    "I TIFF 16-bit data": lambda: save(grey_as("int32", 257), "TIFF"),
    "I TIFF 8-bit data": lambda: save(grey_as("int32", 1), "TIFF"),
    "F TIFF 0..1": lambda: save(grey_as("float32", 1 / 255), "TIFF"),
    "F TIFF 0..255": lambda: save(grey_as("float32", 1), "TIFF"),
}


@pytest.mark.parametrize("case", DEEP_FILES)
def test_deep_modes_scale_to_eight_bits_instead_of_saturating(case: str) -> None:
    data = DEEP_FILES[case]()
    assert Image.open(io.BytesIO(data)).mode == case.split()[0]
    out = preprocess(data, CONFIG, item=case)
    np.testing.assert_array_equal(out, recipe(photo("camera")))


def test_signed_float_data_is_stretched() -> None:
    signed = np.asarray(photo("camera")).astype(np.float32) * np.float32(2 / 255) - 1
    data = save(Image.fromarray(signed), "TIFF")
    out = preprocess(data, CONFIG, item="signed")
    reference = recipe(photo("camera"))
    assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.99


# --- animations: frame 0 ------------------------------------------------------------


def animation(fmt: str) -> bytes:
    size = photo("chelsea").size
    frames = [photo(name).convert("RGB").resize(size) for name in ("chelsea", "coffee", "rocket")]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_gives_its_first_frame(fmt: str) -> None:
    data = animation(fmt)
    with Image.open(io.BytesIO(data)) as image:
        assert getattr(image, "n_frames", 1) == 3
        image.seek(1)
        second = recipe(image.convert("RGB"))
    out = preprocess(data, CONFIG, item="animated")
    np.testing.assert_array_equal(out, recipe(decoded_rgb(data)))
    assert in_levels(out, second).mean() > 10


# --- bad input ---------------------------------------------------------------------


def assert_names_item(error: ServiceError, item: str) -> None:
    assert error.message.startswith(f"image {item!r}: ")
    assert "PIL" not in error.message
    assert "Traceback" not in error.message
    assert "\n" not in error.message


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a width x height RGB image, with one row of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to claim another size."""
    data = bytearray(encode(photo("chelsea"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF whose logical screen and first image descriptor claim the given sizes."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", *screen, 0, 0, 0)
        + b","
        + struct.pack("<HHHHB", 0, 0, *frame, 0)
        + b"\x02\x02\x4c\x01\x00;"
    )


def webp_claiming(width: int, height: int) -> bytes:
    """An extended-format (VP8X) WebP header claiming a width x height canvas."""
    body = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    chunk = b"VP8X" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def test_empty_bytes() -> None:
    with pytest.raises(InvalidArgument) as caught:
        preprocess(b"", CONFIG, item=ITEM)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert_names_item(caught.value, ITEM)
    assert "empty" in caught.value.message


UNSUPPORTED: dict[str, Callable[[], bytes]] = {
    "random bytes": lambda: np.random.default_rng(7).bytes(5000),
    "plain text": lambda: b"just some words, not a picture\n",
    "SVG": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "PDF": lambda: b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n",
    "ICO": lambda: save(photo("coffee").resize((32, 32)), "ICO"),
    "JPEG 2000": lambda: save(photo("coffee"), "JPEG2000"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_format(case: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        preprocess(UNSUPPORTED[case](), CONFIG, item=ITEM)
    assert_names_item(caught.value, ITEM)
    assert "unsupported" in caught.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.95])
def test_truncated_file(fmt: str, fraction: float) -> None:
    data = encode(photo("chelsea"), fmt)
    with pytest.raises(InvalidArgument) as caught:
        preprocess(data[: int(len(data) * fraction)], CONFIG, item=ITEM)
    assert_names_item(caught.value, ITEM)
    assert caught.value.message.endswith(
        "truncated or corrupt " + fmt.replace("WEBP", "WebP") + " file"
    )


def test_corrupt_png_data() -> None:
    data = bytearray(png(photo("chelsea")))
    data[data.index(b"IDAT") + 100] ^= 0xFF
    with pytest.raises(InvalidArgument) as caught:
        preprocess(bytes(data), CONFIG, item=ITEM)
    assert_names_item(caught.value, ITEM)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(png_claiming(100_000, 100_000), id="PNG"),
        pytest.param(jpeg_claiming(60_000, 60_000), id="JPEG"),
        pytest.param(gif_claiming((65_535, 65_535), (65_535, 65_535)), id="GIF"),
        pytest.param(webp_claiming(16_384, 16_384), id="WebP"),
        pytest.param(png_claiming(10_000, 10_000), id="between Pillow's warning and error"),
        pytest.param(png_claiming(8_000, 5_001), id="just over the limit"),
    ],
)
def test_header_claiming_too_many_pixels_is_refused_before_decoding(data: bytes) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ResourceExhausted) as caught:
            preprocess(data, CONFIG, item=ITEM)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_names_item(caught.value, ITEM)
    assert "over the limit of 40000000" in caught.value.message
    assert seen == []  # Pillow's DecompressionBombWarning never fired


def test_pixel_limit_is_configurable() -> None:
    config = PreprocessConfig(224, 256, CONFIG.mean, CONFIG.std, max_pixels=100_000)
    with pytest.raises(ResourceExhausted) as caught:
        preprocess(photo_bytes("chelsea"), config, item="chelsea")  # 451x300
    assert "451x300" in caught.value.message
    assert preprocess(png(rescale(photo("chelsea"), 0.5)), config, item="small").shape[0] == 3


@pytest.mark.parametrize("size", [(10_000, 10_000), (20_000, 20_000)], ids=str)
def test_gif_frame_larger_than_its_screen_is_refused(size: tuple[int, int]) -> None:
    # Pillow grows the image to the frame inside its own parser, applying its
    # own bomb check there; either way the caller gets RESOURCE_EXHAUSTED.
    with pytest.raises(ResourceExhausted) as caught:
        preprocess(gif_claiming((1, 1), size), CONFIG, item=ITEM)
    assert_names_item(caught.value, ITEM)


@pytest.mark.parametrize(
    ("fmt", "data"),
    [("PNG", png_claiming(0, 10)), ("GIF", gif_claiming((0, 0), (0, 0)))],
    ids=["PNG", "GIF"],
)
def test_zero_sized_image(fmt: str, data: bytes) -> None:
    with pytest.raises(InvalidArgument) as caught:
        preprocess(data, CONFIG, item=ITEM)
    assert_names_item(caught.value, ITEM)
    assert fmt in caught.value.message
