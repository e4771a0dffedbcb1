"""Where the map puts each picture: a PCA projection to 2-D, then overlaps pushed apart."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
# Pairwise pushing costs n² memory per step; beyond this many pictures they may overlap.
SPREAD_AT_MOST = 2000


def pca_2d(vectors: Floats) -> tuple[Floats, Floats]:
    """Each vector's coordinates on the first two principal axes, and their variance shares.

    Rows are L2-normalised first: the service ranks by distance between unit vectors,
    so that is the geometry worth drawing.
    """
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    centred = unit - unit.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    points = np.zeros((len(vectors), 2))
    used = min(2, axes.shape[0])
    points[:, :used] = centred @ axes[:used].T
    variance = singular**2
    shares = np.zeros(2)
    if variance.sum() > 0:
        shares[:used] = variance[:used] / variance.sum()
    return points, shares


def fit(points: Floats, low: Floats, high: Floats) -> Floats:
    """points scaled into the box [low, high], one scale for both axes, y pointing up.

    One scale keeps distances on the page proportional to distances between embeddings.
    """
    least, most = points.min(axis=0), points.max(axis=0)
    span = np.maximum(most - least, 1e-12)
    scale = float(np.min((high - low) / span))
    centre = (low + high) / 2
    result: Floats = centre + (points - (least + most) / 2) * scale * np.array([1.0, -1.0])
    return result


def spread(
    centres: Floats, box: tuple[float, float], low: Floats, high: Floats, steps: int = 200
) -> Floats:
    """Moves boxes of size box around centres apart until none overlap (or steps run out).

    Each overlapping pair is pushed apart along the axis where that takes least, half
    each, so neighbours stay neighbours; pictures of near-duplicates end up side by side.
    """
    placed = centres.copy()
    if len(placed) < 2 or len(placed) > SPREAD_AT_MOST:
        return placed
    size = np.asarray(box, dtype=np.float64)
    # Identical points have no direction to be pushed in: a tiny seeded nudge gives one.
    placed += np.random.default_rng(0).uniform(-0.5, 0.5, placed.shape)
    others = ~np.eye(len(placed), dtype=bool)
    for _ in range(steps):
        delta = placed[:, None, :] - placed[None, :, :]
        overlap = size - np.abs(delta)
        clash = (overlap > 0).all(axis=2) & others
        if not clash.any():
            break
        # The axis of least overlap per pair; push each side by half of it.
        axis = np.argmin(overlap, axis=2)
        push = np.zeros_like(delta)
        for dimension in (0, 1):
            along = clash & (axis == dimension)
            push[..., dimension] = np.where(
                along, np.sign(delta[..., dimension]) * overlap[..., dimension] / 2, 0.0
            )
        placed += push.sum(axis=1) * 0.6  # under-relaxed: pushes from many sides add up
        placed = np.clip(placed, low, high)
    return placed
