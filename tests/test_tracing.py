"""OpenTelemetry tracing: one trace per call across both real servers, nothing when off."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from devenv.stack import Stack, address
from imagesearch.search.v1 import search_pb2
from service_core.tracing import Tracing, tracing_from_environment
from tests import photos

SEARCH = "/imagesearch.search.v1.SearchService/Search"
EMBED = "/imagesearch.extractor.v1.ExtractorService/Embed"


def in_memory(exporter: InMemorySpanExporter, service: str) -> Tracing:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


def one(spans: Sequence[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def under(span: ReadableSpan, ancestor: ReadableSpan, spans: Sequence[ReadableSpan]) -> bool:
    """Whether ``ancestor`` is on ``span``'s chain of parents."""
    by_id = {s.context.span_id: s for s in spans}
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if current.parent.span_id == ancestor.context.span_id:
            return True
        current = by_id.get(current.parent.span_id)
    return False


async def test_search_by_image_is_one_trace_across_both_servers(
    database_url: str, lite0_model_dir: Path
) -> None:
    exporter = InMemorySpanExporter()
    extractor_tracing = in_memory(exporter, "imagesearch-extractor")
    search_tracing = in_memory(exporter, "imagesearch-search")
    # The caller's own trace: every span of the call must join it.
    trace_id, caller_span = random.getrandbits(128) | 1, random.getrandbits(64) | 1
    traceparent = f"00-{trace_id:032x}-{caller_span:016x}-01"
    try:
        async with Stack(extractor_tracing) as back, Stack(search_tracing) as front:
            extractor = await back.extractor(lite0_model_dir)
            app = await front.search(database_url, extractor_address=address(extractor))
            stub = front.search_stub(app)
            ingested = await stub.Ingest(
                search_pb2.IngestRequest(
                    items=[search_pb2.IngestItem(key="coffee", image=photos.photo_bytes("coffee"))]
                )
            )
            assert ingested.results[0].status == search_pb2.INGEST_STATUS_CREATED
            exporter.clear()
            found = await stub.Search(
                search_pb2.SearchRequest(image=photos.photo_bytes("coffee"), top_k=1),
                metadata=(("traceparent", traceparent),),
            )
            assert found.hits[0].key == "coffee"
    finally:
        search_tracing.shutdown()
        extractor_tracing.shutdown()

    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    search = one(spans, SEARCH, SpanKind.SERVER)
    assert parent_id(search) == caller_span
    assert search.resource.attributes["service.name"] == "imagesearch-search"
    client = one(spans, EMBED, SpanKind.CLIENT)
    assert under(client, search, spans)
    embed = one(spans, EMBED, SpanKind.SERVER)
    assert parent_id(embed) == client.context.span_id
    assert embed.resource.attributes["service.name"] == "imagesearch-extractor"
    for name in ("decode", "batch wait", "inference"):
        step = one(spans, name)
        assert parent_id(step) == embed.context.span_id, name
        times = [embed.start_time, step.start_time, step.end_time, embed.end_time]
        assert None not in times
        assert times == sorted(times), name  # type: ignore[type-var]
    assert attributes(one(spans, "inference"))["imagesearch.batch_size"] == 1
    queries = [s for s in spans if attributes(s).get("db.system") == "postgresql"]
    assert queries, "no database query of the search joined its trace"
    assert all(under(q, search, spans) for q in queries)
    # The background database ping stays out of traces altogether.
    assert not [s for s in exporter.get_finished_spans() if "SELECT 1" in str(s.attributes)]


async def test_a_failed_item_marks_its_decode_span_as_an_error(lite0_model_dir: Path) -> None:
    exporter = InMemorySpanExporter()
    tracing = in_memory(exporter, "imagesearch-extractor")
    from imagesearch.extractor.v1 import extractor_pb2

    try:
        async with Stack(tracing) as stack:
            stub = stack.extractor_stub(await stack.extractor(lite0_model_dir))
            response = await stub.Embed(
                extractor_pb2.EmbedRequest(images=[extractor_pb2.Image(id="junk", data=b"no")])
            )
            assert response.results[0].WhichOneof("outcome") == "error"
    finally:
        tracing.shutdown()
    decode = one(exporter.get_finished_spans(), "decode")
    assert not decode.status.is_ok
    assert attributes(decode)["imagesearch.item"] == "junk"


async def test_tracing_off_leaves_asyncpg_and_the_servers_untouched(database_url: str) -> None:
    plain = asyncpg.connection.Connection.fetch
    async with Stack() as stack:
        app = await stack.search(database_url, extractor_address="127.0.0.1:1")
        assert asyncpg.connection.Connection.fetch is plain
        assert app.tracing.server_interceptors() == []
        assert app.tracing.tracer("x") is None


def test_off_nothing_of_opentelemetry_is_even_imported() -> None:
    code = (
        "import sys, extractor_service.app, search_service.app, service_core.main\n"
        "from service_core.tracing import tracing_from_environment\n"
        "assert not tracing_from_environment('x', {}).enabled\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
            True,
        ),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_standard_variables_turn_tracing_on(environ: dict[str, str], enabled: bool) -> None:
    tracing = tracing_from_environment("imagesearch-search", environ)
    try:
        assert tracing.enabled is enabled
        if enabled:
            assert tracing.provider is not None
            assert tracing.provider.resource.attributes["service.name"] == "imagesearch-search"
    finally:
        tracing.shutdown()


async def test_database_spans_can_be_left_out_by_the_standard_variable(
    database_url: str,
) -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "asyncpg",
    }
    plain = asyncpg.connection.Connection.fetch
    tracing = tracing_from_environment("imagesearch-search", environ)
    try:
        assert tracing.enabled
        assert not tracing.database_spans
        async with Stack(tracing=tracing) as stack:
            app = await stack.search(database_url, extractor_address="127.0.0.1:1")
            assert asyncpg.connection.Connection.fetch is plain  # not patched
            assert app.tracing.server_interceptors() != []  # the calls are still traced
    finally:
        tracing.shutdown()
    assert tracing_from_environment("x", {"OTEL_TRACES_EXPORTER": "none"}).database_spans


def test_service_name_comes_from_otel_service_name() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "search-eu"}
    tracing = tracing_from_environment("imagesearch-search", environ)
    try:
        assert tracing.provider is not None
        assert tracing.provider.resource.attributes["service.name"] == "search-eu"
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "'jaeger', which is not installed; known: "),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "only 'grpc' is installed",
        ),
    ],
)
def test_an_exporter_that_cannot_be_had_stops_start_up(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tracing_from_environment("imagesearch-search", environ)
