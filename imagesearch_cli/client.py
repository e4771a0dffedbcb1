"""The CLI's connection to the search service, and its errors as one readable line."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import grpc

from imagesearch.search.v1 import search_pb2, search_pb2_grpc

DEFAULT_SERVER = "127.0.0.1:50052"
# The services' default max_message_bytes: big photos go up, big pages come back.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Unary calls that take longer than this are stuck, not slow.
CALL_TIMEOUT_S = 120.0
# GetImage calls in flight at once when looking up many keys.
_WINDOW = 32
_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


class CliError(Exception):
    """A failure shown as ``error: <message>`` on stderr, with exit status 1."""


def code_name(code: int) -> str:
    """A google.rpc.Code number (as in ItemError.code) by its name."""
    return _CODE_NAMES.get(code, f"code {code}")


class Client:
    """One channel to the search service, the collection to use, and its stub."""

    def __init__(
        self,
        server: str,
        collection: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
    ) -> None:
        self.server = server
        self.collection = collection
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if server_name:  # the name the server's certificate is for, if not the address's
            options.append(("grpc.ssl_target_name_override", server_name))
        if credentials is None:
            self.channel = grpc.insecure_channel(server, options=options)
        else:
            self.channel = grpc.secure_channel(server, credentials, options=options)
        self.stub = search_pb2_grpc.SearchServiceStub(self.channel)

    @property
    def collection_name(self) -> str:
        return self.collection or "default"

    def close(self) -> None:
        self.channel.close()

    def stored_images(
        self, keys: Sequence[str], *, include_embedding: bool = False
    ) -> dict[str, search_pb2.StoredImage]:
        """The stored record of each key that the collection holds; unknown keys are left out.

        A window of calls in flight: one at a time, a round trip per key would dominate.
        """
        found: dict[str, search_pb2.StoredImage] = {}
        pending: deque[tuple[str, grpc.Future[search_pb2.GetImageResponse]]] = deque()

        def settle() -> None:
            key, future = pending.popleft()
            try:
                found[key] = future.result().image
            except grpc.RpcError as error:
                if not (isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND):
                    raise

        for key in keys:
            if len(pending) >= _WINDOW:
                settle()
            request = search_pb2.GetImageRequest(
                collection=self.collection, key=key, include_embedding=include_embedding
            )
            pending.append((key, self.stub.GetImage.future(request, timeout=CALL_TIMEOUT_S)))
        while pending:
            settle()
        return found

    def explain(self, error: grpc.RpcError) -> str:
        """The one line that says what went wrong, for any failed call."""
        if not isinstance(error, grpc.Call):
            return f"the call to {self.server} failed: {error}"
        code, details = error.code(), error.details() or ""
        # The server itself answers UNAVAILABLE when its extractor or database is
        # down; only a channel that cannot connect means the server is not there.
        if code == grpc.StatusCode.UNAVAILABLE and not self._connected():
            return (
                f"the search service at {self.server} is unreachable ({details}); start it "
                "with `make run`, or point --server (or IMAGESEARCH_SERVER) at it"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not details:
            details = "the server did not answer in time"
        return f"{code.name}: {details}"

    def _connected(self) -> bool:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=1.0)
        except grpc.FutureTimeoutError:
            return False
        return True
