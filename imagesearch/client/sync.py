"""SearchClient: the same calls as AsyncSearchClient, for code without an event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from imagesearch.client.aio import AsyncSearchClient, QueryValue
from imagesearch.client.connection import Connection
from imagesearch.client.types import Item, ItemResult
from imagesearch.search.v1 import search_pb2

T = TypeVar("T")


class SearchClient:
    """A blocking client: each method runs AsyncSearchClient's on a private event loop.

    One implementation of every call (deadlines, retries, typed errors, the ingest
    stream's back-pressure) serves both clients; the loop lives on a daemon thread
    that close() stops. Use as ``with SearchClient(Connection(target)) as client``.
    """

    def __init__(self, connection: Connection | None = None, *, collection: str = "") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="imagesearch-client", daemon=True
        )
        self._thread.start()

        async def build() -> AsyncSearchClient:
            # grpc.aio binds a channel to the loop it is made on.
            return AsyncSearchClient(connection, collection=collection)

        self._client = self._run(build())

    @property
    def connection(self) -> Connection:
        return self._client.connection

    @property
    def collection(self) -> str:
        return self._client.collection

    @collection.setter
    def collection(self, name: str) -> None:
        self._client.collection = name

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def _iterate(self, results: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(anext(results))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            # Left early (break, an exception): end the call on its loop.
            if not self._loop.is_closed():
                self._run(results.aclose())  # type: ignore[attr-defined]

    def search(self, query: QueryValue, **options: Any) -> search_pb2.SearchResponse:
        """See AsyncSearchClient.search."""
        return self._run(self._client.search(query, **options))

    def search_pages(
        self, query: QueryValue, **options: Any
    ) -> Iterator[search_pb2.SearchResponse]:
        return self._iterate(self._client.search_pages(query, **options))

    def ingest(
        self, items: Sequence[Item | search_pb2.IngestItem], **options: Any
    ) -> list[ItemResult]:
        return self._run(self._client.ingest(items, **options))

    def ingest_stream(
        self, items: Iterable[Item | search_pb2.IngestItem], **options: Any
    ) -> Iterator[ItemResult]:
        """See AsyncSearchClient.ingest_stream: ``items`` is read on a worker thread, no
        faster than results come back."""
        return self._iterate(self._client.ingest_stream(items, **options))

    def get_image(self, key: str, **options: Any) -> search_pb2.StoredImage:
        return self._run(self._client.get_image(key, **options))

    def find_image(self, key: str, **options: Any) -> search_pb2.StoredImage | None:
        return self._run(self._client.find_image(key, **options))

    def get_images(self, keys: Sequence[str], **options: Any) -> dict[str, search_pb2.StoredImage]:
        return self._run(self._client.get_images(keys, **options))

    def delete_images(self, keys: Sequence[str], **options: Any) -> search_pb2.DeleteImagesResponse:
        return self._run(self._client.delete_images(keys, **options))

    def create_collection(self, name: str, **options: Any) -> search_pb2.CollectionStats:
        return self._run(self._client.create_collection(name, **options))

    def list_collections(self, **options: Any) -> list[search_pb2.CollectionStats]:
        return self._run(self._client.list_collections(**options))

    def delete_collection(self, name: str, **options: Any) -> int:
        return self._run(self._client.delete_collection(name, **options))

    def collection_stats(
        self, collection: str | None = None, **options: Any
    ) -> search_pb2.CollectionStats:
        return self._run(self._client.collection_stats(collection, **options))

    def refit_projection(
        self, collection: str | None = None, **options: Any
    ) -> search_pb2.Projection:
        return self._run(self._client.refit_projection(collection, **options))


__all__ = ["SearchClient"]
