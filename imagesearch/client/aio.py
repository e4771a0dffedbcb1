"""AsyncSearchClient: the search service's calls as typed asyncio methods."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from imagesearch.client.connection import Connection
from imagesearch.client.errors import NotFound, from_rpc_error
from imagesearch.client.types import Item, ItemResult, Model, struct
from imagesearch.search.v1 import search_pb2, search_pb2_grpc

T = TypeVar("T")
# What ingest takes: client Items or the protobuf messages themselves.
Items = Iterable[Item | search_pb2.IngestItem] | AsyncIterable[Item | search_pb2.IngestItem]
# A search query: image bytes, a stored key, or a vector of the collection's model.
QueryValue = bytes | str | Sequence[float]


class AsyncSearchClient:
    """One channel to the search service and the collection calls go to by default.

    Every method raises a typed imagesearch.client.errors.SearchError subclass
    (NotFound, InvalidArgument, ...) carrying the status's reason, field
    violations and retry delay. Unary calls get the connection's ``timeout_s`` as
    their deadline unless given ``timeout``; streams have none unless given one.
    Use as ``async with AsyncSearchClient(Connection(target)) as client``.
    """

    def __init__(self, connection: Connection | None = None, *, collection: str = "") -> None:
        self.connection = connection or Connection()
        self.collection = collection
        self._channel = self.connection.aio_channel()
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)

    async def __aenter__(self) -> AsyncSearchClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(grace=None)

    def _deadline(self, timeout: float | None) -> float:
        return self.connection.timeout_s if timeout is None else timeout

    def _name(self, collection: str | None) -> str:
        return self.collection if collection is None else collection

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    # -- search ---------------------------------------------------------------------

    async def search(
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
        """One page of the images nearest ``query``: image bytes (embedded by the
        extractor), a stored key (left out of its own hits), or a vector."""
        request = search_pb2.SearchRequest(
            collection=self._name(collection),
            top_k=top_k,
            mode=mode,
            filter=struct(filter),
            page_token=page_token,
            probes=probes,
            candidates=candidates,
        )
        if isinstance(query, bytes):
            request.image = query
        elif isinstance(query, str):
            request.key = query
        else:
            request.vector.values.extend(float(v) for v in query)
        if max_distance is not None:
            request.max_distance = max_distance
        return await self._call(self._stub.Search(request, timeout=self._deadline(timeout)))

    async def search_pages(
        self, query: QueryValue, **options: Any
    ) -> AsyncIterator[search_pb2.SearchResponse]:
        """Every page of a search (``options`` as for search()), following the tokens."""
        token = ""
        while True:
            page = await self.search(query, page_token=token, **options)
            yield page
            token = page.next_page_token
            if not token:
                return

    # -- ingest ---------------------------------------------------------------------

    async def ingest(
        self,
        items: Sequence[Item | search_pb2.IngestItem],
        *,
        collection: str | None = None,
        timeout: float | None = None,
    ) -> list[ItemResult]:
        """Stores a few items in one call and one transaction; one result per item."""
        request = search_pb2.IngestRequest(
            collection=self._name(collection), items=[_message(i) for i in items]
        )
        response = await self._call(self._stub.Ingest(request, timeout=self._deadline(timeout)))
        return [ItemResult.of(r) for r in response.results]

    async def ingest_stream(
        self,
        items: Items,
        *,
        collection: str | None = None,
        batch_items: int = 100,
        window: int = 4,
        timeout: float | None = None,
    ) -> AsyncIterator[ItemResult]:
        """Stores any number of items over IngestStream; yields one result per item, in order.

        Items go in messages of ``batch_items``; at most ``window`` messages are
        unanswered at once, so ``items`` (a generator reading files, say) is read no
        faster than the service stores them and the caller takes the results: that
        is the back-pressure. A failure of the stream itself raises; items without
        a result may or may not be stored, and sending them again is safe.
        """
        if batch_items < 1 or window < 1:
            raise ValueError("batch_items and window must be at least 1")
        name = self._name(collection)
        slots = asyncio.Semaphore(window)

        async def requests() -> AsyncIterator[search_pb2.IngestStreamRequest]:
            batch: list[search_pb2.IngestItem] = []
            async for item in _each(items):
                batch.append(_message(item))
                if len(batch) == batch_items:
                    await slots.acquire()
                    yield search_pb2.IngestStreamRequest(collection=name, items=batch)
                    batch = []
            if batch:
                await slots.acquire()
                yield search_pb2.IngestStreamRequest(collection=name, items=batch)

        call = self._stub.IngestStream(requests(), timeout=timeout)
        try:
            async for response in call:
                for result in response.results:
                    yield ItemResult.of(result)
                slots.release()
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()

    # -- records --------------------------------------------------------------------

    async def get_image(
        self,
        key: str,
        *,
        collection: str | None = None,
        include_embedding: bool = False,
        timeout: float | None = None,
    ) -> search_pb2.StoredImage:
        """The stored record of ``key``; raises NotFound when the collection lacks it."""
        request = search_pb2.GetImageRequest(
            collection=self._name(collection), key=key, include_embedding=include_embedding
        )
        response = await self._call(self._stub.GetImage(request, timeout=self._deadline(timeout)))
        return response.image

    async def find_image(self, key: str, **options: Any) -> search_pb2.StoredImage | None:
        """get_image(), or None where the key is not stored."""
        try:
            return await self.get_image(key, **options)
        except NotFound as error:
            if error.reason == "KEY_NOT_FOUND":
                return None
            raise

    async def get_images(
        self,
        keys: Sequence[str],
        *,
        collection: str | None = None,
        include_embedding: bool = False,
        concurrency: int = 32,
        timeout: float | None = None,
    ) -> dict[str, search_pb2.StoredImage]:
        """The stored record of each key the collection holds; unknown keys are left out.

        ``concurrency`` GetImage calls are in flight at once: one at a time, a round
        trip per key would dominate.
        """
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str) -> search_pb2.StoredImage | None:
            async with gate:
                return await self.find_image(
                    key,
                    collection=collection,
                    include_embedding=include_embedding,
                    timeout=timeout,
                )

        found = await asyncio.gather(*(one(key) for key in dict.fromkeys(keys)))
        return {image.key: image for image in found if image is not None}

    async def delete_images(
        self, keys: Sequence[str], *, collection: str | None = None, timeout: float | None = None
    ) -> search_pb2.DeleteImagesResponse:
        request = search_pb2.DeleteImagesRequest(collection=self._name(collection), keys=keys)
        return await self._call(self._stub.DeleteImages(request, timeout=self._deadline(timeout)))

    # -- collections ----------------------------------------------------------------

    async def create_collection(
        self,
        name: str,
        *,
        model: Model | None = None,
        timeout: float | None = None,
    ) -> search_pb2.CollectionStats:
        """Creates ``name``, bound to ``model`` up front when given."""
        request = search_pb2.CreateCollectionRequest(name=name)
        if model is not None:
            request.model.name, request.model.version = model.name, model.version
            request.model.dimension = model.dimension
        response = await self._call(
            self._stub.CreateCollection(request, timeout=self._deadline(timeout))
        )
        return response.collection

    async def list_collections(
        self, *, timeout: float | None = None
    ) -> list[search_pb2.CollectionStats]:
        request = search_pb2.ListCollectionsRequest()
        response = await self._call(
            self._stub.ListCollections(request, timeout=self._deadline(timeout))
        )
        return list(response.collections)

    async def delete_collection(self, name: str, *, timeout: float | None = None) -> int:
        """Deletes the collection (empties the default one); returns the images deleted."""
        request = search_pb2.DeleteCollectionRequest(name=name)
        response = await self._call(
            self._stub.DeleteCollection(request, timeout=self._deadline(timeout))
        )
        return response.deleted_images

    async def collection_stats(
        self, collection: str | None = None, *, timeout: float | None = None
    ) -> search_pb2.CollectionStats:
        request = search_pb2.GetCollectionStatsRequest(collection=self._name(collection))
        response = await self._call(
            self._stub.GetCollectionStats(request, timeout=self._deadline(timeout))
        )
        return response.collection

    async def refit_projection(
        self,
        collection: str | None = None,
        *,
        dimensions: int = 0,
        lists: int = 0,
        timeout: float | None = None,
    ) -> search_pb2.Projection:
        """Fits a new FAST projection; a fit of a large collection takes a while, so this
        call has no deadline unless given ``timeout``."""
        request = search_pb2.RefitProjectionRequest(
            collection=self._name(collection), dimensions=dimensions, lists=lists
        )
        response = await self._call(self._stub.RefitProjection(request, timeout=timeout))
        return response.projection


def _message(item: Item | search_pb2.IngestItem) -> search_pb2.IngestItem:
    return item if isinstance(item, search_pb2.IngestItem) else item.message()


async def _each(items: Items) -> AsyncIterator[Item | search_pb2.IngestItem]:
    """``items`` one by one; a plain iterator is advanced on a thread, so that a generator
    that reads files does not hold up the event loop."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
        return
    if isinstance(items, Sequence):
        for item in items:
            yield item
        return
    iterator = iter(items)

    def pull() -> Item | search_pb2.IngestItem | None:
        return next(iterator, None)

    while True:
        pulled = await asyncio.to_thread(pull)
        if pulled is None:
            return
        yield pulled
