"""Rewrapping a gRPC method handler's behaviour, whichever of the four call shapes it has."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]
# (the handler's behaviour, whether its request is a stream) -> the wrapped behaviour
Wrap = Callable[[Behavior, bool], Behavior]


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    *,
    unary: Wrap,
    streaming: Wrap,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its behaviour wrapped: ``unary`` for calls that answer with one
    message, ``streaming`` for those that answer with a stream. The serializers are
    kept, the request deserializer too unless one is given."""
    codec = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, False), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary, True), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream, False), **codec)
    assert handler.stream_stream is not None  # one of the four is always set
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream, True), **codec)


async def responses_of(
    behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour, whether it yields them (an async
    generator) or writes them itself with context.write() (then none come out here)."""
    responses = behavior(request, context)
    if inspect.isasyncgen(responses):
        async for response in responses:
            yield response
    else:
        await responses
