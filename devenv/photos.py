"""Real sample photos, none downloaded: scikit-image's bundled ones and Debian's darknet ones.

The tests, the evaluation and the benchmarks all draw their photos from here.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

# Installed by the Debian package "darknet" (apt-get install darknet); what needs these
# goes without them when it is absent rather than fetch anything.
DARKNET_DIR = Path("/usr/share/darknet/data")

# Shipped inside the scikit-image wheel: loading them needs no network (no pooch).
SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut": "astronaut Eileen Collins in an orange suit, US flag and shuttle model",
    "camera": "a man behind a camera on a tripod, in a field (greyscale)",
    "chelsea": "Chelsea, a tabby cat, face close up",
    "coffee": "a cup of coffee on a saucer, from above",
    "rocket": "a SpaceX Falcon 9 rocket on its launch pad at night",
    "motorcycle": "a red motorcycle in a workshop",
    "hubble_deep_field": "the Hubble deep field: galaxies on black",
    "retina": "a human retina (fundus photograph)",
    "moon": "the lunar surface (greyscale)",
    "coins": "rows of ancient coins on a dark background (greyscale)",
    "brick": "a brick wall texture (greyscale)",
    "grass": "a grass texture (greyscale)",
    "gravel": "a gravel texture (greyscale)",
}

# The files behind SKIMAGE_PHOTOS in the scikit-image wheel.
SKIMAGE_FILES = {
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

DARKNET_PHOTOS: dict[str, str] = {
    "dog": "a dog sitting on a porch beside a bicycle, a car behind",
    "eagle": "an eagle standing at the water's edge",
    "giraffe": "a giraffe and a zebra among trees",
    "horses": "four horses on a grassy plain, hills behind",
    "kite": "people flying kites on a beach",
    "person": "a person in blue with a dog and a white horse",
    "scream": "Munch's painting The Scream",
}


def darknet_available() -> bool:
    return (DARKNET_DIR / "dog.jpg").is_file()


def available_photos() -> list[str]:
    """Names usable with photo() and photo_bytes() on this machine."""
    names = list(SKIMAGE_PHOTOS)
    if darknet_available():
        names += DARKNET_PHOTOS
    return names


def describe(name: str) -> str:
    """What the photo shows."""
    return {**SKIMAGE_PHOTOS, **DARKNET_PHOTOS}[name]


def photo(name: str) -> Image.Image:
    """The photo decoded, in its own mode (RGB, or L for greyscale); a fresh copy."""
    return Image.fromarray(_pixels(name).copy())


def photo_bytes(name: str) -> bytes:
    """The photo encoded: darknet's original JPEG file, scikit-image's pixels as PNG."""
    if name in DARKNET_PHOTOS:
        return _darknet_path(name).read_bytes()
    return encode(photo(name), "PNG")


def originals() -> dict[str, bytes]:
    """Name -> the photo's own file bytes, for every photo found on this machine.

    Read from the files in the scikit-image wheel, so scikit-image need only be
    installed, never imported (the evaluation runs without its import cost).
    """
    found: dict[str, bytes] = {}
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
        for name, file in SKIMAGE_FILES.items():
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


def rescale(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def flipped(image: Image.Image) -> Image.Image:
    """Mirrored left to right."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def large_jpeg(name: str, size: tuple[int, int] = (4000, 3000), *, quality: int = 90) -> bytes:
    """The photo upscaled (bicubic) to size, e.g. a 12-megapixel camera JPEG."""
    image = photo(name).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    return encode(image, "JPEG", quality=quality)


def _darknet_path(name: str) -> Path:
    path = DARKNET_DIR / f"{name}.jpg"
    if not path.is_file():
        raise LookupError(f"photo {name!r} needs Debian's darknet package (missing {path})")
    return path


@functools.cache
def _pixels(name: str) -> npt.NDArray[np.uint8]:
    import skimage.data  # slow to import, and only photo() needs it

    if name in DARKNET_PHOTOS:
        with Image.open(_darknet_path(name)) as image:
            pixels = np.asarray(image.convert("RGB"))
    elif name == "motorcycle":
        # Left view of a stereo pair; skimage's stub leaves this function untyped.
        pixels = skimage.data.stereo_motorcycle()[0]  # type: ignore[no-untyped-call]
    elif name in SKIMAGE_PHOTOS:
        pixels = getattr(skimage.data, name)()
    else:
        raise LookupError(f"no photo {name!r}; available: {', '.join(available_photos())}")
    pixels.setflags(write=False)
    return pixels
