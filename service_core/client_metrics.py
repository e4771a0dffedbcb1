"""A grpc.aio client interceptor that counts and times calls (go-grpc-prometheus's names)."""

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


class ClientMetricsInterceptor(_UnaryUnary, _UnaryStream):
    """grpc_client_* for unary calls and server streams, the shapes this project calls.

    One logical call counts once however many attempts gRPC's retry policy makes
    under it: the retries happen below interceptors. A call's grpc_code is the one
    its caller sees.
    """

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

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

        async def responses() -> AsyncIterator[Any]:
            code = grpc.StatusCode.UNKNOWN
            try:
                async for response in call:
                    calls.received_total.inc()
                    yield response
                code = await call.code()
            except grpc.aio.AioRpcError as error:
                code = error.code()
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                calls.handled(code, time.perf_counter() - started)

        return responses()

    def _calls(self, details: grpc.aio.ClientCallDetails, kind: RpcType) -> MethodMetrics:
        method = details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        return self._metrics.method(name, kind)
