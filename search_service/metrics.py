"""The search service's own metrics: query stages, ingest, the pool, each collection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Literal

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from imagesearch.search.v1 import search_pb2
from search_service.domain import CollectionSummary
from service_core.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

Stage = Literal["exact", "fast", "candidates", "bound_scan", "rerank", "ingest_write"]
STAGES: tuple[Stage, ...] = ("exact", "fast", "candidates", "bound_scan", "rerank", "ingest_write")
# search_pb2.IngestStatus values -> the status label.
_STATUSES = {
    search_pb2.INGEST_STATUS_CREATED: "created",
    search_pb2.INGEST_STATUS_UPDATED: "updated",
    search_pb2.INGEST_STATUS_UNCHANGED: "unchanged",
    search_pb2.INGEST_STATUS_FAILED: "failed",
}
# ProjectionState names, lower case, as the proto's enum has them.
PROJECTION_STATES = ("none", "building", "ready")


class SearchMetrics:
    """Query-stage times and ingest outcomes; every label child is looked up once, here."""

    def __init__(self, registry: CollectorRegistry) -> None:
        seconds = Histogram(
            "search_query_seconds",
            "Seconds per stage: exact and fast are whole rankings; candidates, bound_scan "
            "and rerank their parts (rerank once per round, EXACT may take several); "
            "ingest_write one ingest transaction.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage: dict[Stage, Histogram] = {s: seconds.labels(s) for s in STAGES}
        items = Counter(
            "search_ingested_items",
            "Ingest items answered, by status (each item of Ingest and IngestStream once).",
            ["status"],
            registry=registry,
        )
        self._items = {status: items.labels(name) for status, name in _STATUSES.items()}

    def answered(
        self, results: Sequence[search_pb2.IngestResult]
    ) -> Sequence[search_pb2.IngestResult]:
        """Counts ``results`` by status and returns them."""
        for result in results:
            counter = self._items.get(result.status)
            if counter is not None:
                counter.inc()
        return results


class PoolCollector(Collector):
    """The asyncpg pool's connections, read when Prometheus scrapes: nothing to keep in step.

    Runs on the scrape thread; it reads a few integers of the pool, which the event loop
    may be changing meanwhile, so one scrape may be a connection off, never wrong for long.
    """

    def __init__(self, pool: Callable[[], asyncpg.Pool | None], max_size: int) -> None:
        self._pool = pool
        self._max_size = max_size

    def collect(self) -> Iterable[Metric]:
        pool = self._pool()
        size = pool.get_size() if pool is not None else 0
        idle = pool.get_idle_size() if pool is not None else 0
        connections = GaugeMetricFamily(
            "search_db_pool_connections",
            "Open connections of the database pool, by state (in_use: lent to a query).",
            labels=["state"],
        )
        connections.add_metric(["in_use"], size - idle)
        connections.add_metric(["idle"], idle)
        yield connections
        yield GaugeMetricFamily(
            "search_db_pool_max_connections",
            "Most connections the pool opens (SEARCH_POOL_MAX_SIZE).",
            value=pool.get_max_size() if pool is not None else self._max_size,
        )


class CollectionCollector(Collector):
    """Per-collection gauges from a snapshot that a background task refreshes.

    A scrape only reads the snapshot: counting a large collection's images is a scan,
    which must not run each time Prometheus asks (every replica, every 15-30 s).
    """

    def __init__(self) -> None:
        self._snapshot: Sequence[CollectionSummary] = ()

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot  # one consistent list, whatever the refresh does meanwhile
        states = GaugeMetricFamily(
            "search_projection_state",
            "1 for the projection state a collection is in (none, building, ready), else 0.",
            labels=["collection", "state"],
        )
        images = GaugeMetricFamily(
            "search_collection_images",
            "Images stored in a collection, as of the last refresh (SEARCH_METRICS_REFRESH_S).",
            labels=["collection"],
        )
        for summary in snapshot:
            for state in PROJECTION_STATES:
                states.add_metric([summary.name, state], 1.0 if state == summary.state else 0.0)
            images.add_metric([summary.name], summary.images)
        yield states
        yield images

    async def refresh(self, read: Callable[[], Awaitable[Sequence[CollectionSummary]]]) -> None:
        """Replaces the snapshot with what ``read`` returns."""
        self._snapshot = tuple(await read())

    async def keep_fresh(
        self, read: Callable[[], Awaitable[Sequence[CollectionSummary]]], interval_s: float
    ) -> None:
        """Refreshes the snapshot every ``interval_s``, until cancelled.

        Waits at least 20 times as long as the last read took, so that counting a very
        large database never holds a connection more than 5% of the time. A failed read
        keeps the last snapshot: the gauges go stale until the database answers again.
        """
        while True:
            started = time.perf_counter()
            try:
                await self.refresh(read)
            except Exception as error:  # noqa: BLE001 - logged; the next round retries
                log.warning("collection metrics not refreshed: %s", error)
            took = time.perf_counter() - started
            await asyncio.sleep(max(interval_s, 20 * took))
