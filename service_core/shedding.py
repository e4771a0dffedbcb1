"""Load shedding: calls and request bytes in flight bounded, the excess refused at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from service_core.errors import DeadlineExceeded, ResourceExhausted
from service_core.handlers import responses_of, rewrap

Behavior = Callable[..., Any]
Context = grpc.aio.ServicerContext[Any, Any]


class Budget:
    """What the calls in flight hold: a count and their request bytes.

    Nothing waits for room: a call that does not fit is refused with
    RESOURCE_EXHAUSTED at once, so under overload callers get a fast answer they
    can retry elsewhere instead of queueing until their deadline passes. The
    event loop is single-threaded, so plain integers need no lock.
    """

    def __init__(self, *, max_calls: int, max_bytes: int) -> None:
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self.calls = 0
        self.bytes = 0

    def admit_call(self, method: str) -> None:
        if self.max_calls and self.calls >= self.max_calls:
            raise ResourceExhausted(
                f"{method}: the server is at its limit of {self.max_calls} calls in flight; "
                "retry with backoff",
                reason="SERVER_OVERLOADED",
                metadata={"method": method, "limit": str(self.max_calls)},
            )
        self.calls += 1

    def release_call(self) -> None:
        self.calls -= 1

    def take_bytes(self, size: int, method: str) -> None:
        # One message alone always fits (settings keep max_bytes >= the message
        # limit), so a large request is refused only for the company it keeps.
        if self.max_bytes and self.bytes and self.bytes + size > self.max_bytes:
            raise ResourceExhausted(
                f"{method}: the server holds {self.bytes} request bytes, a {size}-byte "
                f"message would pass its limit of {self.max_bytes}; retry with backoff",
                reason="SERVER_OVERLOADED",
                metadata={"method": method, "limit_bytes": str(self.max_bytes)},
            )
        self.bytes += size

    def give_bytes(self, size: int) -> None:
        self.bytes -= size


def _size(message: Any) -> int:
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size else 0


class SheddingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls beyond the budget; ``exempt`` services (health) are never shed.

    Sits inside the error interceptor, which turns its ResourceExhausted into the
    status. A streamed request is charged one message at a time, from its arrival
    until the handler asks for the next one: what a stream handler buffers beyond
    that is bounded by its own batch settings.
    """

    def __init__(self, budget: Budget, *, exempt: Sequence[str] = ()) -> None:
        self.budget = budget
        self._exempt = tuple(f"/{name}/" for name in exempt)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(self._exempt):
            return handler
        return rewrap(
            handler,
            unary=lambda behavior, streamed: self._unary(behavior, method, streamed=streamed),
            streaming=lambda behavior, streamed: self._streaming(
                behavior, method, streamed=streamed
            ),
        )

    def _admit(self, method: str, context: Context) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(
                f"{method}: the deadline passed before the call started",
                reason="DEADLINE_EXCEEDED_BEFORE_START",
            )
        self.budget.admit_call(method)

    async def _charged(self, requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
        held = 0
        try:
            async for request in requests:
                self.budget.give_bytes(held)
                held = 0
                size = _size(request)
                self.budget.take_bytes(size, method)
                held = size
                yield request
        finally:
            self.budget.give_bytes(held)

    def _unary(self, behavior: Behavior, method: str, *, streamed: bool) -> Behavior:
        async def wrapped(request: Any, context: Context) -> Any:
            self._admit(method, context)
            held = 0
            try:
                if streamed:
                    return await behavior(self._charged(request, method), context)
                size = _size(request)
                self.budget.take_bytes(size, method)
                held = size
                return await behavior(request, context)
            finally:
                self.budget.give_bytes(held)
                self.budget.release_call()

        return wrapped

    def _streaming(self, behavior: Behavior, method: str, *, streamed: bool) -> Behavior:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            self._admit(method, context)
            held = 0
            try:
                if streamed:
                    request = self._charged(request, method)
                else:
                    size = _size(request)
                    self.budget.take_bytes(size, method)
                    held = size
                async for response in responses_of(behavior, request, context):
                    yield response
            finally:
                self.budget.give_bytes(held)
                self.budget.release_call()

        return wrapped
