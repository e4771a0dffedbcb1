"""What a server built by service_core answers to malformed wire data and odd calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from service_core.server import GrpcServer, PortInUse, create_server
from service_core.settings import ServerSettings

GARBAGE = b"\xff\xff\xff\xff\x0f"  # field 0x1fffff..., wire type 7: never valid


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    started = await create_server(ServerSettings(grace_period_s=0), [])
    yield started
    await started.stop(0)


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


async def test_malformed_unary_request_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    check = channel.unary_unary("/grpc.health.v1.Health/Check", None, None)  # raw bytes
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await check(GARBAGE, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (raised.value.details() or "")


async def test_malformed_stream_message_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    reflect = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    info = channel.stream_stream(reflect, None, None)
    call = info(iter([GARBAGE]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_well_formed_request_still_passes(channel: grpc.aio.Channel) -> None:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    response = await check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_list_is_unimplemented(channel: grpc.aio.Channel) -> None:
    list_health = channel.unary_unary("/grpc.health.v1.Health/List", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await list_health(b"", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_port_in_use_is_an_error_naming_it(server: GrpcServer) -> None:
    with pytest.raises(PortInUse, match=f"port {server.port} is already in use"):
        await create_server(ServerSettings(port=server.port), [])
