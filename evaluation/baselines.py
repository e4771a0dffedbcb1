"""Floors for the tables: downscaled raw pixels and random vectors."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image


def pixels(images: Sequence[bytes], size: int, mode: str) -> npt.NDArray[np.float64]:
    """Each image decoded, converted to ``mode`` ("L" or "RGB"), resized to size x size.

    The whole image is squeezed (no crop) with a box filter, which averages the pixels it
    drops; the rows come back flattened in [0, 1], to be L2-normalised by the ranking.
    """
    rows = []
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            small = image.convert(mode).resize((size, size), Image.Resampling.BOX)
            rows.append(np.asarray(small, dtype=np.float64).reshape(-1) / 255.0)
    return np.stack(rows)


def random_vectors(count: int, dimension: int, seed: int = 0) -> npt.NDArray[np.float64]:
    """Seeded standard normal rows: a ranking that knows nothing (mAP ~ class share)."""
    return np.random.default_rng(seed).standard_normal((count, dimension))
