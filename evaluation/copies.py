"""Copy detection: edited copies of real photos must find their original first."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from devenv import photos as samples
from evaluation import baselines, photos
from evaluation.api import Api
from evaluation.metrics import percentile_ms
from evaluation.ranking import unit_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyLine:
    """Top-1 rates for one edit, over every original."""

    transform: str
    api: float
    numpy: float | None  # None without an extractor address
    pixels: float
    missed: tuple[str, ...]  # originals whose copy did not come first through the API


@dataclass(frozen=True)
class Copies:
    originals: int
    lines: list[CopyLine]
    p50_ms: float
    p95_ms: float


async def evaluate(api: Api, *, collection: str) -> Copies:
    """Stores the originals, then searches by each edited copy's bytes (EXACT, top 1)."""
    originals = samples.originals()
    if len(originals) < 2:
        raise RuntimeError("copy detection needs scikit-image's or darknet's sample photos")
    names = sorted(originals)
    await api.fresh_collection(collection)
    await api.ingest(collection, [(n, originals[n], {}) for n in names])
    stored = unit_rows(await api.stored_embeddings(collection, names))
    grey = unit_rows(baselines.pixels([originals[n] for n in names], 16, "L"))
    decoded = {n: samples.decode(originals[n]) for n in names}
    lines: list[CopyLine] = []
    seconds: list[float] = []
    for transform, edit in photos.TRANSFORMS.items():
        log.info("copy detection: %s", transform)
        copies = [edit(decoded[n]) for n in names]
        found = []
        for data in copies:
            started = time.perf_counter()
            found.append((await api.search_image(collection, data, top_k=1))[0])
            seconds.append(time.perf_counter() - started)
        numpy_rate = None
        if api.extractor is not None:
            queries = unit_rows(await api.embed(copies))
            numpy_rate = _top1_rate(queries, stored)
        pixel_queries = unit_rows(baselines.pixels(copies, 16, "L"))
        lines.append(
            CopyLine(
                transform=transform,
                api=float(np.mean([f == n for f, n in zip(found, names, strict=True)])),
                numpy=numpy_rate,
                pixels=_top1_rate(pixel_queries, grey),
                missed=tuple(n for f, n in zip(found, names, strict=True) if f != n),
            )
        )
    return Copies(len(names), lines, percentile_ms(seconds, 50), percentile_ms(seconds, 95))


def _top1_rate(queries: np.ndarray, originals: np.ndarray) -> float:
    """Share of query rows whose nearest original row is the one at the same index."""
    distances = (
        np.einsum("ij,ij->i", queries, queries)[:, None]
        + np.einsum("ij,ij->i", originals, originals)[None, :]
        - 2.0 * queries @ originals.T
    )
    nearest = np.argmin(distances, axis=1)
    return float(np.mean(nearest == np.arange(len(queries))))
