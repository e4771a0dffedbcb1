"""Readiness follows PostgreSQL; liveness does not."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devenv.postgres import LocalPostgres
from service_core.server import LIVENESS_SERVICE
from tests.search.conftest import StartSearch

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(health: health_pb2_grpc.HealthStub, service: str) -> int:
    reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def until(health: health_pb2_grpc.HealthStub, service: str, wanted: int) -> None:
    for _ in range(100):
        if await status(health, service) == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health {service!r} never became {wanted}")


async def test_not_serving_while_the_database_is_down_and_serving_when_it_returns(
    start_search: StartSearch, postgres: LocalPostgres
) -> None:
    app, _ = await start_search(extractor_address="127.0.0.1:1", database_check_s=0.2)
    assert app.server is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert await status(health, "") == SERVING
        await asyncio.to_thread(postgres.stop)
        try:
            await until(health, "", NOT_SERVING)
            await until(health, "imagesearch.search.v1.SearchService", NOT_SERVING)
            assert await status(health, LIVENESS_SERVICE) == SERVING
        finally:
            await asyncio.to_thread(postgres.start)
        await until(health, "", SERVING)  # the same process: no restart
        assert await status(health, LIVENESS_SERVICE) == SERVING
