"""Domain errors that carry their gRPC status; the error interceptor maps them."""

from __future__ import annotations

from typing import ClassVar

import grpc


class ServiceError(Exception):
    """An error the caller may see: its message is sent as the status details.

    Raise a subclass from servicers and the code below them; never build status
    codes by hand. Anything that is not a ServiceError reaches the caller as a
    generic INTERNAL with a correlation id, and its details stay in the log.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request is malformed; retrying it unchanged cannot succeed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """A named collection, key or resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """The thing to create is already there."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The system is not in a state that allows the request (e.g. a model mismatch)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """A limit was hit: a queue is full, an image is too large."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """A dependency (extractor, database) cannot be reached; retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE


class Internal(ServiceError):
    """A dependency failed in a way that is neither the caller's fault nor transient."""

    code = grpc.StatusCode.INTERNAL


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could be done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    """The caller sent no credentials, or ones that match no configured caller."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller is known, but its role does not allow the call."""

    code = grpc.StatusCode.PERMISSION_DENIED


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


def error_for(code: grpc.StatusCode, message: str) -> ServiceError:
    """The domain error that carries a dependency's status ``code`` on to our caller.

    Codes without a class here (UNIMPLEMENTED from a wrong peer, say) are reported
    as UNAVAILABLE: the dependency cannot serve us as it stands. So are the peer's
    UNAUTHENTICATED and PERMISSION_DENIED: they are about this service's own
    credentials, and passed on as they are they would tell our caller that theirs
    were refused.
    """
    return _BY_CODE.get(code, Unavailable)(message)
