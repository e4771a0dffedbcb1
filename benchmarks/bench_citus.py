"""Citus benchmark: one PostgreSQL beside a coordinator and two workers, same data, same run."""

# Usage:
#   python -m benchmarks.bench_citus [--n 200000] [--dim 4096] [--queries 50] [--shards 8]
#
# Two durable local clusters (devenv.postgres, devenv.citus) take the same synthetic
# CNN-like rows through Store.write: the first --prefix rows, then one projection fitted
# on the single node and copied to the coordinator, then the rest with the projection
# live on both (so both hold identical list entries and FAST answers the same). It
# prints per backend: ingest rows/s, EXACT and FAST (service defaults) p50 and FAST's
# recall@10 against EXACT (EXACT is brute force, tests/search/test_exact.py), whether the
# two backends' hits are identical; then the cost model's inputs (docs/scaling.md): the
# candidate stage's time against the rows it scans, and the coordinator's fixed
# fan-out-and-merge cost against the shard count (empty tables of 1-64 shards).

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from devenv.citus import LocalCitus
from devenv.postgres import LocalPostgres
from devenv.synthetic import cnn_like_vectors, iter_cnn_like_vectors
from search_service import sql
from search_service.db import init_connection
from search_service.domain import Hit, ModelKey, NewImage, Query
from search_service.projection import default_lists
from search_service.ranking import Ranker
from search_service.refit import Refitter
from search_service.schema import migrate
from search_service.settings import SearchSettings
from search_service.store import Store
from search_service.vectors import unit

K = 10
QUERY_START = 50_000_000  # held-out queries: far past any stored row
WARMUP = 5
FANOUT_SHARDS = (1, 2, 4, 8, 16, 32, 64)
FANOUT_REPEATS = 200
PROBE_STEPS = (4, 16, 64, 256)


@dataclass
class Side:
    """One backend under test."""

    name: str
    pool: asyncpg.Pool
    store: Store
    ranker: Ranker
    refitter: Refitter
    ingest_s: float = 0.0
    ingested: int = 0


def say(text: str = "") -> None:
    print(text, flush=True)


def p50_ms(timings: Sequence[float]) -> float:
    return 1000 * statistics.median(timings)


async def timed(call: Callable[[], Awaitable[Any]], repeats: int) -> list[float]:
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        await call()
        timings.append(time.perf_counter() - began)
    return timings


async def open_side(name: str, dsn: str, settings: SearchSettings) -> Side:
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=settings.pool_max_size, init=init_connection
    )
    async with pool.acquire() as connection:
        await migrate(connection)
        distributed: bool = await connection.fetchval(sql.DISTRIBUTED)
    store = Store(pool, distributed=distributed)
    ranker = Ranker(
        store,
        parallelism=min(settings.rerank_parallelism, settings.pool_max_size),
        seed_probes=settings.default_probes,
    )
    refitter = Refitter(
        store,
        dimensions=settings.projection_dimensions,
        sample=settings.projection_sample,
        memory_bytes=settings.fit_memory_bytes,
    )
    return Side(name, pool, store, ranker, refitter)


async def ingest(side: Side, options: argparse.Namespace, start: int, stop: int) -> None:
    model = ModelKey("synthetic-cnn", "v1", options.dim)
    collection = await side.store.collection("")
    for chunk in iter_cnn_like_vectors(stop - start, options.dim, batch=500, start=start):
        images = [NewImage(f"r{start + j}", None, {}, chunk[j]) for j in range(len(chunk))]
        began = time.perf_counter()
        await side.store.write(collection, model, images)
        side.ingest_s += time.perf_counter() - began
        side.ingested += len(chunk)
        start += len(chunk)


async def copy_projection(source: Side, target: Side) -> None:
    """The single node's fitted projection, published on the coordinator before its rows."""
    row = await source.pool.fetchrow("SELECT * FROM projections WHERE state = 'ready'")
    assert row is not None
    await target.pool.execute(
        "WITH p AS (INSERT INTO projections (collection_id, version, state, dimensions, lists,"
        " fitted_on, model, bounded) VALUES (1, $1, 'ready', $2, $3, $4, $5, $6))"
        " UPDATE collections SET serving_version = $1 WHERE id = 1",
        *(row[c] for c in ("version", "dimensions", "lists", "fitted_on", "model", "bounded")),
    )


async def searches(
    side: Side, queries: np.ndarray, settings: SearchSettings
) -> dict[str, tuple[list[float], list[list[Hit]]]]:
    collection = await side.store.collection("")
    assert collection.serving_version is not None
    version = collection.serving_version

    async def exact(query: Query) -> list[Hit]:
        return await side.ranker.exact(collection, query)

    async def fast(query: Query) -> list[Hit]:
        return await side.ranker.fast(
            collection,
            version,
            query,
            probes=settings.default_probes,
            candidates=settings.default_candidates,
        )

    out: dict[str, tuple[list[float], list[list[Hit]]]] = {}
    for mode, search in (("EXACT", exact), ("FAST", fast)):
        for vector in queries[:WARMUP]:
            await search(Query(vector=unit(vector), limit=K))
        timings, found = [], []
        for vector in queries[WARMUP:]:
            began = time.perf_counter()
            found.append(await search(Query(vector=unit(vector), limit=K)))
            timings.append(time.perf_counter() - began)
        out[mode] = (timings, found)
    return out


def line(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) through ``points``."""
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def recall(found: Sequence[Sequence[Hit]], truth: Sequence[Sequence[Hit]]) -> float:
    hits = sum(
        len({h.key for h in f} & {h.key for h in t}) for f, t in zip(found, truth, strict=True)
    )
    return hits / sum(len(t) for t in truth)


async def candidate_costs(side: Side, queries: np.ndarray) -> list[tuple[int, float]]:
    """(rows scanned, p50 ms) of the candidate stage at growing numbers of probed lists."""
    collection = await side.store.collection("")
    assert collection.serving_version is not None
    fitted = await side.store.version(collection, collection.serving_version)
    out = []
    for probes in PROBE_STEPS:
        probes = min(probes, fitted.projection.lists)
        scanned, timings = [], []
        for vector in queries:
            cube = fitted.cubes(unit(vector))
            lists = fitted.nearest_lists(cube, probes).tolist()
            scanned.append(
                await side.pool.fetchval(
                    "SELECT count(*) FROM image_lists WHERE collection_id = 1 AND version = $1"
                    " AND list_id = ANY($2::int[])",
                    fitted.version,
                    lists,
                )
            )
            began = time.perf_counter()
            await side.store.list_candidates(collection, fitted.version, lists, cube, 100)
            timings.append(time.perf_counter() - began)
        out.append((int(statistics.median(scanned)), p50_ms(timings)))
    return out


async def fanout_costs(coordinator_dsn: str, single_dsn: str) -> list[tuple[int, float]]:
    """p50 ms of the candidate query on an empty table of N shards (0: the single node)."""
    cube = [0.0] * 100
    statement = (
        "SELECT image_id FROM {t} WHERE collection_id = 1 AND version = 1"
        " AND list_id = ANY($1::int[]) ORDER BY coarse <-> cube($2::float8[]) LIMIT 100"
    )
    out = []
    single = await asyncpg.connect(single_dsn)
    try:
        await single.execute("CREATE TABLE fanout_0 (LIKE image_lists)")
        query = statement.format(t="fanout_0")
        timings = await timed(lambda: single.fetch(query, [1, 2], cube), FANOUT_REPEATS)
        out.append((0, p50_ms(timings)))
        await single.execute("DROP TABLE fanout_0")
    finally:
        await single.close()
    coordinator = await asyncpg.connect(coordinator_dsn)
    try:
        for shards in FANOUT_SHARDS:
            table = f"fanout_{shards}"
            await coordinator.execute(f"CREATE TABLE {table} (LIKE image_lists)")
            await coordinator.execute(
                f"SELECT create_distributed_table('{table}', 'image_id', shard_count => {shards},"
                " colocate_with => 'none')"
            )
            query = statement.format(t=table)

            def probe(query: str = query) -> Awaitable[Any]:
                return coordinator.fetch(query, [1, 2], cube)

            await timed(probe, WARMUP)
            timings = await timed(probe, FANOUT_REPEATS)
            out.append((shards, p50_ms(timings)))
            await coordinator.execute(f"DROP TABLE {table}")
    finally:
        await coordinator.close()
    return out


def prepare(options: argparse.Namespace) -> Path:
    # Under /tmp by default: the unprivileged user that runs PostgreSQL under root must
    # reach it.
    work = Path(tempfile.mkdtemp(prefix="bench-citus-", dir=options.work))
    work.chmod(0o755)
    return work


async def main_async(options: argparse.Namespace, work: Path) -> None:
    settings = SearchSettings(database_url="postgresql://unused", extractor_address="unused:1")
    single_cluster = LocalPostgres(work / "single")
    citus_cluster = LocalCitus(work / "citus")
    try:
        single_dsn = single_cluster.start()
        coordinator_dsn = citus_cluster.start()
        citus_cluster.coordinator.psql(
            f"ALTER DATABASE imagesearch SET citus.shard_count = {options.shards}"
        )
        single = await open_side("single node", single_dsn, settings)
        spread = await open_side(
            f"Citus, 2 workers, {options.shards} shards", coordinator_dsn, settings
        )
        sides = [single, spread]
        prefix = min(options.prefix, options.n)
        say(f"# {options.n} rows x {options.dim}-D, {options.queries} queries (+{WARMUP} warm-up)")
        await ingest(single, options, 0, prefix)
        collection = await single.store.collection("")
        began = time.perf_counter()
        await single.refitter.refit(
            collection, dimensions=settings.projection_dimensions, lists=default_lists(options.n)
        )
        say(f"projection fitted on the first {prefix} rows: {time.perf_counter() - began:.1f} s")
        await copy_projection(single, spread)
        await ingest(spread, options, 0, prefix)
        # Timed from here: both backends write the same rows, each with its list entries.
        for side in sides:
            side.ingest_s, side.ingested = 0.0, 0
            await ingest(side, options, prefix, options.n)
            await side.pool.execute("ANALYZE")
        queries = cnn_like_vectors(options.queries + WARMUP, options.dim, start=QUERY_START)
        results = {side.name: await searches(side, queries, settings) for side in sides}
        say()
        say("| backend | ingest rows/s | EXACT p50 ms | FAST p50 ms | FAST recall@10 vs EXACT |")
        say("|---|---|---|---|---|")
        for side in sides:
            exact_t, exact_hits = results[side.name]["EXACT"]
            fast_t, fast_hits = results[side.name]["FAST"]
            say(
                f"| {side.name} | {side.ingested / side.ingest_s:,.0f} | {p50_ms(exact_t):.1f} |"
                f" {p50_ms(fast_t):.1f} | {recall(fast_hits, exact_hits):.3f} |"
            )
        for mode in ("EXACT", "FAST"):
            a = results[single.name][mode][1]
            b = results[spread.name][mode][1]
            same = all(
                [(h.key, h.distance) for h in x] == [(h.key, h.distance) for h in y]
                for x, y in zip(a, b, strict=True)
            )
            say(f"{mode}: hits and distances identical on both backends: {same}")
        say()
        say("candidate stage (FAST_CANDIDATES, LIMIT 100): rows scanned -> p50 ms")
        for side in sides:
            costs = await candidate_costs(side, queries[WARMUP:])
            say(f"  {side.name}: " + ", ".join(f"{rows} -> {ms:.2f}" for rows, ms in costs))
            slope, intercept = line(costs)
            say(f"    least squares: {intercept:.2f} ms + {1000 * slope:.2f} us per row scanned")
        say()
        say("fan-out and merge on empty tables: shards -> p50 ms (0 = the single node)")
        fanout = await fanout_costs(coordinator_dsn, single_dsn)
        say("  " + ", ".join(f"{shards} -> {ms:.2f}" for shards, ms in fanout))
        slope, intercept = line(fanout[1:])
        say(f"    least squares: {intercept:.2f} ms + {slope:.3f} ms per shard")
        for side in sides:
            await side.pool.close()
    finally:
        single_cluster.stop()
        citus_cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="rows stored")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--prefix", type=int, default=20_000, help="rows the fit sees")
    parser.add_argument("--shards", type=int, default=8, help="citus.shard_count")
    parser.add_argument("--work", type=Path, default=None, help="where the clusters live")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    asyncio.run(main_async(options, prepare(options)))


if __name__ == "__main__":
    main()
