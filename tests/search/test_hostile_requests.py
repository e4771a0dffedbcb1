"""Requests only a hostile client sends, against the real search service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.search.conftest import StartSearch

PREFIX = "/imagesearch.search.v1.SearchService/"


@pytest.fixture
async def channel(start_search: StartSearch) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a vectors-only search service, for raw bytes both ways."""
    app, _ = await start_search(extractor_address="127.0.0.1:1")
    assert app.server is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}") as opened:
        yield opened


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand: no parser limits apply."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_struct(depth: int) -> bytes:
    """A google.protobuf.Struct nesting {"a": {"a": ...}} ``depth`` levels."""
    inner = b""
    for _ in range(depth):
        value = _field(5, inner)  # Value.struct_value
        inner = _field(1, _field(1, b"a") + _field(2, value))  # Struct.fields map entry
    return inner


def raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(PREFIX + method, None, None)


async def test_a_filter_nested_past_protobufs_limit_is_invalid(channel: grpc.aio.Channel) -> None:
    request = _field(1, b"default") + _field(3, b"cat") + _field(7, deep_struct(200))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw(channel, "Search")(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_malformed_bytes_are_invalid_on_every_unary_method(channel: grpc.aio.Channel) -> None:
    for method in ("Search", "Ingest", "GetImage", "DeleteImages", "ListCollections"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await raw(channel, method)(b"\xff\xff\xff\xff\x0f", timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method


async def test_a_stream_message_nested_past_the_limit_is_invalid(channel: grpc.aio.Channel) -> None:
    ingest = channel.stream_stream(PREFIX + "IngestStream", None, None)
    item = _field(1, b"k") + _field(4, deep_struct(200))  # IngestItem.key, .metadata
    call = ingest(iter([_field(1, b"default") + _field(2, item)]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
