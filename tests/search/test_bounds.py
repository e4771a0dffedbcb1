"""The lower-bound cube never exceeds the true distance: synthetic and real Lite0 vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devenv.photos import center_crop, decode, encode, flipped, rescale
from devenv.synthetic import cnn_like_vectors
from extractor_service.preprocess import preprocess
from extractor_service.runtime import OnnxModel
from search_service.projection import fit_projection
from search_service.vectors import unit_rows
from tests import photos

# float64 rounding on unit vectors is ~1e-15; EXACT allows 1e-9 (ranking.BOUND_MARGIN).
ROUNDING = 1e-12


def _worst_excess(vectors: np.ndarray, dimensions: int, pairs: int, seed: int) -> float:
    """max(bound - exact) over random pairs, with a projection fitted on other rows."""
    half = len(vectors) // 2
    projection = fit_projection(vectors[:half], dimensions=dimensions, lists=4)
    rows = unit_rows(vectors[half:])
    cubes = projection.bounds(rows)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(rows), (2, pairs))
    bound = np.linalg.norm(cubes[a] - cubes[b], axis=1)
    exact = np.linalg.norm(rows[a] - rows[b], axis=1)
    near = exact > 1e-3
    assert np.median(bound[near] / exact[near]) > 0.1  # and it is not vacuous
    return float((bound - exact).max())


@pytest.mark.parametrize(("dim", "dimensions"), [(64, 8), (512, 32), (4096, 99)])
def test_bound_holds_on_synthetic_vectors(dim: int, dimensions: int) -> None:
    vectors = cnn_like_vectors(1200, dim, clusters=30, seed=dim)
    assert _worst_excess(vectors, dimensions, pairs=20_000, seed=1) <= ROUNDING


def test_bound_holds_near_duplicates_and_far_outliers() -> None:
    rng = np.random.default_rng(3)
    base = cnn_like_vectors(600, 256, clusters=5, seed=2)
    near = base + 1e-6 * rng.standard_normal(base.shape).astype(np.float32)
    outliers = rng.standard_normal((100, 256)).astype(np.float32) * 50
    vectors = np.concatenate([base, near, outliers])[rng.permutation(1300)]
    assert _worst_excess(vectors, 40, pairs=20_000, seed=4) <= ROUNDING


@pytest.fixture(scope="module")
def lite0_vectors(lite0_model_dir: Path) -> np.ndarray:
    """Real Lite0 features of the real photos and crops, rescales and JPEG copies of them."""
    model = OnnxModel.load(lite0_model_dir)
    manifest = model.manifest
    config = manifest.preprocess_config()
    views = []
    for name in photos.available_photos():
        image = decode(photos.photo_bytes(name))
        for edit in (
            lambda i: i,
            lambda i: center_crop(i, 0.7),
            lambda i: center_crop(i, 0.85),
            lambda i: rescale(i, 0.5),
            flipped,
        ):
            views.append(preprocess(encode(edit(image), quality=70), config, item=name))
    embedded = model.run(np.stack(views))
    return np.asarray(embedded, dtype=np.float32)


def test_bound_holds_on_real_lite0_features(lite0_vectors: np.ndarray) -> None:
    assert len(lite0_vectors) >= 60
    for dimensions in (8, 24):
        excess = _worst_excess(lite0_vectors, dimensions, pairs=5_000, seed=dimensions)
        assert excess <= ROUNDING
