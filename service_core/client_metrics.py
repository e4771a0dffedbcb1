"""grpc.aio client interceptors that count and time calls (go-grpc-prometheus's names)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

from service_core.metrics import MethodMetrics, RpcMetrics, RpcType

if TYPE_CHECKING:  # generic in grpc-stubs only
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


def client_metrics_interceptors(metrics: RpcMetrics) -> list[Any]:
    """The interceptors that fill ``metrics`` (grpc_client_*) for a channel's calls.

    One per call shape: a grpc.aio channel files an interceptor under the first shape
    it implements only. One logical call counts once however many attempts gRPC's
    retry policy makes under it (retries happen below interceptors); its grpc_code is
    the one its caller sees.
    """
    return [
        _UnaryMetrics(metrics),
        _ServerStreamMetrics(metrics),
        _ClientStreamMetrics(metrics),
        _BidiStreamMetrics(metrics),
    ]


class _Counting:
    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def _calls(self, details: grpc.aio.ClientCallDetails, kind: RpcType) -> MethodMetrics:
        method = details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        return self._metrics.method(name, kind)


class _UnaryMetrics(_Counting, _UnaryUnary):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        calls = self._calls(client_call_details, "unary")
        started = time.perf_counter()
        calls.started_total.inc()
        calls.sent_total.inc()
        try:
            call = await continuation(client_call_details, request)
            code: grpc.StatusCode = await call.code()
        except asyncio.CancelledError:
            calls.handled(grpc.StatusCode.CANCELLED, time.perf_counter() - started)
            raise
        if code == grpc.StatusCode.OK:
            calls.received_total.inc()
        calls.handled(code, time.perf_counter() - started)
        # Awaited again by the caller, the finished call gives its response or raises.
        return call


class _Ending(_Counting):
    """Counts a call's end when it comes, however it comes: a stream read to the end, or
    left unread (the caller stopped iterating) until cancelled or its channel closed."""

    def __init__(self, metrics: RpcMetrics) -> None:
        super().__init__(metrics)
        self._pending: set[asyncio.Future[None]] = set()

    def _count_end(
        self, call: Any, calls: MethodMetrics, started: float, *, one_response: bool
    ) -> None:
        ended = asyncio.ensure_future(self._ended(call, calls, started, one_response))
        self._pending.add(ended)
        ended.add_done_callback(self._pending.discard)

    @staticmethod
    async def _ended(call: Any, calls: MethodMetrics, started: float, one_response: bool) -> None:
        try:
            code: grpc.StatusCode = await call.code()
        except asyncio.CancelledError:  # the loop is closing under the call
            code = grpc.StatusCode.CANCELLED
        if one_response and code == grpc.StatusCode.OK:
            calls.received_total.inc()
        calls.handled(code, time.perf_counter() - started)


def _counted_responses(call: Any, calls: MethodMetrics) -> AsyncIterator[Any]:
    async def responses() -> AsyncIterator[Any]:
        async for response in call:
            calls.received_total.inc()
            yield response

    return responses()


def _counted_requests(requests: Any, calls: MethodMetrics) -> AsyncIterator[Any]:
    """The request stream, each message counted as gRPC takes it. grpc.aio hands
    interceptors an iterator even when the caller writes with ``call.write()``."""

    async def counted() -> AsyncIterator[Any]:
        if hasattr(requests, "__aiter__"):
            async for request in requests:
                calls.sent_total.inc()
                yield request
        else:
            for request in requests:
                calls.sent_total.inc()
                yield request

    return counted()


class _ServerStreamMetrics(_Ending, _UnaryStream):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        calls = self._calls(client_call_details, "server_stream")
        started = time.perf_counter()
        calls.started_total.inc()
        calls.sent_total.inc()
        call = await continuation(client_call_details, request)
        self._count_end(call, calls, started, one_response=False)
        return _counted_responses(call, calls)


class _ClientStreamMetrics(_Ending, _StreamUnary):
    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        calls = self._calls(client_call_details, "client_stream")
        started = time.perf_counter()
        calls.started_total.inc()
        call = await continuation(client_call_details, _counted_requests(request_iterator, calls))
        self._count_end(call, calls, started, one_response=True)
        return call


class _BidiStreamMetrics(_Ending, _StreamStream):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        calls = self._calls(client_call_details, "bidi_stream")
        started = time.perf_counter()
        calls.started_total.inc()
        call = await continuation(client_call_details, _counted_requests(request_iterator, calls))
        self._count_end(call, calls, started, one_response=False)
        return _counted_responses(call, calls)
