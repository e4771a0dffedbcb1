"""Time preprocess() on 12-megapixel JPEGs made from a real photo, with and without draft.

Run from the repository root: python -m benchmarks.bench_preprocess [--runs N]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import numpy as np
import numpy.typing as npt
import skimage.data
from PIL import Image, JpegImagePlugin

from extractor_service.preprocess import PreprocessConfig, preprocess

CONFIG = PreprocessConfig(
    input_size=224, resize_size=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
SIZE = (4000, 3000)


def twelve_megapixel_jpegs(photo: str, quality: int) -> dict[str, bytes]:
    """The photo upscaled to 4000x3000, as is and with sensor-like grain.

    Upscaling leaves a smooth picture that compresses unusually well; the grain
    brings the file to the size of a camera's (2-3 MB at quality 90), and the
    entropy decoding that dominates the time grows with it.
    """
    pixels = getattr(skimage.data, photo)()
    smooth = Image.fromarray(pixels).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 6.0, (SIZE[1], SIZE[0], 3))
    grain = np.clip(np.asarray(smooth, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return {
        "upscaled": _jpeg(smooth, quality),
        "upscaled + grain": _jpeg(Image.fromarray(grain), quality),
    }


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@contextmanager
def full_decode() -> Iterator[None]:
    """preprocess() as it would be without Image.draft: every JPEG decoded in full."""
    with mock.patch.object(JpegImagePlugin.JpegImageFile, "draft", return_value=None):
        yield


def time_ms(data: bytes, runs: int) -> npt.NDArray[np.float64]:
    for _ in range(3):
        preprocess(data, CONFIG, item="bench")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        preprocess(data, CONFIG, item="bench")
        times.append((time.perf_counter() - start) * 1000)
    return np.asarray(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--photo", default="chelsea", help="a scikit-image photo")
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()

    print(f"preprocess() of a {SIZE[0]}x{SIZE[1]} JPEG made from skimage's {args.photo!r}")
    print(f"quality {args.quality}, {args.runs} runs after 3 warm-up, one thread")
    print(f"{'JPEG':<18} {'size':>8} {'path':<12} {'median ms':>10} {'p95 ms':>8}")
    for label, data in twelve_megapixel_jpegs(args.photo, args.quality).items():
        for path in ("draft", "full decode"):
            if path == "draft":
                times = time_ms(data, args.runs)
            else:
                with full_decode():
                    times = time_ms(data, args.runs)
            median, p95 = np.percentile(times, [50, 95])
            size = f"{len(data) / 1e6:.1f} MB"
            print(f"{label:<18} {size:>8} {path:<12} {median:>10.1f} {p95:>8.1f}")


if __name__ == "__main__":
    main()
