"""Metrics benchmark: what one call's counting costs, and the per-collection refresh query."""

# Usage:
#   python -m benchmarks.bench_metrics [--rows 1000000] [--collections 10]
#
# 1. The server interceptor's metrics work per call (started, received, sent, handled
#    with its latency), timed over 100k calls: median of 5 rounds, per call.
# 2. A scrape of a search service's registry holding --collections collections' gauges.
# 3. The background refresh query (sql.COLLECTION_SUMMARIES) on a throwaway cluster with
#    --rows images spread over --collections collections: rows hold a 16-byte embedding,
#    which weighs in the heap as much as the TOAST pointer of a real one (the count never
#    reads TOAST). Median of 5 runs, before and after VACUUM (which sets the visibility map
#    an index-only scan needs, as autovacuum would).

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import grpc
from prometheus_client import generate_latest

from benchmarks.machine import load_average
from devenv.postgres import LocalPostgres
from search_service import sql
from search_service.domain import CollectionSummary
from search_service.metrics import CollectionCollector, SearchMetrics
from search_service.schema import migrate
from service_core.metrics import Metrics, rpc_type


def say(text: str = "") -> None:
    print(text, flush=True)


def per_call_us(calls: int = 100_000) -> float:
    metrics = Metrics()
    method = metrics.server.method(
        "/imagesearch.search.v1.SearchService/Search",
        rpc_type(request_streams=False, response_streams=False),
    )
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            method.started_total.inc()
            method.received_total.inc()
            method.sent_total.inc()
            method.handled(grpc.StatusCode.OK, 0.001)
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(rounds)


def scrape_ms(collections: int) -> float:
    metrics = Metrics()
    SearchMetrics(metrics.registry)
    gauges = CollectionCollector()
    metrics.registry.register(gauges)
    summaries = [CollectionSummary(f"c{i}", "ready", 1000) for i in range(collections)]

    async def read() -> list[CollectionSummary]:
        return summaries

    asyncio.run(gauges.refresh(read))
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        generate_latest(metrics.registry)
        rounds.append((time.perf_counter() - started) * 1000)
    return statistics.median(rounds)


async def refresh_ms(dsn: str, rows: int, collections: int) -> tuple[float, float]:
    connection = await asyncpg.connect(dsn)
    try:
        await migrate(connection)  # the default collection, id 1; these 2, 3, ...
        for index in range(1, collections):
            await connection.execute(
                "INSERT INTO collections (name) VALUES ($1)", f"collection-{index}"
            )
        await connection.execute(
            """
            INSERT INTO images (collection_id, key, embedding)
            SELECT 1 + g % $2, 'key-' || g, '\\x00112233445566778899aabbccddeeff'::bytea
            FROM generate_series(1, $1) g
            """,
            rows,
            collections,
        )
        await connection.execute("ANALYZE images")

        async def median() -> float:
            times = []
            for _ in range(5):
                started = time.perf_counter()
                await connection.fetch(sql.COLLECTION_SUMMARIES)
                times.append((time.perf_counter() - started) * 1000)
            return statistics.median(times)

        before = await median()
        await connection.execute("VACUUM images")
        return before, await median()
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--collections", type=int, default=10)
    args = parser.parse_args()
    say(f"metrics per call (4 increments and one observation): {per_call_us():.2f} us")
    for count in (10, 1000):
        say(f"scrape of a search registry with {count} collections: {scrape_ms(count):.1f} ms")
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as work:
        Path(work).chmod(0o755)
        cluster = LocalPostgres(Path(work) / "data", durable=False)
        dsn = cluster.start()
        try:
            before, after = asyncio.run(refresh_ms(dsn, args.rows, args.collections))
        finally:
            cluster.stop()
    say(
        f"refresh query, {args.rows} images in {args.collections} collections: "
        f"{before:.0f} ms before VACUUM, {after:.0f} ms after"
    )
    say(f"load average during the run: {load_average()}")


if __name__ == "__main__":
    main()
