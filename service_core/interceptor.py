"""The one server interceptor: domain errors to status codes, and request metrics."""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service_core.errors import ServiceError
from service_core.metrics import Metrics

log = logging.getLogger(__name__)

# A handler's behaviour: (request or request iterator, context) -> response(s).
Behavior = Callable[..., Any]


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps ServiceError to its status, anything else to a generic INTERNAL.

    The caller of a failed call sees a ServiceError's own message, or for an
    unexpected exception only "internal error" and a correlation id; the
    traceback goes to the log under that id. Every call is counted and timed.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method), **codec
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method), **codec
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method), **codec
            )
        assert handler.stream_stream is not None  # one of the four is always set
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method), **codec
        )

    def _unary(self, behavior: Behavior, method: str) -> Behavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
            self._metrics.started(method)
            try:
                response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException as error:  # noqa: BLE001 - classified, then re-raised
                code = _code_for(error, context)
                await _end_call(error, context, method)
            finally:
                self._metrics.handled(method, code, time.perf_counter() - started)

        return wrapped

    def _streaming(self, behavior: Behavior, method: str) -> Behavior:
        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
            self._metrics.started(method)
            try:
                responses = behavior(request, context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:  # a handler that writes with context.write()
                    await responses
                code = context.code() or grpc.StatusCode.OK
            except BaseException as error:  # noqa: BLE001 - classified, then re-raised
                code = _code_for(error, context)
                await _end_call(error, context, method)
            finally:
                self._metrics.handled(method, code, time.perf_counter() - started)

        return wrapped


def _code_for(error: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status a call that raised ``error`` ends with."""
    if isinstance(error, grpc.aio.AbortError):  # the handler aborted by itself
        code: grpc.StatusCode | None = context.code()
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(error, ServiceError):
        return error.code
    if isinstance(error, Exception):
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.CANCELLED  # CancelledError, GeneratorExit, KeyboardInterrupt


async def _end_call(
    error: BaseException, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> None:
    """Ends the call that raised ``error``; always raises."""
    if isinstance(error, ServiceError):
        log.info("%s failed: %s", method, error.message, extra={"code": error.code.name})
        await context.abort(error.code, error.message)
    if isinstance(error, grpc.aio.AbortError) or not isinstance(error, Exception):
        raise error
    correlation_id = uuid.uuid4().hex[:16]
    log.error(
        "%s raised an unexpected error",
        method,
        exc_info=error,
        extra={"correlation_id": correlation_id},
    )
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (correlation id {correlation_id})"
    )
