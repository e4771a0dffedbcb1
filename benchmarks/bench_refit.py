"""Refit benchmark: a projection fit's time and the search service's peak memory, by dimension."""

# Usage:
#   python -m benchmarks.bench_refit [--dims 4096,16384] [--rows 20000]
#
# For each dimension: a durable cluster, a search_service subprocess (no auto-fit), --rows
# synthetic CNN-like vectors stored through IngestStream, then RefitProjection through
# gRPC. It prints the fit's wall time, the service's RSS before, and its peak RSS during
# the fit (VmHWM, reset just before the call), beside the sample the fit held.

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from benchmarks.machine import load_average, rss_mib
from benchmarks.search_server import start_server
from devenv.postgres import LocalPostgres, free_port
from devenv.stack import stop_all, wait_serving
from devenv.synthetic import iter_cnn_like_vectors
from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from search_service.settings import SearchSettings


def say(text: str = "") -> None:
    print(text, flush=True)


def requests(rows: int, dim: int) -> Iterator[search_pb2.IngestStreamRequest]:
    model = search_pb2.Model(name="synthetic-cnn", version="v1", dimension=dim)
    done = 0
    for chunk in iter_cnn_like_vectors(rows, dim, batch=max(1, 4_000_000 // dim)):
        items = [
            search_pb2.IngestItem(
                key=f"r{done + j}",
                embedding=search_pb2.PrecomputedEmbedding(
                    vector=search_pb2.Vector(values=row.tolist()), model=model
                ),
            )
            for j, row in enumerate(chunk)
        ]
        done += len(chunk)
        yield search_pb2.IngestStreamRequest(items=items)


def fresh_directory(work: Path) -> None:
    """Empty, and enterable by the postgres user (the cluster runs as it under root)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o755)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to VmRSS


async def measure(dim: int, options: argparse.Namespace) -> None:
    work: Path = options.data_dir / f"d{dim}"
    fresh_directory(work)
    cluster = LocalPostgres(work / "pg", durable=True)
    dsn = cluster.start()
    port = free_port()
    log = (work / "search_service.log").open("wb")
    server = start_server(dsn, port, log)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 256 << 20)]
    )
    try:
        await wait_serving(channel, server)
        stub = search_pb2_grpc.SearchServiceStub(channel)
        began = time.perf_counter()
        async for _ in stub.IngestStream(requests(options.rows, dim)):
            pass
        ingest_s = time.perf_counter() - began
        before, _ = rss_mib(server.pid)
        reset_peak(server.pid)
        began = time.perf_counter()
        response = await stub.RefitProjection(search_pb2.RefitProjectionRequest())
        fit_s = time.perf_counter() - began
        _, peak = rss_mib(server.pid)
        settings = SearchSettings()
        sample = min(options.rows, settings.projection_sample)
        sample = min(sample, settings.fit_memory_bytes // (4 * dim))
        say(
            f"{dim:>6}-D  {options.rows:>7,} rows (ingest {options.rows / ingest_s:,.0f}/s)  "
            f"refit {fit_s:6.1f} s  {response.projection.dimensions}-D, "
            f"{response.projection.lists} lists  sample {sample:,} rows = "
            f"{sample * dim * 4 / 2**20:,.0f} MiB  RSS before {before:,.0f} MiB, peak during "
            f"the fit {peak:,.0f} MiB (+{peak - before:,.0f})"
        )
    finally:
        await channel.close(None)
        stop_all([server])
        log.close()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


async def main_async(options: argparse.Namespace) -> None:
    say(f"load average {load_average()} at start (a shared machine: expect noise)")
    for dim in options.dims:
        await measure(dim, options)
    say(f"load average {load_average()} at end")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dims", default="4096,16384", help="comma-separated dimensions")
    parser.add_argument("--rows", type=int, default=20_000, help="vectors stored before the fit")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "imagesearch-refit"
    )
    options = parser.parse_args(argv)
    options.dims = [int(d) for d in options.dims.split(",") if d]
    return options


if __name__ == "__main__":
    asyncio.run(main_async(parse()))
