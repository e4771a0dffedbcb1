"""Typed exceptions for failed calls and items, with the google.rpc details they carry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

# Where gRPC carries a google.rpc.Status beside the code and message (grpcio-status).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One request field at fault: its path (``items[3].embedding.vector.values``) and why."""

    field: str
    description: str
    reason: str = ""


@dataclass(eq=False)
class SearchError(Exception):
    """A call or an item that failed, with what the service said about it.

    ``reason`` is the stable UPPER_SNAKE name of the error kind (docs/errors.md), the
    thing to branch on; ``message`` is for people. ``retry_delay`` (seconds) is set
    when the service says a retry after that long may succeed.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    retry_delay: float | None = None

    # The status code an exception class stands for; SearchError itself for the rest.
    status_code: ClassVar[grpc.StatusCode | None] = None

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    @property
    def retryable(self) -> bool:
        return self.retry_delay is not None

    @property
    def field_path(self) -> str | None:
        """The first violated field's path, if the service named one."""
        return self.field_violations[0].field if self.field_violations else None


class InvalidArgument(SearchError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SearchError):
    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SearchError):
    status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SearchError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(SearchError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SearchError):
    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(SearchError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(SearchError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SearchError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class Cancelled(SearchError):
    status_code = grpc.StatusCode.CANCELLED


class Internal(SearchError):
    status_code = grpc.StatusCode.INTERNAL


_CLASSES: dict[grpc.StatusCode, type[SearchError]] = {
    kind.status_code: kind
    for kind in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        Cancelled,
        Internal,
    )
    if kind.status_code is not None
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_status(status: status_pb2.Status) -> SearchError:
    """The typed exception for a google.rpc.Status (a call's, or an item's)."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    reason, domain, metadata = "", "", {}
    violations: list[FieldViolation] = []
    retry_delay = None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Unpack(bad):
            violations += [
                FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations
            ]
        elif detail.Unpack(retry):
            retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
    return _CLASSES.get(code, SearchError)(
        code=code,
        message=status.message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_delay=retry_delay,
    )


def from_rpc_error(error: grpc.RpcError) -> SearchError:
    """The typed exception for a failed call, from its status and trailing metadata.

    A status from something other than the service (the channel could not connect,
    the deadline passed on the way) has no details: the code and message only.
    """
    # A sync call's error is also a grpc.Call; grpc.aio's AioRpcError is not, but has
    # the same three methods.
    call: Any = error
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return SearchError(code=grpc.StatusCode.UNKNOWN, message=str(error))
    code, message, trailing = call.code(), call.details() or "", call.trailing_metadata()
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                break
            if status.code == code.value[0]:
                return from_status(status)
    return _CLASSES.get(code, SearchError)(code=code, message=message)
