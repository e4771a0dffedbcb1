"""The one server interceptor: domain errors to status codes, and request metrics."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service_core.errors import InvalidArgument, ServiceError, rich_status
from service_core.handlers import responses_of, rewrap
from service_core.metrics import RpcMetrics, rpc_type

log = logging.getLogger(__name__)
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE.value[0], grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}

# A handler's behaviour: (request or request iterator, context) -> response(s).
Behavior = Callable[..., Any]


class Malformed:
    """Stands in for a request message whose bytes did not parse.

    grpc.aio reports a deserializer's exception as UNKNOWN on unary calls and as
    INTERNAL with a logged traceback on streams; returning this instead lets the
    handler wrapper answer INVALID_ARGUMENT, the truth about such a request.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    parse = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        # Protobuf raises DecodeError for bad wire data, and also for nesting past
        # its recursion limit (a Struct 100 levels deep); RecursionError and
        # ValueError are the pure-Python parser's forms of the same.
        except (DecodeError, RecursionError, ValueError) as error:
            return Malformed(error)

    return deserialize


def _checked(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidArgument(f"the request is not a valid protobuf message: {request.error}")
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request)


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps ServiceError to its status, anything else to a generic INTERNAL.

    The caller of a failed call sees a ServiceError's own message, or for an
    unexpected exception only "internal error" and a correlation id; the
    traceback goes to the log under that id. Every call is counted and timed.
    """

    def __init__(self, metrics: RpcMetrics) -> None:
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
        return rewrap(
            handler,
            unary=lambda behavior, streamed: self._unary(behavior, method, streamed=streamed),
            streaming=lambda behavior, streamed: self._streaming(
                behavior, method, streamed=streamed
            ),
            request_deserializer=_safe(handler.request_deserializer),
        )

    def _unary(self, behavior: Behavior, method: str, *, streamed: bool) -> Behavior:
        calls = self._metrics.method(
            method, rpc_type(request_streams=streamed, response_streams=False)
        )

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
            calls.started_total.inc()
            try:
                if streamed:
                    request = calls.counted(_checked_stream(request), calls.received_total)
                else:
                    calls.received_total.inc()
                    request = _checked(request)
                response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                if code == grpc.StatusCode.OK:
                    calls.sent_total.inc()
                return response
            except BaseException as error:  # noqa: BLE001 - classified, then re-raised
                code = _code_for(error, context)
                await _end_call(error, context, method)
            finally:
                calls.handled(code, time.perf_counter() - started)

        return wrapped

    def _streaming(self, behavior: Behavior, method: str, *, streamed: bool) -> Behavior:
        calls = self._metrics.method(
            method, rpc_type(request_streams=streamed, response_streams=True)
        )

        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
            calls.started_total.inc()
            try:
                if streamed:
                    request = calls.counted(_checked_stream(request), calls.received_total)
                else:
                    calls.received_total.inc()
                    request = _checked(request)
                async for response in responses_of(behavior, request, context):
                    calls.sent_total.inc()
                    yield response
                code = context.code() or grpc.StatusCode.OK
            except BaseException as error:  # noqa: BLE001 - classified, then re-raised
                code = _code_for(error, context)
                await _end_call(error, context, method)
            finally:
                calls.handled(code, time.perf_counter() - started)

        return wrapped


def _code_for(error: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status a call that raised ``error`` ends with."""
    if isinstance(error, grpc.aio.AbortError):  # the handler aborted by itself
        code: grpc.StatusCode | None = context.code()
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(error, ServiceError):
        return error.code
    if _unimplemented(error, context):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(error, Exception):
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.CANCELLED  # CancelledError, GeneratorExit, KeyboardInterrupt


async def _end_call(
    error: BaseException, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> None:
    """Ends the call that raised ``error`` with a google.rpc.Status; always raises.

    The status travels as grpc-status-details-bin trailing metadata (grpcio-status),
    beside any trailing metadata the call already set.
    """
    if isinstance(error, ServiceError):
        log.info(
            "%s failed: %s",
            method,
            error.message,
            extra={"code": error.code.name, "reason": error.reason},
        )
        await _abort(context, error.status())
    if isinstance(error, grpc.aio.AbortError) or not isinstance(error, Exception):
        raise error
    if _unimplemented(error, context):
        # A generated base servicer's stub (grpc.health.v1 Health/List in
        # grpcio-health-checking) sets UNIMPLEMENTED, then raises.
        await _abort(
            context,
            rich_status(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not implemented",
                reason="UNIMPLEMENTED",
                metadata={"method": method},
            ),
        )
    correlation_id = uuid.uuid4().hex[:16]
    log.error(
        "%s raised an unexpected error",
        method,
        exc_info=error,
        extra={"correlation_id": correlation_id},
    )
    await _abort(
        context,
        rich_status(
            grpc.StatusCode.INTERNAL,
            f"internal error (correlation id {correlation_id})",
            reason="INTERNAL",
            metadata={"correlation_id": correlation_id},
        ),
    )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> None:
    wire = rpc_status.to_status(status)
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(
        wire.code, wire.details, (*kept, *wire.trailing_metadata, *_pushback(status))
    )


def _pushback(status: status_pb2.Status) -> tuple[tuple[str, str], ...]:
    """The RetryInfo as gRPC's own retry pushback, which a client's retry policy obeys:
    wait that long, or (a transient code the server says waiting cannot cure) do not
    retry at all."""
    for detail in status.details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return (("grpc-retry-pushback-ms", str(retry.retry_delay.ToMilliseconds())),)
    if status.code in _TRANSIENT:
        return (("grpc-retry-pushback-ms", "-1"),)
    return ()


def _unimplemented(error: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return isinstance(error, NotImplementedError) and (
        context.code() == grpc.StatusCode.UNIMPLEMENTED
    )
