"""What tracing costs a call: the same calls with tracing off and on, both servers in process.

    python -m benchmarks.bench_tracing [--model-dir DIR] [--quick]

Three calls, each timed one after another from a client in the same process: the
extractor's GetModelInfo (the interceptors alone), a search by vector over 500 stored
vectors (the search service and its database queries) and a search by image (both hops,
decode, batch wait and inference). "On" is the SDK as the services build it (a
BatchSpanProcessor) with an exporter that drops the spans, so the figure is the SDK's
work and not a collector's. Off and on alternate, ``--rounds`` times each; medians over
all runs. On a shared machine the calls' medians move by a millisecond or more from run
to run, so it also times what one span costs the SDK alone (start, attributes, end),
which with the spans a call makes bounds what tracing adds to it. With
OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=asyncpg "on" leaves out the database spans.
The model is EfficientNet-Lite0, exported to a temporary directory unless given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.machine import load_average
from devenv import photos
from devenv.postgres import LocalPostgres
from devenv.stack import Stack, address
from imagesearch.extractor.v1 import extractor_pb2
from imagesearch.search.v1 import search_pb2
from service_core.tracing import Tracing, database_spans_wanted

VECTORS = 500


class _Dropped(SpanExporter):
    """Takes every span and sends it nowhere."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def _tracing(exporter: _Dropped | None) -> Tracing:
    if exporter is None:
        return Tracing()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    # OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=asyncpg: the cost without the database spans.
    return Tracing(provider, database_spans=database_spans_wanted(os.environ))


async def _timed(call: Callable[[], Awaitable[object]], count: int) -> tuple[list[float], float]:
    """Each call's wall-clock seconds, and the process's CPU seconds over all of them."""
    for _ in range(max(3, count // 20)):  # warm-up: channels, caches, the model's first runs
        await call()
    samples = []
    cpu = time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples, time.process_time() - cpu


async def _run(
    model_dir: Path, dsn: str, exporter: _Dropped | None, counts: dict[str, int]
) -> dict[str, tuple[list[float], float]]:
    tracing = _tracing(exporter)
    try:
        async with Stack(tracing) as stack:
            extractor = await stack.extractor(model_dir)
            app = await stack.search(
                dsn, extractor_address=address(extractor), auto_fit_threshold=10**9
            )
            search = stack.search_stub(app)
            embed = stack.extractor_stub(extractor)
            info = await embed.GetModelInfo(extractor_pb2.GetModelInfoRequest())
            model = search_pb2.Model(
                name=info.model.ref.name,
                version=info.model.ref.version,
                dimension=info.model.ref.dimension,
            )
            rng = np.random.default_rng(0)
            matrix = rng.standard_normal((VECTORS, model.dimension)).astype(np.float32)
            stats = await search.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
            if stats.collection.image_count < VECTORS:
                for start in range(0, VECTORS, 200):
                    items = [
                        search_pb2.IngestItem(
                            key=f"v{i}",
                            embedding=search_pb2.PrecomputedEmbedding(
                                vector=search_pb2.Vector(values=matrix[i].tolist()), model=model
                            ),
                        )
                        for i in range(start, min(start + 200, VECTORS))
                    ]
                    await search.Ingest(search_pb2.IngestRequest(items=items))
            by_vector = search_pb2.SearchRequest(
                vector=search_pb2.Vector(values=matrix[7].tolist()), top_k=10
            )
            by_image = search_pb2.SearchRequest(image=photos.photo_bytes("coffee"), top_k=10)
            return {
                "GetModelInfo (extractor)": await _timed(
                    lambda: embed.GetModelInfo(extractor_pb2.GetModelInfoRequest()),
                    counts["info"],
                ),
                "Search by vector (search, database)": await _timed(
                    lambda: search.Search(by_vector), counts["vector"]
                ),
                "Search by image (both hops)": await _timed(
                    lambda: search.Search(by_image), counts["image"]
                ),
            }
    finally:
        tracing.shutdown()


def _span_cost_us(count: int = 20000) -> float:
    """Median microseconds one span with three attributes costs, five batches of ``count``."""
    tracing = _tracing(_Dropped())
    tracer = tracing.tracer("bench")
    assert tracer is not None
    attributes = {"rpc.system": "grpc", "rpc.service": "bench", "rpc.method": "Span"}
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            with tracer.start_as_current_span("span", attributes=attributes):
                pass
        batches.append((time.perf_counter() - started) / count * 1e6)
    tracing.shutdown()
    return statistics.median(batches)


async def _bench(model_dir: Path, dsn: str, counts: dict[str, int], rounds: int) -> None:
    samples: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    # The process's CPU seconds per call: what tracing costs this process, which the
    # machine's other load moves far less than it moves wall-clock latency.
    cpu: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    spans = 0
    for _ in range(rounds):
        for mode in ("off", "on"):
            exporter = _Dropped() if mode == "on" else None
            for name, (seconds, busy) in (await _run(model_dir, dsn, exporter, counts)).items():
                samples[mode].setdefault(name, []).extend(seconds)
                cpu[mode].setdefault(name, []).append(busy / len(seconds))
            spans += exporter.spans if exporter else 0
    print(f"load average {load_average()}; spans exported while on: {spans}")
    print(f"one span, the SDK alone: {_span_cost_us():.1f} us (median of 5 x 20000)")
    print(
        f"  {'call':<38} {'n':>5} {'p50 ms off':>10} {'on':>8} {'on-off':>7}"
        f" {'CPU ms/call off':>15} {'on':>7} {'on-off':>7}"
    )
    for name, off in samples["off"].items():
        on = samples["on"][name]
        off_ms, on_ms = statistics.median(off) * 1000, statistics.median(on) * 1000
        cpu_off = statistics.median(cpu["off"][name]) * 1000
        cpu_on = statistics.median(cpu["on"][name]) * 1000
        print(
            f"  {name:<38} {len(off):>5} {off_ms:>10.3f} {on_ms:>8.3f} {on_ms - off_ms:>+7.3f}"
            f" {cpu_off:>15.3f} {cpu_on:>7.3f} {cpu_on - cpu_off:>+7.3f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="an exported model; default: Lite0")
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--rounds", type=int, default=3, help="off/on alternations")
    options = parser.parse_args(argv)
    scale = 5 if options.quick else 1
    counts = {"info": 1500 // scale, "vector": 400 // scale, "image": 80 // scale}
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    work.chmod(0o755)  # PostgreSQL runs as an unprivileged user under root
    cluster = LocalPostgres(work / "pg", durable=False)
    try:
        model_dir = options.model_dir
        if model_dir is None:
            from extractor_service.export import lite0
            from extractor_service.export.onnx_export import export_model

            model_dir = work / "lite0"
            export_model(lite0.lite0(), model_dir)
        cluster.start()
        cluster.psql("CREATE DATABASE bench")
        cluster.psql("CREATE EXTENSION cube", "bench")
        asyncio.run(_bench(model_dir, cluster.dsn("bench"), counts, options.rounds))
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
