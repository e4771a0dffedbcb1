"""Retrieval metrics of leave-one-out rankings: average precision, precision@k, recall@k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def average_precision(relevant: Sequence[bool], total: int) -> float:
    """Mean of precision@rank over the ranks of the relevant hits, divided by ``total``.

    ``relevant`` is the ranking, nearest first, truncated at any depth; ``total`` is how
    many relevant items the collection holds. A truncated ranking counts every relevant
    item it misses as found at no rank (precision 0), so AP@depth <= full AP.
    """
    if total <= 0:
        return 0.0
    ranks = np.flatnonzero(np.asarray(relevant, dtype=bool)) + 1
    found = np.arange(1, ranks.size + 1)
    return float((found / ranks).sum() / total)


def precision_at(relevant: Sequence[bool], k: int) -> float:
    """Relevant hits among the first ``k``, over ``k`` (a ranking shorter than k counts misses)."""
    return float(np.count_nonzero(np.asarray(relevant[:k], dtype=bool)) / k)


def recall_at(relevant: Sequence[bool], k: int, total: int) -> float:
    """Relevant hits among the first ``k``, over all ``total`` relevant items."""
    if total <= 0:
        return 0.0
    return float(np.count_nonzero(np.asarray(relevant[:k], dtype=bool)) / total)


def overlap_at(found: Sequence[str], reference: Sequence[str], k: int) -> float:
    """Share of the reference's first ``k`` hits that ``found``'s first ``k`` hold (ANN recall)."""
    expected = set(reference[:k])
    if not expected:
        return 1.0
    return len(expected.intersection(found[:k])) / len(expected)


@dataclass(frozen=True)
class Scores:
    """The four figures, averaged over a set of queries."""

    map: float
    p1: float
    p10: float
    r10: float
    queries: int


@dataclass(frozen=True)
class Evaluation:
    """Scores over every query and per class of the query."""

    overall: Scores
    by_class: dict[str, Scores]


def score(rankings: Mapping[str, Sequence[str]], labels: Mapping[str, str]) -> Evaluation:
    """Scores leave-one-out rankings: query key -> ranked hit keys (the query itself absent).

    An item is relevant when it has the query's label; each query's total is its class size
    in ``labels`` minus itself. Overall figures average over queries, not classes.
    """
    sizes: dict[str, int] = {}
    for label in labels.values():
        sizes[label] = sizes.get(label, 0) + 1
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for query, hits in rankings.items():
        label = labels[query]
        relevant = [labels[hit] == label for hit in hits]
        total = sizes[label] - 1
        rows.setdefault(label, []).append(
            (
                average_precision(relevant, total),
                precision_at(relevant, 1),
                precision_at(relevant, 10),
                recall_at(relevant, 10, total),
            )
        )
    by_class = {label: _mean(rows[label]) for label in sorted(rows, key=list(sizes).index)}
    return Evaluation(_mean([row for group in rows.values() for row in group]), by_class)


def _mean(rows: Sequence[tuple[float, float, float, float]]) -> Scores:
    if not rows:
        return Scores(0.0, 0.0, 0.0, 0.0, 0)
    ap, p1, p10, r10 = (float(v) for v in np.asarray(rows, dtype=np.float64).mean(axis=0))
    return Scores(ap, p1, p10, r10, queries=len(rows))


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The q-th percentile of latencies given in seconds, in milliseconds."""
    if not seconds:
        return float("nan")
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q) * 1000)
