"""Load benchmark: both services under many concurrent callers, shedding instead of queueing."""

# Usage:
#   python benchmarks/bench_load.py [--callers 64,256] [--seconds 20] [--model-dir DIR]
#
# Loopback only: a throwaway PostgreSQL cluster, `python -m extractor_service` and
# `python -m search_service` as subprocesses with their default settings, and one client
# process. For each --callers count, that many callers loop for --seconds (and at most
# --max-calls calls in all), each call with a 10 s deadline, over a mix of
#   - Search by key        (PostgreSQL only)          60 %
#   - Search by image      (extractor, PostgreSQL)    25 %
#   - Ingest of 1 photo    (extractor, PostgreSQL)    10 %
#   - Ingest of 8 12-MP JPEGs, ~20 MB in one request   5 %
# A caller answered RESOURCE_EXHAUSTED waits 50 ms before its next call, as a client
# with backoff would. Printed per count: calls/s answered OK, p50/p99 of OK calls, the
# count of each status, the peak RSS (VmHWM) of both services; then, right after the
# load stops, the status and latency of one call of each kind (recovery).

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from benchmarks.machine import load_average, rss_mib  # noqa: E402
from devenv.photos import available_photos, large_jpeg, photo_bytes  # noqa: E402
from devenv.postgres import LocalPostgres, free_port  # noqa: E402
from devenv.stack import wait_serving  # noqa: E402
from imagesearch.search.v1 import search_pb2, search_pb2_grpc  # noqa: E402

COLLECTION = "load"
DEADLINE_S = 10.0
CALLERS_PER_CHANNEL = 8  # callers are separate clients, not one connection's streams
RNG = np.random.default_rng(0)


def say(text: str = "") -> None:
    print(text, flush=True)


def workdir() -> Path:
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    work.chmod(0o755)  # the cluster runs as the postgres user under root
    return work


def model_dir(given: Path | None, work: Path) -> Path:
    if given is not None:
        return given
    default = ROOT / "models" / "default"
    if (default / "model.onnx").exists():
        return default
    from extractor_service.export import lite0
    from extractor_service.export.onnx_export import export_model

    out = work / "lite0"
    export_model(lite0.lite0(), out)
    return out


def start(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=os.environ | env, stdout=sink, stderr=sink
        )


class Mix:
    """The requests the callers send, built once."""

    def __init__(self, keys: list[str]) -> None:
        names = available_photos()
        self.keys = keys
        self.photos = [photo_bytes(n) for n in names]
        big = [large_jpeg(n) for n in names[:8]]
        self.big = search_pb2.IngestRequest(
            collection=COLLECTION,
            items=[search_pb2.IngestItem(key=f"big-{i}", image=data) for i, data in enumerate(big)],
        )
        self.serial = 0

    def call(self, stub: search_pb2_grpc.SearchServiceStub, kind: str) -> object:
        if kind == "search_key":
            request = search_pb2.SearchRequest(collection=COLLECTION, key=pick(self.keys), top_k=10)
            return stub.Search(request, timeout=DEADLINE_S)
        if kind == "search_image":
            request = search_pb2.SearchRequest(
                collection=COLLECTION, image=pick(self.photos), top_k=10
            )
            return stub.Search(request, timeout=DEADLINE_S)
        if kind == "ingest":
            self.serial += 1
            item = search_pb2.IngestItem(key=f"new-{self.serial}", image=pick(self.photos))
            return stub.Ingest(
                search_pb2.IngestRequest(collection=COLLECTION, items=[item]), timeout=DEADLINE_S
            )
        return stub.Ingest(self.big, timeout=DEADLINE_S)


KINDS = ["search_key", "search_image", "ingest", "ingest_big"]
SHARES = [0.60, 0.25, 0.10, 0.05]


def pick(choices: list[Any]) -> Any:
    return choices[int(RNG.integers(len(choices)))]


async def timed(mix: Mix, stub: search_pb2_grpc.SearchServiceStub, kind: str) -> tuple[str, float]:
    began = time.perf_counter()
    try:
        await mix.call(stub, kind)  # type: ignore[misc]
        code = "OK"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    return code, time.perf_counter() - began


async def run_load(
    mix: Mix,
    stub: search_pb2_grpc.SearchServiceStub,
    target: str,
    callers: int,
    seconds: float,
    max_calls: int,
    pids: dict[str, int],
) -> None:
    codes: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    calls = 0

    channels = [
        grpc.aio.insecure_channel(target, [("grpc.max_send_message_length", 64 << 20)])
        for _ in range(0, callers, CALLERS_PER_CHANNEL)
    ]
    stubs = [search_pb2_grpc.SearchServiceStub(c) for c in channels]

    async def caller(index: int) -> None:
        nonlocal calls
        while time.perf_counter() < stop_at and calls < max_calls:
            calls += 1
            kind = KINDS[int(RNG.choice(len(KINDS), p=SHARES))]
            code, took = await timed(mix, stubs[index // CALLERS_PER_CHANNEL], kind)
            codes[code] += 1
            if code == "OK":
                latencies.append(took)
            elif code == "RESOURCE_EXHAUSTED":
                await asyncio.sleep(0.05)

    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    wall = time.perf_counter() - began
    for channel in channels:
        await channel.close(None)
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    say(
        f"callers {callers:4d}: {len(latencies) / wall:6.1f} OK calls/s over {wall:.1f} s, "
        f"p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms"
    )
    say("  statuses: " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())))
    say(
        "  peak RSS: "
        + ", ".join(f"{name} {rss_mib(pid)[1]:.0f} MiB" for name, pid in pids.items())
        + f"; load average {load_average()}"
    )
    recovery = []
    for kind in KINDS:
        code, took = await timed(mix, stub, kind)
        recovery.append(f"{kind} {code} {took * 1000:.0f} ms")
    say("  right after: " + ", ".join(recovery))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--callers", default="64,256")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-calls", type=int, default=20_000)
    parser.add_argument("--model-dir", type=Path)
    options = parser.parse_args()
    work = workdir()
    processes: list[subprocess.Popen[bytes]] = []
    cluster = LocalPostgres(work / "cluster", durable=False)
    try:
        dsn = cluster.start()
        extractor_port, search_port = free_port(), free_port()
        common = {"GRPC_VERBOSITY": "ERROR"}
        extractor = start(
            "extractor_service",
            common
            | {
                "EXTRACTOR_PORT": str(extractor_port),
                "EXTRACTOR_MODEL_DIR": str(model_dir(options.model_dir, work)),
                "EXTRACTOR_LOG_LEVEL": "WARNING",
            },
            work / "extractor.log",
        )
        search = start(
            "search_service",
            common
            | {
                "SEARCH_PORT": str(search_port),
                "SEARCH_DATABASE_URL": dsn,
                "SEARCH_EXTRACTOR_ADDRESS": f"127.0.0.1:{extractor_port}",
                "SEARCH_LOG_LEVEL": "WARNING",
            },
            work / "search.log",
        )
        processes += [extractor, search]
        options_ = [("grpc.max_send_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{search_port}", options_) as channel:
            await wait_serving(channel, search)
            stub = search_pb2_grpc.SearchServiceStub(channel)
            names = available_photos()
            seed = search_pb2.IngestRequest(
                collection=COLLECTION,
                items=[search_pb2.IngestItem(key=f"seed-{n}", image=photo_bytes(n)) for n in names],
            )
            await stub.CreateCollection(search_pb2.CreateCollectionRequest(name=COLLECTION))
            for _ in range(240):  # the extractor may still be loading its model
                try:
                    await stub.Ingest(seed, timeout=60)
                    break
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.5)
            mix = Mix([f"seed-{n}" for n in names])
            pids = {"search": search.pid, "extractor": extractor.pid}
            say(
                f"bench_load: {len(names)} photos seeded, {os.cpu_count()} CPUs, "
                f"load average {load_average()}; idle RSS "
                + ", ".join(f"{k} {rss_mib(p)[0]:.0f} MiB" for k, p in pids.items())
            )
            for callers in (int(c) for c in options.callers.split(",")):
                await run_load(
                    mix,
                    stub,
                    f"127.0.0.1:{search_port}",
                    callers,
                    options.seconds,
                    options.max_calls,
                    pids,
                )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
