"""SearchClient: the same calls as AsyncSearchClient, for code without an event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from imagesearch.client.aio import AsyncSearchClient, QueryValue
from imagesearch.client.connection import Connection
from imagesearch.client.types import Item, ItemResult, Model
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

    def search(
        self,
        query: QueryValue,
        *,
        collection: str | None = None,
        top_k: int = 0,
        mode: search_pb2.SearchMode.ValueType = search_pb2.SEARCH_MODE_UNSPECIFIED,
        max_distance: float | None = None,
        filter: Mapping[str, Any] | None = None,
        page_token: str = "",
        probes: int = 0,
        candidates: int = 0,
        timeout: float | None = None,
    ) -> search_pb2.SearchResponse:
        """See AsyncSearchClient.search."""
        return self._run(
            self._client.search(
                query,
                collection=collection,
                top_k=top_k,
                mode=mode,
                max_distance=max_distance,
                filter=filter,
                page_token=page_token,
                probes=probes,
                candidates=candidates,
                timeout=timeout,
            )
        )

    def search_pages(
        self, query: QueryValue, **options: Any
    ) -> Iterator[search_pb2.SearchResponse]:
        """Every page of a search (``options`` as for search()), following the tokens."""
        return self._iterate(self._client.search_pages(query, **options))

    def ingest(
        self,
        items: Sequence[Item | search_pb2.IngestItem],
        *,
        collection: str | None = None,
        timeout: float | None = None,
    ) -> list[ItemResult]:
        """See AsyncSearchClient.ingest."""
        return self._run(self._client.ingest(items, collection=collection, timeout=timeout))

    def ingest_stream(
        self,
        items: Iterable[Item | search_pb2.IngestItem],
        *,
        collection: str | None = None,
        batch_items: int = 100,
        window: int = 4,
        timeout: float | None = None,
    ) -> Iterator[ItemResult]:
        """See AsyncSearchClient.ingest_stream: ``items`` is read on a worker thread, no
        faster than results come back."""
        return self._iterate(
            self._client.ingest_stream(
                items,
                collection=collection,
                batch_items=batch_items,
                window=window,
                timeout=timeout,
            )
        )

    def get_image(
        self,
        key: str,
        *,
        collection: str | None = None,
        include_embedding: bool = False,
        timeout: float | None = None,
    ) -> search_pb2.StoredImage:
        """See AsyncSearchClient.get_image."""
        return self._run(
            self._client.get_image(
                key, collection=collection, include_embedding=include_embedding, timeout=timeout
            )
        )

    def find_image(
        self,
        key: str,
        *,
        collection: str | None = None,
        include_embedding: bool = False,
        timeout: float | None = None,
    ) -> search_pb2.StoredImage | None:
        """See AsyncSearchClient.find_image."""
        return self._run(
            self._client.find_image(
                key, collection=collection, include_embedding=include_embedding, timeout=timeout
            )
        )

    def get_images(
        self,
        keys: Sequence[str],
        *,
        collection: str | None = None,
        include_embedding: bool = False,
        concurrency: int = 32,
        timeout: float | None = None,
    ) -> dict[str, search_pb2.StoredImage]:
        """See AsyncSearchClient.get_images."""
        return self._run(
            self._client.get_images(
                keys,
                collection=collection,
                include_embedding=include_embedding,
                concurrency=concurrency,
                timeout=timeout,
            )
        )

    def delete_images(
        self, keys: Sequence[str], *, collection: str | None = None, timeout: float | None = None
    ) -> search_pb2.DeleteImagesResponse:
        return self._run(self._client.delete_images(keys, collection=collection, timeout=timeout))

    def create_collection(
        self, name: str, *, model: Model | None = None, timeout: float | None = None
    ) -> search_pb2.CollectionStats:
        return self._run(self._client.create_collection(name, model=model, timeout=timeout))

    def list_collections(self, *, timeout: float | None = None) -> list[search_pb2.CollectionStats]:
        return self._run(self._client.list_collections(timeout=timeout))

    def delete_collection(self, name: str, *, timeout: float | None = None) -> int:
        return self._run(self._client.delete_collection(name, timeout=timeout))

    def collection_stats(
        self, collection: str | None = None, *, timeout: float | None = None
    ) -> search_pb2.CollectionStats:
        return self._run(self._client.collection_stats(collection, timeout=timeout))

    def refit_projection(
        self,
        collection: str | None = None,
        *,
        dimensions: int = 0,
        lists: int = 0,
        timeout: float | None = None,
    ) -> search_pb2.Projection:
        return self._run(
            self._client.refit_projection(
                collection, dimensions=dimensions, lists=lists, timeout=timeout
            )
        )


__all__ = ["SearchClient"]
