"""Domain errors that carry their gRPC status and its structured details; the error
interceptor maps them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

# ErrorInfo.domain of every error this project's services raise.
DOMAIN = "imagesearch.dev"
# What a caller is told to wait before retrying a transient error when the raise site
# knows no better: long enough for a queue to drain or a pod to come up, short enough
# that a retried call still fits a typical deadline.
DEFAULT_RETRY_S = 1.0


class ServiceError(Exception):
    """An error the caller may see: its message is sent as the status details.

    Raise a subclass from servicers and the code below them; never build status
    codes by hand. Anything that is not a ServiceError reaches the caller as a
    generic INTERNAL with a correlation id, and its details stay in the log.

    On the wire it is a google.rpc.Status (docs/errors.md): an ErrorInfo with
    ``reason`` (a stable UPPER_SNAKE name of the error kind, the class's own when
    none is given) and ``metadata``; a BadRequest field violation when ``field``
    names the request field at fault (a path such as
    ``items[3].embedding.vector.values``); a RetryInfo of ``retry_after`` seconds
    for the transient kinds (UNAVAILABLE, RESOURCE_EXHAUSTED) unless
    ``retryable=False`` says that waiting cannot help.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"
    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field = field
        self.metadata = dict(metadata or {})
        if retry_after is None and self.transient and retryable:
            retry_after = DEFAULT_RETRY_S
        self.retry_after = retry_after if retryable else None

    def status(self) -> status_pb2.Status:
        """The google.rpc.Status this error ends a call (or fails an item) with."""
        return rich_status(
            self.code,
            self.message,
            reason=self.reason,
            field=self.field,
            metadata=self.metadata,
            retry_after=self.retry_after,
        )


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    field: str | None = None,
    metadata: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status with an ErrorInfo, and a BadRequest and RetryInfo where given."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    details: list[Message] = [info]
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field, description=message, reason=reason
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        packed.append(wrapped)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


class InvalidArgument(ServiceError):
    """The request is malformed; retrying it unchanged cannot succeed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """A named collection, key or resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    """The thing to create is already there."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    """The system is not in a state that allows the request (e.g. a model mismatch)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    """A limit was hit: a queue is full, an image is too large."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"
    transient = True


class Unavailable(ServiceError):
    """A dependency (extractor, database) cannot be reached; retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    transient = True


class Internal(ServiceError):
    """A dependency failed in a way that is neither the caller's fault nor transient."""

    code = grpc.StatusCode.INTERNAL


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could be done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unauthenticated(ServiceError):
    """The caller sent no credentials, or ones that match no configured caller."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """The caller is known, but its role does not allow the call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}


def error_for(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    field: str | None = None,
    metadata: Mapping[str, str] | None = None,
    retry_after: float | None = None,
    retryable: bool = True,
) -> ServiceError:
    """The domain error that carries a dependency's status ``code`` on to our caller.

    Codes without a class here (UNIMPLEMENTED from a wrong peer, say) are reported
    as UNAVAILABLE: the dependency cannot serve us as it stands. So are the peer's
    UNAUTHENTICATED and PERMISSION_DENIED: they are about this service's own
    credentials, and passed on as they are they would tell our caller that theirs
    were refused. The peer's reason and retry delay are kept only where its code is.
    """
    kind = _BY_CODE.get(code, Unavailable)
    if kind.code != code:
        reason, retry_after, retryable = None, None, True
    return kind(
        message,
        reason=reason,
        field=field,
        metadata=metadata,
        retry_after=retry_after,
        retryable=retryable,
    )
