"""Ingest benchmark: embeddings/s through IngestStream, beside Store.write, durable cluster."""

# Usage:
#   python -m benchmarks.bench_ingest [--n 20000] [--dims 4096,1280] [--concurrency 1,2]
#
# One durable PostgreSQL cluster (fsync on, synchronous_commit on). For each dimension it
# measures, in the same run and on the same synthetic CNN-like vectors:
#   - Store.write in this process, one batch of --batch rows per transaction, one writer:
#     the database's share of the cost with no gRPC in the way;
#   - IngestStream on a search_service subprocess, precomputed embeddings, for each
#     SEARCH_INGEST_CONCURRENCY in --concurrency (batches of SEARCH_STREAM_BATCH_ITEMS).
# Each figure is the median of --repeats runs, each into a fresh collection, timed from
# the first request sent to the last result received (requests are built beforehand).

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import grpc
import numpy as np

from benchmarks.machine import load_average
from benchmarks.search_server import start_server
from devenv.postgres import LocalPostgres, free_port
from devenv.stack import SearchStub, stop_all, wait_serving
from devenv.synthetic import cnn_like_vectors
from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from search_service.db import init_connection
from search_service.domain import ModelKey, NewImage
from search_service.schema import migrate
from search_service.store import Store

MODEL = "synthetic-cnn"


def say(text: str = "") -> None:
    print(text, flush=True)


async def store_write_rate(
    store: Store, vectors: np.ndarray, batch: int, collection_name: str
) -> float:
    model = ModelKey(MODEL, "v1", vectors.shape[1])
    collection = await store.create_collection(collection_name, model, max_collections=10**6)
    began = time.perf_counter()
    for start in range(0, len(vectors), batch):
        rows = vectors[start : start + batch]
        images = [NewImage(f"r{start + j}", None, {}, row) for j, row in enumerate(rows)]
        await store.write(collection, model, images)
    return len(vectors) / (time.perf_counter() - began)


def stream_requests(
    vectors: np.ndarray, collection: str, per_message: int
) -> list[search_pb2.IngestStreamRequest]:
    model = search_pb2.Model(name=MODEL, version="v1", dimension=vectors.shape[1])
    items = [
        search_pb2.IngestItem(
            key=f"r{i}",
            embedding=search_pb2.PrecomputedEmbedding(
                vector=search_pb2.Vector(values=row.tolist()), model=model
            ),
        )
        for i, row in enumerate(vectors)
    ]
    return [
        search_pb2.IngestStreamRequest(collection=collection, items=items[i : i + per_message])
        for i in range(0, len(items), per_message)
    ]


async def stream_rate(stub: SearchStub, requests: list[search_pb2.IngestStreamRequest]) -> float:
    collection = requests[0].collection
    await stub.CreateCollection(search_pb2.CreateCollectionRequest(name=collection))
    began = time.perf_counter()
    created = 0
    async for response in stub.IngestStream(iter(requests)):
        created += sum(r.status == search_pb2.INGEST_STATUS_CREATED for r in response.results)
    seconds = time.perf_counter() - began
    sent = sum(len(r.items) for r in requests)
    if created != sent:
        raise RuntimeError(f"only {created} of {sent} items were created")
    return sent / seconds


async def measure_service(
    dsn: str,
    work: Path,
    vectors: np.ndarray,
    concurrency: int,
    options: argparse.Namespace,
    tag: str,
) -> list[float]:
    port = free_port()
    with (work / f"search_service-{tag}.log").open("wb") as log:
        server = start_server(
            dsn,
            port,
            log,
            ingest_concurrency=str(concurrency),
            stream_batch_items=str(options.stream_batch),
        )
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        try:
            await wait_serving(channel, server)
            stub = search_pb2_grpc.SearchServiceStub(channel)
            rates = []
            for repeat in range(options.repeats):
                requests = stream_requests(vectors, f"{tag}-{repeat}", options.per_message)
                rates.append(await stream_rate(stub, requests))
            return rates
        finally:
            await channel.close(None)
            stop_all([server])


async def main_async(options: argparse.Namespace) -> None:
    work: Path = options.data_dir
    cluster = LocalPostgres(work / "cluster", durable=True)
    try:
        dsn = cluster.start()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init_connection)
        async with pool.acquire() as connection:
            await migrate(connection)
        store = Store(pool)
        say(f"load average {load_average()} at start (a shared machine: expect noise)")
        say(
            f"cluster PostgreSQL {cluster.psql('SHOW server_version')}, fsync on, "
            "synchronous_commit on, default shared_buffers and max_wal_size"
        )
        say(
            f"each figure: median of {options.repeats} runs of {options.n:,} precomputed "
            f"embeddings into a fresh collection; Store.write in batches of {options.batch}, "
            f"IngestStream with {options.per_message} items per message, written in batches "
            f"of {options.stream_batch}"
        )
        say(f"{'dimension':>9}  {'path':<44}{'rows/s (median)':>16}  runs")
        for dim in options.dims:
            vectors = cnn_like_vectors(options.n, dim)
            direct = [
                await store_write_rate(store, vectors, options.batch, f"direct-{dim}-{r}")
                for r in range(options.repeats)
            ]
            say(row(dim, "Store.write, one writer (no gRPC)", direct))
            for concurrency in options.concurrency:
                tag = f"grpc-{dim}-c{concurrency}"
                rates = await measure_service(dsn, work, vectors, concurrency, options, tag)
                say(row(dim, f"IngestStream, SEARCH_INGEST_CONCURRENCY={concurrency}", rates))
        await pool.close()
        say(f"load average {load_average()} at end")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def row(dim: int, path: str, rates: Sequence[float]) -> str:
    runs = " ".join(f"{r:,.0f}" for r in rates)
    return f"{dim:>9}  {path:<44}{statistics.median(rates):>16,.0f}  {runs}"


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="embeddings per run")
    parser.add_argument("--dims", default="4096,1280", help="VGG16 fc7 and Lite0 widths")
    parser.add_argument("--concurrency", default="1,2", help="SEARCH_INGEST_CONCURRENCY values")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure")
    parser.add_argument("--batch", type=int, default=500, help="rows per Store.write")
    parser.add_argument("--stream-batch", type=int, default=256, help="SEARCH_STREAM_BATCH_ITEMS")
    parser.add_argument("--per-message", type=int, default=100, help="items per stream message")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "imagesearch-bench-ingest",
        help="the cluster goes here",
    )
    options = parser.parse_args(argv)
    options.dims = [int(d) for d in options.dims.split(",") if d]
    options.concurrency = [int(c) for c in options.concurrency.split(",") if c]
    return options


def main() -> None:
    options = parse()
    shutil.rmtree(options.data_dir, ignore_errors=True)
    options.data_dir.mkdir(parents=True)
    options.data_dir.chmod(0o755)  # the cluster runs as the postgres user under root
    asyncio.run(main_async(options))


if __name__ == "__main__":
    main()
