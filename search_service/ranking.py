"""EXACT and FAST ranking: candidates from PostgreSQL, exact re-rank in the service.

EXACT walks the rows in ascending order of their lower-bound cube distance (``<->`` in
PostgreSQL) and re-ranks them on their float32 vectors until the next bound exceeds the
k-th best exact distance: no row it skips can place, so the answer is brute force's.
FAST re-ranks only the nearest ``candidates`` of the ``probes`` lists nearest the query.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from search_service.domain import Collection, Hit, Query
from search_service.metrics import SearchMetrics
from search_service.projection import ProjectionVersion
from search_service.store import Store
from search_service.vectors import cutoff, merge, nearest
from service_core.errors import NotFound, Unavailable

# Slack on the lower bound for float64 rounding: cube_distance and the exact distance
# are both float64 on unit vectors, each within ~1e-15 of the real value.
BOUND_MARGIN = 1e-9
# Vectors are read in parts of MIN_PART to MAX_PART rows (8 MiB at 4096-D), up to
# ``parallelism`` parts at a time, so that reads from disk overlap.
MAX_PART = 500
MIN_PART = 25
# EXACT seeds its k-th best distance with this many of FAST's candidates per hit.
SEED_FACTOR = 2
MIN_SEEDS = 32
# EXACT's walk re-ranks this many rows of the bound order per step at first, doubling
# per step: short walks read little more than they need, long ones take few round trips.
FIRST_STEP = 64
MAX_STEP = 8192
# Refits a search may see replace its version before it gives up with UNAVAILABLE.
_STALE_ATTEMPTS = 3


@dataclass
class Work:
    """What one search did, for benchmarks and metrics: rows re-ranked on their vectors."""

    reranked: int = 0
    # EXACT: rows whose lower bound was within the first cut-off (fetched as ids only).
    within_bound: int = 0


class Ranker:
    """Ranks a collection's images against a query, EXACT or FAST."""

    def __init__(
        self,
        store: Store,
        *,
        parallelism: int,
        seed_probes: int,
        metrics: SearchMetrics | None = None,
    ) -> None:
        self._store = store
        self._stage = (metrics or SearchMetrics(CollectorRegistry())).stage
        self._parallelism = parallelism
        # EXACT's first step: FAST's nearest candidates give a k-th best distance.
        self._seed_probes = seed_probes

    async def exact(
        self, collection: Collection, query: Query, work: Work | None = None
    ) -> list[Hit]:
        """The exact nearest hits: those of a brute-force scan, in the same order."""
        work = work or Work()
        with self._stage["exact"].time():
            for _ in range(_STALE_ATTEMPTS):
                hits = await self._exact(collection, query, work)
                if hits is not None:
                    return hits
                # A refit retired the version this search started on: rank on the new one.
                collection = await self._store.collection(collection.name)
        raise Unavailable(
            f"the projection of {collection.name!r} is being replaced; retry",
            reason="PROJECTION_REPLACED",
            metadata={"collection": collection.name},
            retry_after=0.1,
        )

    async def _exact(self, collection: Collection, query: Query, work: Work) -> list[Hit] | None:
        """EXACT on the collection's serving version; None if that version was retired."""
        version = collection.serving_version
        if not version:
            return await self._scan_all(collection, query, work)
        try:
            fitted = await self._store.version(collection, version)
        except NotFound:
            return None
        if not fitted.bounded:
            return await self._scan_all(collection, query, work)
        cube = await asyncio.to_thread(fitted.cubes, query.vector)
        # A few of FAST's candidates are enough for a k-th best distance to bound the
        # scan with; the walk in bound order re-ranks what else can place.
        seeds = max(MIN_SEEDS, SEED_FACTOR * query.keep)
        best, seen = await self._fast(collection, fitted, cube, query, self._seed_probes, seeds)
        work.reranked += len(seen)
        threshold = cutoff(best, query.keep, query.max_distance)
        with self._stage["bound_scan"].time():
            rows = await self._store.within_bound(
                collection, fitted.version, cube, threshold + BOUND_MARGIN, query.metadata_filter
            )
        if rows is None:
            return None
        work.within_bound += len(rows)
        pending = [(r["image_id"], r["bound"]) for r in rows if r["image_id"] not in seen]
        step, start = FIRST_STEP, 0
        while start < len(pending):
            limit = cutoff(best, query.keep, query.max_distance) + BOUND_MARGIN
            stop = start
            while stop < len(pending) and stop - start < step and pending[stop][1] <= limit:
                stop += 1
            if stop == start:  # the next bound is past the k-th best: nothing left can place
                break
            ids = [image_id for image_id, _ in pending[start:stop]]
            work.reranked += len(ids)
            best = merge(best, await self._rerank(ids, query, best), query.keep)
            start, step = stop, min(step * 2, MAX_STEP)
        return best[query.offset :]

    async def fast(
        self,
        collection: Collection,
        version: int,
        query: Query,
        *,
        probes: int,
        candidates: int,
        work: Work | None = None,
    ) -> list[Hit]:
        """The nearest of the ``candidates`` nearest in the ``probes`` nearest lists."""
        with self._stage["fast"].time():
            fitted = await self._store.version(collection, version)
            cube = await asyncio.to_thread(fitted.cubes, query.vector)
            best, seen = await self._fast(collection, fitted, cube, query, probes, candidates)
        if work is not None:
            work.reranked += len(seen)
        return best[query.offset :]

    async def _fast(
        self,
        collection: Collection,
        fitted: ProjectionVersion,
        cube: npt.NDArray[np.float64],
        query: Query,
        probes: int,
        candidates: int,
    ) -> tuple[list[Hit], set[int]]:
        """FAST's hits (the first ``query.keep``) and the ids it re-ranked."""
        lists = fitted.nearest_lists(cube, min(probes, fitted.projection.lists))
        with self._stage["candidates"].time():
            ids = await self._store.list_candidates(
                collection, fitted.version, lists.tolist(), cube, candidates
            )
        return await self._rerank(ids, query, []), set(ids)

    async def _rerank(self, ids: Sequence[int], query: Query, best: list[Hit]) -> list[Hit]:
        """The nearest of rows ``ids`` that can enter ``best``, read in parallel parts.

        Each part is reduced to its nearest ``query.keep`` as it arrives, so memory stays
        at a few parts of vectors whatever the number of ids.
        """
        if not ids:
            return []
        with self._stage["rerank"].time():
            return await self._rerank_parts(ids, query, best)

    async def _rerank_parts(self, ids: Sequence[int], query: Query, best: list[Hit]) -> list[Hit]:
        part_size = min(MAX_PART, max(MIN_PART, -(-len(ids) // self._parallelism)))
        gate = asyncio.Semaphore(self._parallelism)
        cut = cutoff(best, query.keep, math.inf)

        async def part(chunk: Sequence[int]) -> list[Hit]:
            async with gate:
                rows = await self._store.vectors(chunk, query.exclude_key, query.metadata_filter)
            return await asyncio.to_thread(
                nearest,
                rows,
                query.vector,
                keep=query.keep,
                max_distance=query.max_distance,
                cut=cut,
            )

        chunks = [ids[i : i + part_size] for i in range(0, len(ids), part_size)]
        # Every part settles before the search answers, even when one fails.
        outcomes = await asyncio.gather(*(part(c) for c in chunks), return_exceptions=True)
        found: list[Hit] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            found = merge(found, outcome, query.keep)
        return found

    async def _scan_all(self, collection: Collection, query: Query, work: Work) -> list[Hit]:
        """Brute force over every vector, a part at a time: a collection with no bounds."""
        best: list[Hit] = []
        after = 0
        while rows := await self._store.vectors_after(
            collection, after, MAX_PART, query.exclude_key, query.metadata_filter
        ):
            after = rows[-1]["id"]
            work.reranked += len(rows)
            cut = cutoff(best, query.keep, math.inf)
            found = await asyncio.to_thread(
                nearest,
                rows,
                query.vector,
                keep=query.keep,
                max_distance=query.max_distance,
                cut=cut,
            )
            best = merge(best, found, query.keep)
        return best[query.offset :]
