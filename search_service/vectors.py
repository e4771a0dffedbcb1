"""The vector maths of ranking: unit vectors, exact distances, the running top k."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from search_service.domain import Hit, Vector

Float64Array = npt.NDArray[np.float64]
# The quick 2 - 2cos distance is off by at most ~1e-7 (near zero distance, where cos
# rounds to 1); rows within this of the cut get the exact distance too.
_QUICK_MARGIN = 1e-6


def unit(vector: Vector) -> Float64Array:
    """The L2-normalised vector in float64, as every distance is computed."""
    as_double = vector.astype(np.float64)
    norm = float(np.linalg.norm(as_double))
    return as_double / norm if norm > 0 else as_double


def unit_rows(vectors: npt.NDArray[np.floating]) -> Float64Array:
    """``(n, D)`` rows L2-normalised in float64 (an all-zero row stays zero)."""
    rows = np.asarray(vectors, dtype=np.float64).copy()
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows /= np.where(norms > 0, norms, 1.0)
    return rows


def units(blobs: Sequence[bytes]) -> Float64Array:
    """Stored float32 vectors (little-endian bytes) as one ``(n, D)`` unit matrix."""
    return unit_rows(np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1))


def distances_to(vectors: Vector, query: Float64Array) -> Float64Array:
    """Euclidean distances between the rows' unit vectors and the unit ``query``, float64."""
    distances: Float64Array = np.linalg.norm(unit_rows(vectors) - query, axis=1)
    return distances


def rank_key(hit: Hit) -> tuple[float, str]:
    """Hits order by distance, ties by key, so every mode and page agrees."""
    return hit.distance, hit.key


def nearest(
    rows: Sequence[Any],
    query: Float64Array,
    *,
    keep: int,
    max_distance: float = math.inf,
    cut: float = math.inf,
) -> list[Hit]:
    """The ``keep`` nearest ``rows`` within ``max_distance``, by (distance, key).

    ``cut`` is a distance that hits beyond cannot matter to the caller (the k-th best
    found so far): rows whose quick distance is clearly past it skip the exact one.

    ``rows`` carry ``key``, ``metadata`` and ``embedding`` (float32 bytes). Every row gets
    a quick distance from its dot product with the query (float64 accumulation, 2 - 2 cos,
    a few times faster than forming the differences); those that can still rank get the
    exact one. CPU-heavy: callers run it in a worker thread.
    """
    if not rows:
        return []
    vectors = np.frombuffer(b"".join(r["embedding"] for r in rows), dtype="<f4")
    vectors = vectors.reshape(len(rows), -1)
    dots = np.einsum("ij,j->i", vectors, query, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
    quick = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * dots / np.where(norms > 0, norms, 1.0)))
    cut = min(cut, max_distance)
    if keep < len(quick):
        cut = min(cut, float(np.partition(quick, keep - 1)[keep - 1]))
    near = np.flatnonzero(quick <= cut + _QUICK_MARGIN)
    exact = distances_to(vectors[near], query)
    hits = [
        Hit(rows[i]["key"], float(d), rows[i]["metadata"])
        for i, d in zip(near.tolist(), exact, strict=True)
        if d <= max_distance
    ]
    return heapq.nsmallest(keep, hits, key=rank_key)


def merge(best: list[Hit], more: list[Hit], keep: int) -> list[Hit]:
    """The ``keep`` nearest of two lists of hits of distinct keys, in rank order."""
    return heapq.nsmallest(keep, best + more, key=rank_key) if more else best


def cutoff(best: list[Hit], keep: int, max_distance: float) -> float:
    """The distance a new hit must not exceed to enter ``best`` (sorted, <= keep long)."""
    return min(max_distance, best[-1].distance) if len(best) >= keep else max_distance
