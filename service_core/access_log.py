"""Request ids and the access log: one line per call, and the id passed on to our peers.

A call's ``x-request-id`` metadata is kept when it is a sane id (1-128 visible ASCII
characters), else one is made up; either way it goes back to the caller as trailing
metadata, onto every log line the call writes (``service_core.logs.request_id``), and
with each call this service makes to another one (``RequestIdForwarder``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from service_core import logs
from service_core.handlers import responses_of, rewrap
from service_core.logs import request_id

log = logging.getLogger("access")

REQUEST_ID_KEY = "x-request-id"
# Visible ASCII only: no spaces or control characters to forge log lines or fields with,
# and short enough that a hostile caller cannot bloat every line of the log.
_VALID_ID = re.compile(r"[\x21-\x7e]{1,128}")

Behavior = Callable[..., Any]
Metadata = Sequence[tuple[str, str | bytes]]


def _given_id(metadata: Metadata | None) -> str | bytes | None:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            return value
    return None


def choose_request_id(given: str | bytes | None) -> tuple[str, bool]:
    """The call's id, and whether a given one was refused (then a fresh one stands in)."""
    if isinstance(given, str) and _VALID_ID.fullmatch(given):
        return given, False
    return uuid.uuid4().hex, given is not None


class _Call:
    """One call's access-log state: its id, when it began, how it ended."""

    def __init__(self, method: str, given: str | bytes | None) -> None:
        self.method = method
        self.id, self.replaced = choose_request_id(given)
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.UNKNOWN

    def ended(
        self, error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        code: grpc.StatusCode | None = context.code()
        if code is not None:
            self.code = code
        elif error is None:
            self.code = grpc.StatusCode.OK
        elif isinstance(error, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Sets each call's request id and logs one line when it ends.

    Successful calls are logged at ``sample_rate`` (1: all, 0: none); a call that
    ends with any other status is always logged. It sits outside the error
    interceptor, so it sees the status that interceptor gave.
    """

    def __init__(
        self,
        sample_rate: float,
        *,
        traced: bool = False,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self._rate = sample_rate
        self._traced = traced
        self._sample = sample

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
        given = _given_id(handler_call_details.invocation_metadata)
        return rewrap(
            handler,
            unary=lambda behavior, _: self._unary(behavior, method, given),
            streaming=lambda behavior, _: self._streaming(behavior, method, given),
        )

    def _unary(self, behavior: Behavior, method: str, given: str | bytes | None) -> Behavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(method, given)
            token = request_id.set(call.id)
            logs.caller.set(None)  # the auth interceptor, inside this one, names the caller
            failure: BaseException | None = None
            try:
                _return_id(context, call.id)
                return await behavior(request, context)
            except BaseException as error:
                failure = error
                raise
            finally:
                call.ended(failure, context)
                self._log(call, context)
                request_id.reset(token)

        return wrapped

    def _streaming(self, behavior: Behavior, method: str, given: str | bytes | None) -> Behavior:
        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = _Call(method, given)
            # Not reset on the way out: a generator may end in another context than the
            # one it began in, and the call's task ends with it anyway.
            request_id.set(call.id)
            logs.caller.set(None)
            failure: BaseException | None = None
            try:
                _return_id(context, call.id)
                async for response in responses_of(behavior, request, context):
                    yield response
            except BaseException as error:
                failure = error
                raise
            finally:
                call.ended(failure, context)
                self._log(call, context)

        return wrapped

    def _log(self, call: _Call, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if call.code == grpc.StatusCode.OK and (
            self._rate <= 0 or (self._rate < 1 and self._sample() >= self._rate)
        ):
            return
        fields: dict[str, Any] = {
            "method": call.method,
            "code": call.code.name,
            "duration_ms": round((time.perf_counter() - call.started) * 1000, 2),
            "peer": context.peer(),
            "request_id": call.id,
        }
        caller = logs.caller.get()
        if caller is not None:
            fields["caller"] = caller
        if call.replaced:
            fields["request_id_replaced"] = True  # the caller's was not a valid id
        if self._traced:
            fields.update(_trace_fields())
        level = logging.INFO if call.code == grpc.StatusCode.OK else logging.WARNING
        log.log(level, "%s %s", call.method, call.code.name, extra=fields)


def _return_id(context: grpc.aio.ServicerContext[Any, Any], call_id: str) -> None:
    """Puts the call's id in its trailing metadata, which every ending carries (the
    error interceptor's abort keeps it). Not in response headers: gRPC commits a call
    once its headers arrive, so a refused call (shed, an extractor queue full) could then
    no longer be retried by the caller's retry policy."""
    context.set_trailing_metadata(((REQUEST_ID_KEY, call_id),))


def _trace_fields() -> dict[str, str]:
    from opentelemetry import trace

    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return {}
    return {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}


def _forwarded(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    current = request_id.get()
    metadata = list(details.metadata or ())
    if current is None or any(key == REQUEST_ID_KEY for key, _ in metadata):
        return details
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata, (REQUEST_ID_KEY, current)),
        details.credentials,
        details.wait_for_ready,
    )


class RequestIdForwarder(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Sends the id of the call being served with each call made while serving it."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_forwarded(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_forwarded(client_call_details), request)

    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(_forwarded(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(_forwarded(client_call_details), request_iterator)
