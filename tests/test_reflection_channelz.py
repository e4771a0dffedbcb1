"""Reflection under both names (v1 and v1alpha), and channelz on its admin port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from service_core.server import GrpcServer, PortInUse, create_server
from service_core.settings import ServerSettings
from tests.test_bootstrap import run_grpcurl

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    started = await create_server(ServerSettings(grace_period_s=0), [])
    try:
        yield started
    finally:
        await started.stop(0)


async def ask(
    port: int, path: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Sends ``requests`` on one reflection stream at ``path``; the answers in order."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(iter(requests))
        return [response async for response in call]


def files(response: reflection_pb2.ServerReflectionResponse) -> dict[str, str]:
    """file name -> package, of a file_descriptor_response."""
    found = {}
    for data in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(data)
        found[proto.name] = proto.package
    return found


async def test_reflection_v1_and_v1alpha_give_the_same_answers(server: GrpcServer) -> None:
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Thing"),
    ]
    v1 = await ask(server.port, V1, *requests)
    v1alpha = await ask(server.port, V1ALPHA, *requests)
    assert [r.SerializeToString() for r in v1] == [r.SerializeToString() for r in v1alpha]
    listed = {s.name for s in v1[0].list_services_response.service}
    assert listed == {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert "grpc.health.v1" in files(v1[1]).values()
    assert v1[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_reflection_describes_itself_under_either_name(server: GrpcServer) -> None:
    for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=f"{package}.ServerReflection"
        )
        [response] = await ask(server.port, V1, request)
        assert list(files(response).values()) == [package]
        data = response.file_descriptor_response.file_descriptor_proto[0]
        proto = descriptor_pb2.FileDescriptorProto.FromString(data)
        method = proto.service[0].method[0]
        assert method.input_type == f".{package}.ServerReflectionRequest"


async def test_channelz_is_off_unless_a_port_is_set(server: GrpcServer) -> None:
    assert server.channelz_port is None


async def test_channelz_tells_of_the_server_and_its_calls(grpcurl: str) -> None:
    started = await create_server(ServerSettings(grace_period_s=0, channelz_port=0), [])
    try:
        assert started.channelz_port is not None
        assert started.channelz_port not in (0, started.port)
        # A call on the main port, so that channelz has one to count.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{started.port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{started.channelz_port}") as channel:
            stub = channelz_pb2_grpc.ChannelzStub(channel)
            servers = await stub.GetServers(channelz_pb2.GetServersRequest())
        assert sum(s.data.calls_succeeded for s in servers.server) >= 1
        # grpcurl finds it through the admin port's own reflection.
        listed = await asyncio.to_thread(run_grpcurl, grpcurl, started.channelz_port, "list")
        assert listed.returncode == 0, listed.stderr
        assert "grpc.channelz.v1.Channelz" in listed.stdout.split()
    finally:
        await started.stop(0)


async def test_a_taken_channelz_port_stops_start_up(server: GrpcServer) -> None:
    with pytest.raises(PortInUse, match="for channelz"):
        await create_server(ServerSettings(channelz_port=server.port), [])
