"""Synthetic embeddings shaped like CNN features, generated deterministically in chunks.

Generative model (fixed by ``seed``, ``dim``, ``clusters`` and ``spread``):

- A latent space of ``rank = min(dim, 256)`` axes with a decaying spectrum: axis j has
  standard deviation ``(j + 1) ** -0.5``, so variance falls off like 1/j, roughly the
  power law seen in the PCA spectra of pooled CNN features.
- ``clusters`` cluster centres drawn in that latent space (semantic categories), with
  Zipf-like popularity (weight of the i-th most popular ~ 1 / sqrt(i)), so cluster sizes
  are uneven as in real photo collections.
- A point picks a cluster by popularity and adds within-cluster variation with the same
  spectrum scaled by ``spread`` (0.5: clusters overlap at their edges, not separated blobs).
- A fixed random linear map lifts the latent point to ``dim`` pre-activations, a ReLU makes
  it non-negative and sparse (about half the coordinates are zero, as after fc7's ReLU),
  and the row is L2-normalised like the stored embeddings. The ReLU also makes the data
  full rank, so PCA sees a long tail rather than an exact low-rank subspace.

Row i depends only on (seed, model, i): rows are generated in fixed internal blocks of
4096 with a per-block random stream, so ``iter_cnn_like_vectors`` gives the same rows for
any ``batch``, N = 100k is a prefix of N = 1M, and ``start`` gives held-out queries from
the same distribution (e.g. ``cnn_like_vectors(1000, dim, start=n)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_BLOCK = 4096
_MAX_RANK = 256
_MODEL_STREAM = 0
_ROW_STREAM = 1


@dataclass(frozen=True)
class _Model:
    scales: npt.NDArray[np.float32]  # (rank,) latent standard deviations
    centres: npt.NDArray[np.float32]  # (clusters, rank)
    cumulative: npt.NDArray[np.float64]  # (clusters,) popularity CDF
    lift: npt.NDArray[np.float32]  # (rank, dim)


def _model(dim: int, clusters: int, seed: int) -> _Model:
    rank = min(dim, _MAX_RANK)
    rng = np.random.default_rng([seed, _MODEL_STREAM, dim, clusters])
    scales = ((np.arange(rank) + 1.0) ** -0.5).astype(np.float32)
    centres = (rng.standard_normal((clusters, rank)) * scales).astype(np.float32)
    popularity = rng.permutation((np.arange(clusters) + 1.0) ** -0.5)
    cumulative = np.cumsum(popularity / popularity.sum())
    cumulative[-1] = 1.0
    lift = (rng.standard_normal((rank, dim)) / np.sqrt(rank)).astype(np.float32)
    return _Model(scales=scales, centres=centres, cumulative=cumulative, lift=lift)


def _block(model: _Model, index: int, *, seed: int, spread: float) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng([seed, _ROW_STREAM, index])
    rank = model.scales.shape[0]
    which = np.searchsorted(model.cumulative, rng.random(_BLOCK), side="right")
    which = np.minimum(which, model.centres.shape[0] - 1)
    latent = rng.standard_normal((_BLOCK, rank), dtype=np.float32)
    latent *= model.scales * np.float32(spread)
    latent += model.centres[which]
    rows = latent @ model.lift
    np.maximum(rows, 0.0, out=rows)
    norms = np.linalg.norm(rows, axis=1)
    # An all-zero row (possible only at tiny dim) becomes a unit axis so every row is unit.
    dead = norms == 0.0
    rows[dead, 0] = 1.0
    norms[dead] = 1.0
    rows /= norms[:, None]
    return rows


def iter_cnn_like_vectors(
    n: int,
    dim: int,
    *,
    batch: int = _BLOCK,
    clusters: int = 1000,
    seed: int = 0,
    start: int = 0,
    spread: float = 0.5,
) -> Iterator[npt.NDArray[np.float32]]:
    """Yield rows ``start .. start + n`` as float32 ``(<= batch, dim)`` chunks (see module doc).

    Memory is O(batch * dim + 256 * dim) whatever n is, so 1M x 4096 (16 GB) streams.
    """
    if n < 0 or dim < 1 or batch < 1 or clusters < 1 or start < 0 or spread < 0:
        raise ValueError(
            f"need n >= 0, dim >= 1, batch >= 1, clusters >= 1, start >= 0, spread >= 0; "
            f"got n={n}, dim={dim}, batch={batch}, clusters={clusters}, start={start}, "
            f"spread={spread}"
        )
    model = _model(dim, clusters, seed)
    stop = start + n
    pending: list[npt.NDArray[np.float32]] = []
    pending_rows = 0
    position = start
    while position < stop:
        index = position // _BLOCK
        block = _block(model, index, seed=seed, spread=spread)
        offset = position - index * _BLOCK
        take = min(_BLOCK - offset, stop - position)
        piece = block[offset : offset + take]
        position += take
        while piece.shape[0]:
            room = batch - pending_rows
            pending.append(piece[:room])
            pending_rows += min(room, piece.shape[0])
            piece = piece[room:]
            if pending_rows == batch:
                yield pending[0].copy() if len(pending) == 1 else np.concatenate(pending)
                pending, pending_rows = [], 0
    if pending_rows:
        yield np.concatenate(pending)


def cnn_like_vectors(
    n: int,
    dim: int,
    *,
    clusters: int = 1000,
    seed: int = 0,
    start: int = 0,
    spread: float = 0.5,
) -> npt.NDArray[np.float32]:
    """Rows ``start .. start + n`` as one float32 ``(n, dim)`` array (see module doc)."""
    out = np.empty((n, dim), dtype=np.float32)
    filled = 0
    for chunk in iter_cnn_like_vectors(
        n, dim, batch=_BLOCK, clusters=clusters, seed=seed, start=start, spread=spread
    ):
        out[filled : filled + chunk.shape[0]] = chunk
        filled += chunk.shape[0]
    return out
