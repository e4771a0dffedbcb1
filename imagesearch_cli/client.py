"""The CLI's connection to the search service (imagesearch.client), and its errors as one
readable line."""

from __future__ import annotations

import grpc

from imagesearch.client import Connection, SearchClient, SearchError

DEFAULT_SERVER = "127.0.0.1:50052"
# Unary calls that take longer than this are stuck, not slow.
CALL_TIMEOUT_S = 120.0


class CliError(Exception):
    """A failure shown as ``error: <message>`` on stderr, with exit status 1."""


class Client:
    """The typed client, the address it talks to and the collection to use."""

    def __init__(self, connection: Connection, collection: str) -> None:
        self.server = connection.target
        self.collection = collection
        self.api = SearchClient(connection, collection=collection)

    @property
    def collection_name(self) -> str:
        return self.collection or "default"

    def close(self) -> None:
        self.api.close()

    def explain(self, error: SearchError) -> str:
        """The one line that says what went wrong, for any failed call."""
        # The service's own errors carry an ErrorInfo reason; an UNAVAILABLE without
        # one comes from gRPC itself: nothing answered at that address.
        if error.code == grpc.StatusCode.UNAVAILABLE and not error.reason:
            return (
                f"the search service at {self.server} is unreachable ({error.message}); "
                "start it with `make run`, or point --server (or IMAGESEARCH_SERVER) at it"
            )
        message = error.message
        if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and not error.reason:
            message = "the server did not answer in time"
        return f"{error.code.name}: {message}"
