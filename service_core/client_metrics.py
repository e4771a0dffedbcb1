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
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor


def client_metrics_interceptors(metrics: RpcMetrics) -> list[Any]:
    """The interceptors that fill ``metrics`` (grpc_client_*) for a channel's calls.

    One per call shape: a grpc.aio channel files an interceptor under the first shape
    it implements only. They cover unary calls and server streams, the calls this
    project makes. One logical call counts once however many attempts gRPC's retry
    policy makes under it (retries happen below interceptors); its grpc_code is the
    one its caller sees.
    """
    return [_UnaryMetrics(metrics), _ServerStreamMetrics(metrics)]


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


class _ServerStreamMetrics(_Counting, _UnaryStream):
    def __init__(self, metrics: RpcMetrics) -> None:
        super().__init__(metrics)
        self._pending: set[asyncio.Future[None]] = set()

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
        # Counted when the call ends, however it ends: read to the end, or left unread
        # (the caller stopped iterating) until cancelled or the channel closed.
        ended = asyncio.ensure_future(self._ended(call, calls, started))
        self._pending.add(ended)
        ended.add_done_callback(self._pending.discard)

        async def responses() -> AsyncIterator[Any]:
            async for response in call:
                calls.received_total.inc()
                yield response

        return responses()

    @staticmethod
    async def _ended(call: Any, calls: MethodMetrics, started: float) -> None:
        try:
            code: grpc.StatusCode = await call.code()
        except asyncio.CancelledError:  # the loop is closing under the call
            code = grpc.StatusCode.CANCELLED
        calls.handled(code, time.perf_counter() - started)
