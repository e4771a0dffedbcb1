"""Class retrieval on a labeled set: the API's rankings beside numpy's, sweeps and floors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluation import baselines
from evaluation.api import FAST, Api, Pass
from evaluation.fashion import Sample
from evaluation.metrics import Evaluation, overlap_at, percentile_ms, score
from evaluation.ranking import rank, unit_rows
from evaluation.variants import Transformer, Variant, sweep

log = logging.getLogger(__name__)

PCA_DIMS = (16, 32, 64, 100)
# Hits per FAST search in the sweep: FAST returns at most `candidates` hits, so the sweep
# compares every setting on the same top 100 (the service raises candidates to top_k + 1).
FAST_TOP_K = 100
# Images whose stored vector is compared with the extractor's own answer for the same bytes.
_DIRECT_CHECK = 32


@dataclass(frozen=True)
class FastSetting:
    """One FAST configuration: RefitProjection(dimensions, lists), then probes/candidates.

    lists = 0 takes the service's default (4 * sqrt(n)); probes or candidates = 0 take the
    service's defaults (SEARCH_DEFAULT_PROBES, SEARCH_DEFAULT_CANDIDATES).
    """

    dims: int
    lists: int = 0
    probes: int = 0
    candidates: int = 0


FAST_SWEEP = (
    FastSetting(16),
    FastSetting(32),
    FastSetting(64),
    FastSetting(100),
    *(FastSetting(64, probes=p) for p in (1, 4, 8, 16, 32, 64)),
    *(FastSetting(64, candidates=c) for c in (100, 200, 500)),
    FastSetting(64, lists=32, probes=8),
)


@dataclass(frozen=True)
class Line:
    """One row of a table: a method's scores and, for API rows, its latency."""

    name: str
    dims: int | None
    evaluation: Evaluation
    p50_ms: float | None = None
    p95_ms: float | None = None


@dataclass(frozen=True)
class FastLine:
    setting: FastSetting
    lists: int
    evaluation: Evaluation
    recall10: float  # share of EXACT's top 10 that FAST's top 10 holds
    recall100: float
    p50_ms: float
    p95_ms: float


@dataclass
class Retrieval:
    """Everything measured on one labeled set with one model."""

    model: str
    dimension: int
    images: int
    classes: int
    depth: int
    ingest_s: float
    api: Line
    numpy: Line
    differing_rankings: int
    stored_vs_direct: float | None  # largest |stored - extractor| component, None: unchecked
    variants: list[tuple[Variant, Evaluation]] = field(default_factory=list)
    floors: list[Line] = field(default_factory=list)
    exact_top: Line | None = None
    fast: list[FastLine] = field(default_factory=list)


async def evaluate(
    api: Api,
    sample: Sample,
    *,
    collection: str,
    model: str,
    depth: int,
    fast_sweep: Sequence[FastSetting] = FAST_SWEEP,
    queries: int | None = None,
    sweep_queries: int | None = None,
) -> Retrieval:
    """Ingests ``sample`` into a fresh ``collection`` and measures it every way.

    Every image is stored; ``queries`` (balanced over classes, None: every image) are the
    ones searched for, and ``sweep_queries`` those of each EXACT/FAST sweep setting.
    """
    keys = list(sample.keys)
    labels = dict(zip(keys, sample.labels, strict=True))
    images = [sample.png(i) for i in range(len(keys))]
    await api.fresh_collection(collection)
    log.info("ingesting %d images into %r", len(keys), collection)
    ingest_s = await api.ingest(
        collection,
        [(k, data, {"label": labels[k]}) for k, data in zip(keys, images, strict=True)],
    )
    stored = await api.stored_embeddings(collection, keys)
    direct_gap = None
    if api.extractor is not None:
        direct = await api.embed(images[:_DIRECT_CHECK])
        direct_gap = float(np.abs(direct - stored[:_DIRECT_CHECK]).max())
    depth = min(depth, len(keys) - 1)

    asked = _balanced(keys, sample.labels, queries)
    log.info("EXACT leave-one-out through the API: %d queries, top %d", len(asked), depth)
    exact = await api.leave_one_out(collection, asked, top_k=depth)
    offline = rank(unit_rows(stored), keys, depth=depth, queries=asked)
    result = Retrieval(
        model=model,
        dimension=int(stored.shape[1]),
        images=len(keys),
        classes=len(set(sample.labels)),
        depth=depth,
        ingest_s=ingest_s,
        api=_line("API, EXACT", None, exact, labels),
        numpy=Line("numpy, same vectors", None, score(offline, labels)),
        differing_rankings=sum(exact.rankings[k] != offline[k] for k in asked),
        stored_vs_direct=direct_gap,
    )

    log.info("offline PCA variants and floors")
    transformer = Transformer(stored, max(PCA_DIMS))
    for variant in sweep(PCA_DIMS):
        vectors = transformer.apply(variant)
        ranked = rank(vectors, keys, depth=depth, queries=asked)
        result.variants.append((variant, score(ranked, labels)))
    floors = {
        "raw pixels 28x28 grey": baselines.pixels(images, 28, "L"),
        "raw pixels 16x16 grey": baselines.pixels(images, 16, "L"),
        "raw pixels 8x8 grey": baselines.pixels(images, 8, "L"),
        f"random {stored.shape[1]}-D": baselines.random_vectors(len(keys), stored.shape[1]),
    }
    for name, vectors in floors.items():
        ranked = rank(unit_rows(vectors), keys, depth=depth, queries=asked)
        result.floors.append(Line(name, vectors.shape[1], score(ranked, labels)))

    swept = _balanced(asked, [labels[k] for k in asked], sweep_queries)
    log.info("EXACT and FAST sweeps through the API: %d queries each", len(swept))
    top = await api.leave_one_out(collection, swept, top_k=FAST_TOP_K)
    result.exact_top = _line("API, EXACT", None, top, labels)
    fitted: tuple[int, int] | None = None
    lists = 0
    for setting in fast_sweep:
        if fitted != (setting.dims, setting.lists):
            lists = await api.refit(collection, dimensions=setting.dims, lists=setting.lists)
            fitted = (setting.dims, setting.lists)
        found = await api.leave_one_out(
            collection,
            swept,
            top_k=FAST_TOP_K,
            mode=FAST,
            probes=setting.probes,
            candidates=setting.candidates,
        )
        result.fast.append(
            FastLine(
                setting=setting,
                lists=lists,
                evaluation=score(found.rankings, labels),
                recall10=_mean_overlap(found, exact, 10),
                recall100=_mean_overlap(found, exact, FAST_TOP_K),
                p50_ms=percentile_ms(found.seconds, 50),
                p95_ms=percentile_ms(found.seconds, 95),
            )
        )
    return result


def _line(name: str, dims: int | None, found: Pass, labels: dict[str, str]) -> Line:
    return Line(
        name,
        dims,
        score(found.rankings, labels),
        percentile_ms(found.seconds, 50),
        percentile_ms(found.seconds, 95),
    )


def _mean_overlap(found: Pass, exact: Pass, k: int) -> float:
    return float(
        np.mean([overlap_at(hits, exact.rankings[q], k) for q, hits in found.rankings.items()])
    )


def _balanced(keys: Sequence[str], labels: Sequence[str], count: int | None) -> list[str]:
    """The first count / classes keys of each class (all keys when count is None)."""
    if count is None or count >= len(keys):
        return list(keys)
    per_class = max(1, count // len(set(labels)))
    taken: dict[str, int] = {}
    chosen = []
    for key, label in zip(keys, labels, strict=True):
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(key)
    return chosen
