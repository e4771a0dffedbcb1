"""Latency and recall figures of a benchmark run: percentiles, recall@k, equal-recall picks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Figures:
    """Latency (ms) over ``count`` queries, and recall@k against the exact answers."""

    label: str
    count: int
    p50_ms: float
    p95_ms: float
    recall: float | None

    def row(self) -> str:
        recall = "     -" if self.recall is None else f"{self.recall:6.3f}"
        return (
            f"  {self.label:<58} {self.count:>4} {self.p50_ms:>9.2f} {self.p95_ms:>9.2f} {recall}"
        )


FIGURES_HEADER = f"  {'':<58} {'q':>4} {'p50 ms':>9} {'p95 ms':>9} {'R@10':>6}"


def recall_at(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]], k: int) -> float:
    """Mean fraction of each query's true top-k that ``found``'s top-k holds."""
    hits = [len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def figures(
    label: str,
    seconds: Sequence[float],
    found: Sequence[Sequence[int]] | None = None,
    truth: Sequence[Sequence[int]] | None = None,
    k: int = 10,
) -> Figures:
    ms = np.asarray(seconds) * 1000.0
    recall = recall_at(found, truth[: len(found)], k) if found is not None and truth else None
    return Figures(
        label, len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), recall
    )


def at_equal_recall(candidates: Sequence[Figures], target: float, slack: float = 0.005) -> Figures:
    """The fastest setting whose recall reaches ``target - slack``, else the best recall."""
    reaching = [f for f in candidates if f.recall is not None and f.recall >= target - slack]
    if reaching:
        return min(reaching, key=lambda f: f.p50_ms)
    return max(candidates, key=lambda f: (f.recall or 0.0, -f.p50_ms))
