"""Load shedding: calls and request bytes beyond the bounds are refused at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_core.server import GrpcServer, Service, create_server
from service_core.settings import ServerSettings

METHOD = "/test.Hold/Wait"
STREAM = "/test.Hold/Collect"


class Hold:
    """A real handler that holds its call until released: calls stay in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def wait(self, request: struct_pb2.Struct, context: Any) -> struct_pb2.Struct:
        self.entered += 1
        await self.release.wait()
        return request

    async def collect(self, requests: AsyncIterator[struct_pb2.Struct], context: Any) -> Any:
        count = 0
        async for _ in requests:
            count += 1
        return struct_pb2.Struct(fields={"count": struct_pb2.Value(number_value=count)})

    def register(self, server: grpc.aio.Server) -> None:
        codec: dict[str, Any] = {
            "request_deserializer": struct_pb2.Struct.FromString,
            "response_serializer": struct_pb2.Struct.SerializeToString,
        }
        handlers = {
            "Wait": grpc.unary_unary_rpc_method_handler(self.wait, **codec),
            "Collect": grpc.stream_unary_rpc_method_handler(self.collect, **codec),
        }
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Hold", handlers)]
        )


Start = Callable[..., Awaitable[tuple[Hold, grpc.aio.Channel]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[tuple[GrpcServer, grpc.aio.Channel, Hold]] = []

    async def run(**overrides: Any) -> tuple[Hold, grpc.aio.Channel]:
        hold = Hold()
        server = await create_server(
            ServerSettings(grace_period_s=0, **overrides), [Service("test.Hold", hold.register)]
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, channel, hold))
        return hold, channel

    yield run
    for server, channel, hold in started:
        hold.release.set()
        await channel.close(None)
        await server.stop(0)


def payload(size: int) -> struct_pb2.Struct:
    return struct_pb2.Struct(fields={"p": struct_pb2.Value(string_value="x" * size)})


def wait_call(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        METHOD,
        request_serializer=struct_pb2.Struct.SerializeToString,
        response_deserializer=struct_pb2.Struct.FromString,
    )


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_calls_beyond_the_bound_are_refused_at_once_and_health_still_answers(
    start: Start,
) -> None:
    hold, channel = await start(max_calls_in_flight=2)
    call = wait_call(channel)
    held = [asyncio.ensure_future(call(payload(1), timeout=30)) for _ in range(2)]
    await until(lambda: hold.entered == 2)

    began = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(payload(1), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 calls in flight" in (raised.value.details() or "")
    assert time.perf_counter() - began < 1.0  # refused, not queued until the deadline

    health = health_pb2_grpc.HealthStub(channel)
    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # probes are never shed

    hold.release.set()
    await asyncio.gather(*held)
    await call(payload(1), timeout=5)  # room again as soon as the load is gone


async def test_request_bytes_beyond_the_bound_are_refused(start: Start) -> None:
    hold, channel = await start(max_message_bytes=64 * 1024, max_request_bytes_in_flight=100 * 1024)
    call = wait_call(channel)
    held = [asyncio.ensure_future(call(payload(40_000), timeout=30)) for _ in range(2)]
    await until(lambda: hold.entered == 2)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(payload(40_000), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "request bytes" in (raised.value.details() or "")
    small = asyncio.ensure_future(call(payload(100), timeout=30))
    await until(lambda: hold.entered == 3)  # a small one still fits beside them

    hold.release.set()
    await asyncio.gather(*held, small)


async def test_a_stream_is_charged_one_message_at_a_time(start: Start) -> None:
    _, channel = await start(max_message_bytes=64 * 1024, max_request_bytes_in_flight=64 * 1024)
    collect = channel.stream_unary(
        STREAM,
        request_serializer=struct_pb2.Struct.SerializeToString,
        response_deserializer=struct_pb2.Struct.FromString,
    )
    # Ten 40 kB messages, 400 kB in all: more than the bound, never more at once.
    response = await collect(iter([payload(40_000) for _ in range(10)]), timeout=30)
    assert response.fields["count"].number_value == 10
