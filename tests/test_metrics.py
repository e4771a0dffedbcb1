"""The metrics both servers expose, read from their registries and /metrics after real calls."""

from __future__ import annotations

import asyncio
import io
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from devenv.stack import Stack, address
from extractor_service.app import ExtractorApp
from imagesearch.extractor.v1 import extractor_pb2
from imagesearch.search.v1 import search_pb2
from search_service.app import SearchApp
from search_service.domain import CollectionSummary
from search_service.metrics import CollectionCollector
from service_core.client_metrics import client_metrics_interceptors
from service_core.errors import Unavailable
from service_core.metrics import Metrics
from service_core.server import Service, create_server
from service_core.settings import ServerSettings

EXTRACTOR = "imagesearch.extractor.v1.ExtractorService"
HEALTH = "grpc.health.v1.Health"


def png(seed: int, size: int = 100) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 for one never observed (a label child not yet created)."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def scrape(port: int | None) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics, parsed: sample name -> [(labels, value)]."""
    assert port is not None
    url = f"http://127.0.0.1:{port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def vector_item(key: str, values: np.ndarray) -> search_pb2.IngestItem:
    item = search_pb2.IngestItem(key=key)
    item.embedding.model.name = "test"
    item.embedding.model.version = "1"
    item.embedding.model.dimension = len(values)
    item.embedding.vector.values.extend(values.tolist())
    return item


async def first_snapshot(app: SearchApp) -> None:
    """Waits for the collection gauges' first refresh, which start-up runs in the background."""
    for _ in range(200):
        if (
            app.metrics.registry.get_sample_value(
                "search_collection_images", {"collection": "default"}
            )
            is not None
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the collection gauges were never refreshed")


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with Stack() as started:
        yield started


async def extractor(stack: Stack, model_dir: Path) -> ExtractorApp:
    # 15000 pixels a request: one 100x100 image fits, a second is RESOURCE_EXHAUSTED.
    return await stack.extractor(model_dir, metrics_port=0, max_request_pixels=15_000)


async def test_extractor_counts_images_by_outcome_and_times_batches(
    stack: Stack, lite0_model_dir: Path
) -> None:
    app = await extractor(stack, lite0_model_dir)
    registry, stub = app.metrics.registry, stack.extractor_stub(app)
    images = [
        extractor_pb2.Image(id="good", data=png(1)),
        extractor_pb2.Image(id="bad", data=b"not an image"),
    ]
    answered = await stub.Embed(extractor_pb2.EmbedRequest(images=images))
    assert [r.WhichOneof("outcome") for r in answered.results] == ["embedding", "error"]
    two = [extractor_pb2.Image(id=f"p{i}", data=png(i)) for i in (2, 3)]
    answered = await stub.Embed(extractor_pb2.EmbedRequest(images=two))
    # Over the request's pixel budget: one of the two is refused, whichever decodes second.
    assert sorted(str(r.WhichOneof("outcome")) for r in answered.results) == [
        "embedding",
        "error",
    ]

    assert value(registry, "extractor_images_total", outcome="ok") == 2
    assert value(registry, "extractor_images_total", outcome="invalid") == 1
    assert value(registry, "extractor_images_total", outcome="rejected") == 1
    assert value(registry, "extractor_images_total", outcome="error") == 0
    assert value(registry, "extractor_preprocess_seconds_count") == 4
    engine = app.servicer.engine
    assert engine is not None
    batches = engine.batcher.batches_run
    assert batches >= 1
    assert value(registry, "extractor_batch_size_count") == batches
    assert value(registry, "extractor_batch_size_sum") == 2  # the two images embedded
    assert value(registry, "extractor_inference_seconds_count") == batches
    assert value(registry, "extractor_inference_seconds_sum") > 0
    assert value(registry, "extractor_queue_depth") == 0  # everything answered


async def test_queue_depth_is_the_images_admitted_and_not_answered(
    stack: Stack, lite0_model_dir: Path
) -> None:
    app = await extractor(stack, lite0_model_dir)
    admission = app.servicer._admission  # the count the gauge reads at scrape time
    await admission.admit(3)
    assert value(app.metrics.registry, "extractor_queue_depth") == 3
    admission.release(3)
    assert value(app.metrics.registry, "extractor_queue_depth") == 0


async def test_server_metrics_carry_grpc_type_and_count_messages(
    stack: Stack, lite0_model_dir: Path
) -> None:
    app = await extractor(stack, lite0_model_dir)
    stub = stack.extractor_stub(app)
    await stub.Embed(extractor_pb2.EmbedRequest(images=[extractor_pb2.Image(data=png(4))]))

    async def requests() -> AsyncIterator[extractor_pb2.EmbedStreamRequest]:
        for seed in (5, 6, 7):
            yield extractor_pb2.EmbedStreamRequest(image=extractor_pb2.Image(data=png(seed)))

    answers = [a async for a in stub.EmbedStream(requests())]
    assert len(answers) == 3

    samples = await asyncio.to_thread(scrape, app.server.metrics_port if app.server else None)

    def scraped(name: str, **labels: str) -> float:
        matches = [v for got, v in samples[name] if labels.items() <= got.items()]
        assert len(matches) == 1, (name, labels, samples.get(name))
        return matches[0]

    stream = {"grpc_service": EXTRACTOR, "grpc_method": "EmbedStream"}
    unary = {"grpc_service": EXTRACTOR, "grpc_method": "Embed"}
    assert scraped("grpc_server_started_total", grpc_type="bidi_stream", **stream) == 1
    assert scraped("grpc_server_msg_received_total", grpc_type="bidi_stream", **stream) == 3
    assert scraped("grpc_server_msg_sent_total", grpc_type="bidi_stream", **stream) == 3
    assert (
        scraped("grpc_server_handled_total", grpc_type="bidi_stream", grpc_code="OK", **stream) == 1
    )
    assert scraped("grpc_server_handling_seconds_count", grpc_type="bidi_stream", **stream) == 1
    assert scraped("grpc_server_started_total", grpc_type="unary", **unary) == 1
    assert scraped("grpc_server_msg_received_total", grpc_type="unary", **unary) == 1
    assert scraped("grpc_server_msg_sent_total", grpc_type="unary", **unary) == 1
    assert scraped("grpc_server_handled_total", grpc_type="unary", grpc_code="OK", **unary) == 1
    # The process and runtime collectors, on this server's own registry.
    assert scraped("process_cpu_seconds_total") > 0
    assert scraped("process_resident_memory_bytes") > 0
    assert "python_info" in samples
    assert "python_gc_objects_collected_total" in samples


async def test_search_counts_ingest_and_its_calls_to_the_extractor(
    database_url: str, stack: Stack, lite0_model_dir: Path
) -> None:
    upstream = await extractor(stack, lite0_model_dir)
    app = await stack.search(database_url, extractor_address=address(upstream), metrics_port=0)
    registry, stub = app.metrics.registry, stack.search_stub(app)
    items = [
        search_pb2.IngestItem(key="a", image=png(10)),
        search_pb2.IngestItem(key="b", image=b"not an image"),
    ]
    first = await stub.Ingest(search_pb2.IngestRequest(items=items))
    assert [r.status for r in first.results] == [
        search_pb2.INGEST_STATUS_CREATED,
        search_pb2.INGEST_STATUS_FAILED,
    ]
    again = await stub.Ingest(search_pb2.IngestRequest(items=items[:1]))
    assert again.results[0].status == search_pb2.INGEST_STATUS_UNCHANGED

    assert value(registry, "search_ingested_items_total", status="created") == 1
    assert value(registry, "search_ingested_items_total", status="failed") == 1
    assert value(registry, "search_ingested_items_total", status="unchanged") == 1
    assert value(registry, "search_ingested_items_total", status="updated") == 0
    assert value(registry, "search_query_seconds_count", stage="ingest_write") == 1

    # The client side of the hop: one GetModelInfo, then one Embed for the first ingest
    # (the second re-extracts nothing), each seen as the extractor's server saw it.
    for method, calls in (("GetModelInfo", 1), ("Embed", 1)):
        labels = {"grpc_type": "unary", "grpc_service": EXTRACTOR, "grpc_method": method}
        assert value(registry, "grpc_client_started_total", **labels) == calls
        assert value(registry, "grpc_client_handled_total", grpc_code="OK", **labels) == calls
        assert value(registry, "grpc_client_handling_seconds_count", **labels) == calls
        assert value(registry, "grpc_client_msg_sent_total", **labels) == calls
        assert value(registry, "grpc_client_msg_received_total", **labels) == calls
        served = value(
            upstream.metrics.registry, "grpc_server_handled_total", grpc_code="OK", **labels
        )
        assert served == calls


async def test_client_metrics_count_a_failed_call_by_its_code(
    database_url: str, stack: Stack
) -> None:
    app = await stack.search(database_url, extractor_address="127.0.0.1:1", extractor_timeout_s=2)
    stub = stack.search_stub(app)
    item = search_pb2.IngestItem(key="a", image=png(11))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Ingest(search_pb2.IngestRequest(items=[item]))
    labels = {"grpc_type": "unary", "grpc_service": EXTRACTOR, "grpc_method": "GetModelInfo"}
    registry = app.metrics.registry
    assert value(registry, "grpc_client_started_total", **labels) == 1
    assert value(registry, "grpc_client_handled_total", grpc_code="UNAVAILABLE", **labels) == 1
    assert value(registry, "grpc_client_msg_received_total", **labels) == 0


async def test_search_times_each_stage_of_exact_and_fast(database_url: str, stack: Stack) -> None:
    app = await stack.search(database_url, extractor_address="127.0.0.1:1")
    registry, stub = app.metrics.registry, stack.search_stub(app)
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(200, 16))
    await stub.Ingest(
        search_pb2.IngestRequest(items=[vector_item(f"k{i}", v) for i, v in enumerate(matrix)])
    )
    query = search_pb2.SearchRequest(top_k=5, mode=search_pb2.SEARCH_MODE_EXACT)
    query.vector.values.extend(matrix[0].tolist())
    await stub.Search(query)  # no projection yet: EXACT ranks every vector
    assert value(registry, "search_query_seconds_count", stage="exact") == 1
    assert value(registry, "search_query_seconds_count", stage="bound_scan") == 0

    await stub.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=8))
    await stub.Search(query)  # now FAST's seeds, the bound scan, then re-rank rounds
    assert value(registry, "search_query_seconds_count", stage="exact") == 2
    assert value(registry, "search_query_seconds_count", stage="candidates") == 1
    assert value(registry, "search_query_seconds_count", stage="bound_scan") == 1
    assert value(registry, "search_query_seconds_count", stage="rerank") >= 1
    assert value(registry, "search_query_seconds_count", stage="fast") == 0

    query.mode = search_pb2.SEARCH_MODE_FAST
    await stub.Search(query)
    assert value(registry, "search_query_seconds_count", stage="fast") == 1
    assert value(registry, "search_query_seconds_count", stage="candidates") == 2
    assert value(registry, "search_query_seconds_sum", stage="fast") > 0


async def test_pool_gauges_are_read_at_scrape_time(database_url: str, stack: Stack) -> None:
    app = await stack.search(
        database_url,
        extractor_address="127.0.0.1:1",
        pool_min_size=2,
        pool_max_size=7,
        metrics_refresh_s=3600,
    )
    registry = app.metrics.registry
    await first_snapshot(app)  # then nothing else borrows a connection
    assert app.pool is not None
    assert value(registry, "search_db_pool_max_connections") == 7
    async with app.pool.acquire():
        held = value(registry, "search_db_pool_connections", state="in_use")
        idle = value(registry, "search_db_pool_connections", state="idle")
        assert held >= 1
        assert held + idle == app.pool.get_size()
    # Released: what was lent is idle again.
    assert value(registry, "search_db_pool_connections", state="in_use") == held - 1


async def test_collection_gauges_follow_the_database_in_the_background(
    database_url: str, stack: Stack
) -> None:
    app = await stack.search(database_url, extractor_address="127.0.0.1:1", metrics_refresh_s=0.05)
    registry, stub = app.metrics.registry, stack.search_stub(app)
    await stub.CreateCollection(search_pb2.CreateCollectionRequest(name="empty"))
    matrix = np.random.default_rng(1).normal(size=(40, 8))
    await stub.Ingest(
        search_pb2.IngestRequest(items=[vector_item(f"k{i}", v) for i, v in enumerate(matrix)])
    )

    async def shows(collection: str, images: int, state: str) -> bool:
        for _ in range(200):
            if value(registry, "search_collection_images", collection=collection) == images and (
                value(registry, "search_projection_state", collection=collection, state=state) == 1
            ):
                return True
            await asyncio.sleep(0.05)
        return False

    assert await shows("default", 40, "none")
    assert await shows("empty", 0, "none")
    for other in ("building", "ready"):
        assert value(registry, "search_projection_state", collection="default", state=other) == 0

    await stub.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=4))
    assert await shows("default", 40, "ready")
    assert value(registry, "search_projection_state", collection="default", state="none") == 0

    await stub.DeleteCollection(search_pb2.DeleteCollectionRequest(name="empty"))
    for _ in range(200):
        if registry.get_sample_value("search_collection_images", {"collection": "empty"}) is None:
            break
        await asyncio.sleep(0.05)
    assert registry.get_sample_value("search_collection_images", {"collection": "empty"}) is None


async def test_a_scrape_reads_the_snapshot_not_the_database(
    database_url: str, stack: Stack
) -> None:
    app: SearchApp = await stack.search(
        database_url, extractor_address="127.0.0.1:1", metrics_refresh_s=3600
    )
    registry, stub = app.metrics.registry, stack.search_stub(app)
    await first_snapshot(app)
    assert value(registry, "search_collection_images", collection="default") == 0
    item = vector_item("k", np.ones(4))
    await stub.Ingest(search_pb2.IngestRequest(items=[item]))
    # Scrapes between refreshes show the last snapshot ...
    assert value(registry, "search_collection_images", collection="default") == 0
    assert app.backend is not None
    await app.collection_metrics.refresh(app.backend.store.summaries)
    # ... and the next refresh the database's count.
    assert value(registry, "search_collection_images", collection="default") == 1


async def test_client_metrics_count_a_server_stream_message_by_message(
    stack: Stack, lite0_model_dir: Path
) -> None:
    app = await extractor(stack, lite0_model_dir)
    client = Metrics()
    channel = grpc.aio.insecure_channel(
        address(app), interceptors=client_metrics_interceptors(client.client)
    )
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        async for answer in watch:
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            break  # a watch never ends by itself: the caller stops reading
        labels = {"grpc_type": "server_stream", "grpc_service": HEALTH, "grpc_method": "Watch"}
        registry = client.registry
        assert value(registry, "grpc_client_handled_total", grpc_code="CANCELLED", **labels) == 0
    finally:
        await channel.close(None)  # ends the watch the caller left unread
    for _ in range(100):  # the call's end is counted as the loop sees it
        if value(registry, "grpc_client_handled_total", grpc_code="CANCELLED", **labels):
            break
        await asyncio.sleep(0.02)
    assert value(registry, "grpc_client_started_total", **labels) == 1
    assert value(registry, "grpc_client_msg_sent_total", **labels) == 1
    assert value(registry, "grpc_client_msg_received_total", **labels) == 1
    assert value(registry, "grpc_client_handled_total", grpc_code="CANCELLED", **labels) == 1


async def test_a_slow_refresh_waits_twenty_times_its_own_duration() -> None:
    gauges = CollectionCollector()
    reads = 0

    async def slow_read() -> list[CollectionSummary]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)  # then the next read waits >= 1 s, not the 1 ms asked
        return [CollectionSummary("big", "ready", reads)]

    refreshing = asyncio.create_task(gauges.keep_fresh(slow_read, interval_s=0.001))
    await asyncio.sleep(0.6)
    refreshing.cancel()
    await asyncio.gather(refreshing, return_exceptions=True)
    assert reads == 1


async def test_a_failed_refresh_keeps_the_last_snapshot() -> None:
    gauges = CollectionCollector()
    registry = CollectorRegistry()
    registry.register(gauges)
    answers: list[list[CollectionSummary] | Exception] = [
        [CollectionSummary("kept", "building", 7)],
        Unavailable("the database is unavailable (OSError); retry"),
    ]

    async def read() -> list[CollectionSummary]:
        answer = answers.pop(0) if answers else Unavailable("still down")
        if isinstance(answer, Exception):
            raise answer
        return answer

    refreshing = asyncio.create_task(gauges.keep_fresh(read, interval_s=0.01))
    await asyncio.sleep(0.2)
    refreshing.cancel()
    await asyncio.gather(refreshing, return_exceptions=True)
    assert not answers  # both answers were read
    assert value(registry, "search_collection_images", collection="kept") == 7
    assert value(registry, "search_projection_state", collection="kept", state="building") == 1


async def _count(requests: AsyncIterator[bytes], context: object) -> bytes:
    return str(len([r async for r in requests])).encode()


async def _echo(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


ECHO = grpc.method_handlers_generic_handler(
    "test.v1.Echo",
    {
        "Count": grpc.stream_unary_rpc_method_handler(_count),  # raw bytes both ways
        "Echo": grpc.stream_stream_rpc_method_handler(_echo),
    },
)


async def test_client_and_request_streams_are_counted_on_both_sides() -> None:
    served, called = Metrics(), Metrics()
    echo = Service("test.v1.Echo", lambda server: server.add_generic_rpc_handlers([ECHO]))
    server = await create_server(ServerSettings(grace_period_s=0), [echo], served)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", interceptors=client_metrics_interceptors(called.client)
    )
    try:
        count = channel.stream_unary("/test.v1.Echo/Count", None, None)
        assert await count(iter([b"a", b"b", b"c"])) == b"3"
        echoing = channel.stream_stream("/test.v1.Echo/Echo", None, None)(None)
        for message in (b"x", b"y"):  # written by the caller: no request iterator of its own
            await echoing.write(message)
            assert await echoing.read() == message
        await echoing.done_writing()
        assert await echoing.read() == grpc.aio.EOF  # type: ignore[attr-defined]
        assert await echoing.code() == grpc.StatusCode.OK
    finally:
        await channel.close(None)
        await server.stop(0)

    expected = {  # (shape, method): (requests, responses)
        ("client_stream", "Count"): (3, 1),
        ("bidi_stream", "Echo"): (2, 2),
    }
    for side, metrics in (("client", called), ("server", served)):
        registry = metrics.registry
        for (shape, method), (requests, responses) in expected.items():
            labels = {"grpc_type": shape, "grpc_service": "test.v1.Echo", "grpc_method": method}
            sent, received = (requests, responses) if side == "client" else (responses, requests)
            for _ in range(100):  # a client call's end is counted as the loop sees it
                if value(registry, f"grpc_{side}_handled_total", grpc_code="OK", **labels):
                    break
                await asyncio.sleep(0.02)
            assert value(registry, f"grpc_{side}_started_total", **labels) == 1
            assert value(registry, f"grpc_{side}_handled_total", grpc_code="OK", **labels) == 1
            assert value(registry, f"grpc_{side}_msg_sent_total", **labels) == sent
            assert value(registry, f"grpc_{side}_msg_received_total", **labels) == received
