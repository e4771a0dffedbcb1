"""The shared server bootstrap, through both real services and the real grpcurl."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devenv.stack import Stack
from extractor_service.app import ExtractorApp
from extractor_service.settings import ExtractorSettings
from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from imagesearch.search.v1 import search_pb2
from search_service.app import SearchApp
from service_core.errors import InvalidArgument
from service_core.server import App, Service

HEALTH = "grpc.health.v1.Health"
REFLECTION = {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}


def run_grpcurl(
    grpcurl: str, port: int, *verb: str, data: object = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``grpcurl -plaintext [-d JSON] 127.0.0.1:PORT VERB...``."""
    flags = ["-d", json.dumps(data)] if data is not None else []
    return subprocess.run(
        [grpcurl, "-plaintext", *flags, f"127.0.0.1:{port}", *verb],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
async def search_app(database_url: str) -> AsyncIterator[SearchApp]:
    async with Stack() as stack:
        yield await stack.search(database_url, grace_period_s=0.5)


@pytest.fixture
async def extractor_app(lite0_model_dir: Path) -> AsyncIterator[ExtractorApp]:
    async with Stack() as stack:
        yield await stack.extractor(lite0_model_dir, grace_period_s=0.5)


async def assert_listed_and_serving(grpcurl: str, port: int, service: str) -> None:
    assert port > 0
    listed = await asyncio.to_thread(run_grpcurl, grpcurl, port, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {service, HEALTH, *REFLECTION}
    for name in ("", service):
        check = await asyncio.to_thread(
            run_grpcurl, grpcurl, port, f"{HEALTH}/Check", data={"service": name}
        )
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout) == {"status": "SERVING"}


async def test_search_server_lists_services_and_serves_health(
    grpcurl: str, search_app: SearchApp
) -> None:
    assert search_app.server is not None
    await assert_listed_and_serving(
        grpcurl, search_app.server.port, "imagesearch.search.v1.SearchService"
    )


async def test_extractor_server_lists_services_and_serves_health(
    grpcurl: str, extractor_app: ExtractorApp
) -> None:
    assert extractor_app.server is not None
    await assert_listed_and_serving(
        grpcurl, extractor_app.server.port, "imagesearch.extractor.v1.ExtractorService"
    )


async def test_grpcurl_describes_messages_through_reflection(
    grpcurl: str, search_app: SearchApp
) -> None:
    assert search_app.server is not None
    described = await asyncio.to_thread(
        run_grpcurl,
        grpcurl,
        search_app.server.port,
        "describe",
        "imagesearch.search.v1.SearchRequest",
    )
    assert described.returncode == 0, described.stderr
    assert "uint32 top_k = 5;" in described.stdout


class _GatedApp(App):
    """An app whose readiness waits for the test to open a gate."""

    def __init__(self, servicer: extractor_pb2_grpc.ExtractorServiceServicer) -> None:
        super().__init__(ExtractorSettings(grace_period_s=0.2, metrics_port=0))
        self.gate = asyncio.Event()
        self._servicer = servicer

    def services(self) -> Sequence[Service]:
        return [
            Service(
                "imagesearch.extractor.v1.ExtractorService",
                lambda server: extractor_pb2_grpc.add_ExtractorServiceServicer_to_server(
                    self._servicer, server
                ),
            )
        ]

    async def become_ready(self) -> None:
        await self.gate.wait()


class _FailingServicer(extractor_pb2_grpc.ExtractorServiceServicer):
    """Fails in the two ways the interceptor distinguishes."""

    async def GetModelInfo(self, request, context):  # noqa: N802 - generated name
        raise InvalidArgument("model 'x' is not a thing")

    async def Embed(self, request, context):  # noqa: N802
        raise RuntimeError("secret internals: /etc/passwd")

    async def EmbedStream(self, request_iterator, context):  # noqa: N802
        async for _ in request_iterator:
            yield extractor_pb2.EmbedStreamResponse()
            raise InvalidArgument("item 'b' is broken")


@pytest.fixture
async def gated() -> AsyncIterator[tuple[_GatedApp, grpc.aio.Channel]]:
    app = _GatedApp(_FailingServicer())
    server = await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield app, channel
    await app.stop()


async def test_health_is_not_serving_until_ready(
    gated: tuple[_GatedApp, grpc.aio.Channel],
) -> None:
    app, channel = gated
    health = health_pb2_grpc.HealthStub(channel)
    before = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
    app.gate.set()
    await app.wait_ready()
    after = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert after.status == health_pb2.HealthCheckResponse.SERVING


async def test_domain_error_reaches_caller_with_its_code_and_message(
    gated: tuple[_GatedApp, grpc.aio.Channel],
) -> None:
    stub = extractor_pb2_grpc.ExtractorServiceStub(gated[1])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModelInfo(extractor_pb2.GetModelInfoRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "model 'x' is not a thing"


async def test_unexpected_error_is_generic_internal_with_correlation_id(
    gated: tuple[_GatedApp, grpc.aio.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    stub = extractor_pb2_grpc.ExtractorServiceStub(gated[1])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(extractor_pb2.EmbedRequest())
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert "secret" not in details
    assert details.startswith("internal error (correlation id ")
    correlation_id = details.removeprefix("internal error (correlation id ").rstrip(")")
    logged = [r for r in caplog.records if getattr(r, "correlation_id", None) == correlation_id]
    assert logged, "the traceback must be logged under the id the caller saw"
    assert "secret internals" in str(logged[0].exc_info)


async def test_error_midstream_ends_stream_with_its_code(
    gated: tuple[_GatedApp, grpc.aio.Channel],
) -> None:
    stub = extractor_pb2_grpc.ExtractorServiceStub(gated[1])
    call = stub.EmbedStream(iter([extractor_pb2.EmbedStreamRequest()] * 2))
    assert await call.read() == extractor_pb2.EmbedStreamResponse()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "item 'b' is broken"


async def test_oversize_message_is_resource_exhausted(database_url: str) -> None:
    async with Stack() as stack:
        app = await stack.search(database_url, max_message_bytes=4096, ready=False)
        item = search_pb2.IngestItem(key="big", image=b"x" * 10_000)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.search_stub(app).Ingest(search_pb2.IngestRequest(items=[item]))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_metrics_count_calls_by_status_code(
    gated: tuple[_GatedApp, grpc.aio.Channel],
) -> None:
    app, channel = gated
    stub = extractor_pb2_grpc.ExtractorServiceStub(channel)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetModelInfo(extractor_pb2.GetModelInfoRequest())
    assert app.server is not None
    assert app.server.metrics_port
    url = f"http://127.0.0.1:{app.server.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    expected = (
        'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="GetModelInfo",'
        'grpc_service="imagesearch.extractor.v1.ExtractorService",grpc_type="unary"} 3.0'
    )
    assert expected in body
    assert 'grpc_server_handling_seconds_count{grpc_method="GetModelInfo"' in body
