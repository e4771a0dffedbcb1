"""SearchService: ingest into collections, rank by meaning, manage collections."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from search_service import convert
from search_service.extractor_client import ExtractorClient
from search_service.refit import Refitter
from search_service.settings import SearchSettings
from search_service.store import Collection, Hit, ModelKey, NewImage, Store, Vector, unit
from service_core.errors import FailedPrecondition, InvalidArgument, ServiceError, Unavailable

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
MISMATCH = grpc.StatusCode.FAILED_PRECONDITION.value[0]
MAX_DELETE_KEYS = 10_000
MAX_CANDIDATES = 100_000
MAX_OFFSET = 100_000


@dataclass
class _Item:
    """One ingest item on its way to the database."""

    index: int
    key: str
    metadata: dict[str, Any]
    image: bytes | None = None
    sha256: bytes | None = None
    vector: Vector | None = None
    model: ModelKey | None = None
    result: search_pb2.IngestResult = field(default_factory=search_pb2.IngestResult)

    def fail(self, code: int, message: str) -> None:
        self.result.status = search_pb2.INGEST_STATUS_FAILED
        self.result.error.code = code
        self.result.error.message = message

    @property
    def pending(self) -> bool:
        return self.result.status == search_pb2.INGEST_STATUS_UNSPECIFIED


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Validates requests, asks the extractor for vectors, and ranks in PostgreSQL."""

    def __init__(self, settings: SearchSettings) -> None:
        self._settings = settings
        self.store: Store | None = None  # set once the database is ready
        self.extractor: ExtractorClient | None = None
        self.refitter: Refitter | None = None
        self.background: set[asyncio.Task[Any]] = set()

    def _ready(self) -> tuple[Store, ExtractorClient, Refitter]:
        if self.store is None or self.extractor is None or self.refitter is None:
            raise Unavailable("the search service is starting; retry shortly")
        return self.store, self.extractor, self.refitter

    def _timeout(self, context: Context) -> float:
        remaining = context.time_remaining()
        limit = self._settings.extractor_timeout_s
        return limit if remaining is None else max(0.001, min(limit, remaining))

    # -- ingest -------------------------------------------------------------------

    async def Ingest(  # noqa: N802 - the RPC's name
        self, request: search_pb2.IngestRequest, context: Context
    ) -> search_pb2.IngestResponse:
        store, _, _ = self._ready()
        count, most = len(request.items), self._settings.max_ingest_items
        if not 1 <= count <= most:
            raise InvalidArgument(f"items: {count} items in one request; send 1 to {most}")
        seen: dict[str, int] = {}
        for index, item in enumerate(request.items):
            if item.key in seen:
                raise InvalidArgument(
                    f"items[{index}].key: {item.key!r} repeats items[{seen[item.key]}]; "
                    "keys must be distinct within one request"
                )
            seen[item.key] = index
        collection = await store.collection(request.collection)
        results = await self._ingest(collection, request.items, self._timeout(context))
        return search_pb2.IngestResponse(results=results)

    async def IngestStream(  # noqa: N802 - the RPC's name
        self,
        request_iterator: AsyncIterator[search_pb2.IngestStreamRequest],
        context: Context,
    ) -> AsyncIterator[search_pb2.IngestStreamResponse]:
        self._ready()  # UNAVAILABLE before reading the stream while starting
        # Batches are written concurrently, each in its own transaction on its own
        # connection, while results go back in stream order. A batch that shares a key
        # with one in flight waits for it, so the stream's last write of a key wins.
        in_flight: collections.deque[tuple[asyncio.Task[list[search_pb2.IngestResult]], _Batch]]
        in_flight = collections.deque()
        answer = search_pb2.IngestStreamResponse()  # the request message being answered

        async def completed() -> AsyncIterator[search_pb2.IngestStreamResponse]:
            nonlocal answer
            task, batch = in_flight.popleft()
            for result, last in zip(await task, batch.ends, strict=True):
                answer.results.append(result)
                if last:
                    yield answer
                    answer = search_pb2.IngestStreamResponse()

        batches = aiter(_batches(request_iterator, self._settings.stream_batch_items))
        arriving: asyncio.Future[_Batch] = asyncio.ensure_future(anext(batches))
        try:
            while True:
                # Answer each message as soon as its batches are in, even while the next
                # message has yet to come: a client may wait for an answer before sending.
                awaited: set[asyncio.Future[Any]] = {arriving}
                if in_flight:
                    awaited.add(in_flight[0][0])
                await asyncio.wait(awaited, return_when=asyncio.FIRST_COMPLETED)
                while in_flight and in_flight[0][0].done():
                    async for response in completed():
                        yield response
                if not arriving.done():
                    continue
                try:
                    batch = arriving.result()
                except StopAsyncIteration:
                    break
                except InvalidArgument:
                    # A malformed request message: answer the items before it, then fail.
                    while in_flight:
                        async for response in completed():
                            yield response
                    raise
                while in_flight and (
                    len(in_flight) >= self._settings.ingest_concurrency
                    or any(batch.keys & earlier.keys for _, earlier in in_flight)
                ):
                    async for response in completed():
                        yield response
                work = self._ingest_into(batch.collection, batch.items, self._timeout(context))
                in_flight.append((asyncio.create_task(work), batch))
                arriving = asyncio.ensure_future(anext(batches))
            while in_flight:
                async for response in completed():
                    yield response
        finally:
            # The stream failed or the caller went away: later batches roll back.
            arriving.cancel()
            for task, _ in in_flight:
                task.cancel()
            await asyncio.gather(arriving, *(t for t, _ in in_flight), return_exceptions=True)

    async def _ingest_into(
        self, name: str, messages: Sequence[search_pb2.IngestItem], timeout_s: float
    ) -> list[search_pb2.IngestResult]:
        store, _, _ = self._ready()
        return await self._ingest(await store.collection(name), messages, timeout_s)

    async def _ingest(
        self, collection: Collection, messages: Sequence[search_pb2.IngestItem], timeout_s: float
    ) -> list[search_pb2.IngestResult]:
        store, extractor, _ = self._ready()
        items = [self._parse(index, message) for index, message in enumerate(messages)]
        existing = await store.existing(collection, [i.key for i in items if i.pending])
        updates: list[tuple[str, dict[str, Any]]] = []
        for item in items:
            known = existing.get(item.key)
            if item.pending and item.image is not None and known and known[0] == item.sha256:
                # Same bytes under the same key: never re-extracted.
                if known[1] == item.metadata:
                    item.result.status = search_pb2.INGEST_STATUS_UNCHANGED
                else:
                    item.result.status = search_pb2.INGEST_STATUS_UPDATED
                    updates.append((item.key, item.metadata))
        to_embed = [i for i in items if i.pending and i.image is not None]
        if to_embed:
            model, embedded = await extractor.embed(
                [(i.key, i.image or b"") for i in to_embed], timeout_s=timeout_s
            )
            for item, outcome in zip(to_embed, embedded, strict=True):
                if outcome.vector is None:
                    item.fail(outcome.error_code, outcome.error_message)
                else:
                    item.vector, item.model = outcome.vector, model
        target = collection.model or next((i.model for i in items if i.pending), None)
        for item in items:
            if item.pending and item.model != target:
                assert item.model is not None
                assert target is not None
                item.fail(
                    MISMATCH,
                    f"item {item.key!r}: vector of {item.model.describe()}, but collection "
                    f"{collection.name!r} holds {target.describe()}",
                )
        to_write = [i for i in items if i.pending]
        if not to_write and not updates:
            return [i.result for i in items]
        created = await store.write(
            collection,
            target,
            [
                NewImage(i.key, i.sha256, i.metadata, i.vector)
                for i in to_write
                if i.vector is not None
            ],
            updates,
        )
        for item in to_write:
            item.result.status = (
                search_pb2.INGEST_STATUS_CREATED
                if created[item.key]
                else search_pb2.INGEST_STATUS_UPDATED
            )
        if to_write:
            self._maybe_fit(collection)
        return [i.result for i in items]

    def _parse(self, index: int, message: search_pb2.IngestItem) -> _Item:
        item = _Item(index, message.key, convert.struct_to_dict(message.metadata))
        item.result.key = message.key
        try:
            convert.check_key(message.key, f"items[{index}].key")
            source = message.WhichOneof("source")
            if source == "image":
                if not message.image:
                    raise InvalidArgument(f"item {message.key!r}: the image is empty")
                item.image = message.image
                item.sha256 = hashlib.sha256(message.image).digest()
                item.result.content_sha256 = item.sha256.hex()
            elif source == "embedding":
                model = convert.model_key(message.embedding.model, f"item {message.key!r} model")
                item.model = model
                item.vector = convert.vector(
                    message.embedding.vector.values, model.dimension, f"item {message.key!r}"
                )
            else:
                raise InvalidArgument(f"item {message.key!r}: set image bytes or an embedding")
        except InvalidArgument as error:
            item.fail(INVALID, error.message)
        return item

    def _maybe_fit(self, collection: Collection) -> None:
        """Fits the first projection in the background once the collection is large enough."""
        if collection.serving_version is not None or any(
            t.get_name() == f"fit:{collection.id}" for t in self.background
        ):
            return
        task = asyncio.create_task(self._fit_when_large(collection), name=f"fit:{collection.id}")
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _fit_when_large(self, collection: Collection) -> None:
        store, _, refitter = self._ready()
        try:
            fresh = await store.collection(collection.name)
            if fresh.serving_version is None and (
                await store.count(fresh) >= self._settings.auto_fit_threshold
            ):
                await refitter.refit(fresh)
        except ServiceError as error:  # another replica is fitting, or the data went away
            log.info("automatic fit skipped: %s", error.message)
        except Exception:
            log.exception("automatic fit failed", extra={"collection": collection.name})

    # -- search -------------------------------------------------------------------

    async def Search(  # noqa: N802 - the RPC's name
        self, request: search_pb2.SearchRequest, context: Context
    ) -> search_pb2.SearchResponse:
        store, _, _ = self._ready()
        settings = self._settings
        top_k = request.top_k or settings.default_top_k
        if top_k > settings.max_top_k:
            raise InvalidArgument(f"top_k: {top_k} is above the maximum, {settings.max_top_k}")
        max_distance = math.inf
        if request.HasField("max_distance"):
            max_distance = request.max_distance
            if not (max_distance >= 0 and math.isfinite(max_distance)):
                raise InvalidArgument(
                    f"max_distance: must be a finite number >= 0, got {max_distance}"
                )
        offset, token_mode, token_version = 0, 0, 0
        if request.page_token:
            offset, token_mode, token_version = convert.decode_page_token(request.page_token)
        if offset > MAX_OFFSET:
            raise InvalidArgument(f"page_token: pages end at {MAX_OFFSET} hits")
        metadata_filter = (
            convert.struct_to_dict(request.filter) if request.HasField("filter") else None
        )

        collection = await store.collection(request.collection)
        query, exclude = await self._query(collection, request, context)
        response = search_pb2.SearchResponse()
        if query is None:  # nothing stored yet, so nothing to rank
            response.mode = search_pb2.SEARCH_MODE_EXACT
            return response

        mode = request.mode or (
            search_pb2.SEARCH_MODE_FAST
            if collection.serving_version
            else search_pb2.SEARCH_MODE_EXACT
        )
        if request.page_token and token_mode != mode:
            raise InvalidArgument("page_token: was issued for a search in another mode")
        common: dict[str, Any] = {
            "limit": top_k + 1,  # one more tells whether a next page exists
            "offset": offset,
            "exclude_key": exclude,
            "max_distance": max_distance,
            "metadata_filter": metadata_filter,
        }
        version = 0
        if mode == search_pb2.SEARCH_MODE_FAST:
            version = token_version or collection.serving_version or 0
            if not version:
                raise FailedPrecondition(
                    f"collection {collection.name!r} has no projection yet; search in EXACT "
                    "mode or call RefitProjection"
                )
            probes = request.probes or settings.default_probes
            candidates = max(request.candidates or settings.default_candidates, offset + top_k + 1)
            if candidates > MAX_CANDIDATES:
                raise InvalidArgument(f"candidates: at most {MAX_CANDIDATES}")
            hits = await store.search_fast(
                collection, version, query, probes=probes, candidates=candidates, **common
            )
        elif mode == search_pb2.SEARCH_MODE_EXACT:
            hits = await store.search_exact(collection, query, **common)
        else:
            raise InvalidArgument(f"mode: unknown value {request.mode}")

        response.mode = mode
        response.projection_version = version
        response.hits.extend(_hit(h, offset + rank + 1) for rank, h in enumerate(hits[:top_k]))
        if len(hits) > top_k:
            response.next_page_token = convert.encode_page_token(offset + top_k, mode, version)
        return response

    async def _query(
        self, collection: Collection, request: search_pb2.SearchRequest, context: Context
    ) -> tuple[np.ndarray | None, str | None]:
        """The unit query vector (None when the collection is empty) and a key to leave out."""
        store, extractor, _ = self._ready()
        kind = request.WhichOneof("query")
        if kind is None:
            raise InvalidArgument("query: set one of image, key or vector")
        if kind == "key":
            convert.check_key(request.key, "key")
            return unit(await store.embedding(collection, request.key)), request.key
        if collection.model is None:
            if kind == "vector":
                convert.vector(request.vector.values, len(request.vector.values) or 1, "vector")
            return None, None
        if kind == "vector":
            values = convert.vector(request.vector.values, collection.model.dimension, "vector")
            return unit(values), None
        if not request.image:
            raise InvalidArgument("image: the image is empty")
        model, [outcome] = await extractor.embed(
            [("query", request.image)], timeout_s=self._timeout(context)
        )
        if outcome.vector is None:
            raise InvalidArgument(f"image: {outcome.error_message}")
        if model != collection.model:
            raise FailedPrecondition(
                f"the extractor serves {model.describe()}, but collection {collection.name!r} "
                f"holds {collection.model.describe()}"
            )
        return unit(outcome.vector), None

    # -- records and collections ------------------------------------------------

    async def GetImage(  # noqa: N802 - the RPC's name
        self, request: search_pb2.GetImageRequest, context: Context
    ) -> search_pb2.GetImageResponse:
        store, _, _ = self._ready()
        convert.check_key(request.key, "key")
        collection = await store.collection(request.collection)
        stored = await store.image(collection, request.key)
        image = search_pb2.StoredImage(
            key=stored.key,
            content_sha256=(stored.content_sha256 or b"").hex(),
            metadata=convert.dict_to_struct(stored.metadata),
            model=convert.model_message(collection.model),
            created_at=convert.timestamp(stored.created_at),
            updated_at=convert.timestamp(stored.updated_at),
        )
        if request.include_embedding:
            image.embedding.values.extend(stored.embedding.tolist())
        return search_pb2.GetImageResponse(image=image)

    async def DeleteImages(  # noqa: N802 - the RPC's name
        self, request: search_pb2.DeleteImagesRequest, context: Context
    ) -> search_pb2.DeleteImagesResponse:
        store, _, _ = self._ready()
        if not 1 <= len(request.keys) <= MAX_DELETE_KEYS:
            raise InvalidArgument(f"keys: send 1 to {MAX_DELETE_KEYS} keys")
        collection = await store.collection(request.collection)
        deleted = await store.delete(collection, request.keys)
        missing = [k for k in dict.fromkeys(request.keys) if k not in deleted]
        return search_pb2.DeleteImagesResponse(deleted_count=len(deleted), missing_keys=missing)

    async def CreateCollection(  # noqa: N802 - the RPC's name
        self, request: search_pb2.CreateCollectionRequest, context: Context
    ) -> search_pb2.CreateCollectionResponse:
        store, _, _ = self._ready()
        model = convert.model_key(request.model, "model") if request.HasField("model") else None
        collection = await store.create_collection(request.name, model)
        return search_pb2.CreateCollectionResponse(
            collection=convert.stats_message(collection, 0, [])
        )

    async def ListCollections(  # noqa: N802 - the RPC's name
        self, request: search_pb2.ListCollectionsRequest, context: Context
    ) -> search_pb2.ListCollectionsResponse:
        store, _, _ = self._ready()
        return search_pb2.ListCollectionsResponse(
            collections=[await self._stats(store, c) for c in await store.collections()]
        )

    async def DeleteCollection(  # noqa: N802 - the RPC's name
        self, request: search_pb2.DeleteCollectionRequest, context: Context
    ) -> search_pb2.DeleteCollectionResponse:
        store, _, _ = self._ready()
        if not request.name:
            raise InvalidArgument("name: the collection to delete is required")
        return search_pb2.DeleteCollectionResponse(
            deleted_images=await store.delete_collection(request.name)
        )

    async def GetCollectionStats(  # noqa: N802 - the RPC's name
        self, request: search_pb2.GetCollectionStatsRequest, context: Context
    ) -> search_pb2.GetCollectionStatsResponse:
        store, _, _ = self._ready()
        collection = await store.collection(request.collection)
        return search_pb2.GetCollectionStatsResponse(
            collection=await self._stats(store, collection)
        )

    async def RefitProjection(  # noqa: N802 - the RPC's name
        self, request: search_pb2.RefitProjectionRequest, context: Context
    ) -> search_pb2.RefitProjectionResponse:
        store, _, refitter = self._ready()
        if request.dimensions > 100:
            raise InvalidArgument(f"dimensions: {request.dimensions} is above cube's limit, 100")
        collection = await store.collection(request.collection)
        info = await refitter.refit(collection, dimensions=request.dimensions, lists=request.lists)
        fresh = await store.collection(collection.name)
        live = [p for p in await store.projections(fresh) if p.version <= info.version]
        return search_pb2.RefitProjectionResponse(
            projection=convert.projection_message(live, fresh.serving_version)
        )

    @staticmethod
    async def _stats(store: Store, collection: Collection) -> search_pb2.CollectionStats:
        count = await store.count(collection)
        return convert.stats_message(collection, count, await store.projections(collection))


def _hit(hit: Hit, rank: int) -> search_pb2.SearchHit:
    return search_pb2.SearchHit(
        key=hit.key,
        rank=rank,
        distance=hit.distance,
        similarity=convert.similarity(hit.distance),
        metadata=convert.dict_to_struct(hit.metadata),
    )


@dataclass
class _Batch:
    """Stream items written in one transaction; ``ends[i]``: item i closes its message."""

    collection: str
    items: list[search_pb2.IngestItem] = field(default_factory=list)
    ends: list[bool] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)


async def _batches(
    requests: AsyncIterator[search_pb2.IngestStreamRequest], size: int
) -> AsyncIterator[_Batch]:
    """Regroups a stream's items, in order, into batches of distinct keys of one collection.

    A batch closes when full, when the collection changes, when a key repeats, or
    when the client pauses, so a client that waits for each answer gets it.
    """
    queue: asyncio.Queue[search_pb2.IngestStreamRequest | None] = asyncio.Queue(maxsize=4)

    async def read() -> None:
        async for request in requests:
            await queue.put(request)
        await queue.put(None)

    reader = asyncio.create_task(read())
    # (collection, item, closes its message); an item of None stands for a bad message,
    # raised once the items before it are batched.
    waiting: collections.deque[tuple[str, search_pb2.IngestItem | None, bool]]
    waiting = collections.deque()
    received = 0

    def unpack(request: search_pb2.IngestStreamRequest) -> None:
        nonlocal received
        if not request.items:
            waiting.append((f"request message {received}: items: send at least one", None, True))
        received += 1
        last = len(request.items) - 1
        for i, item in enumerate(request.items):
            waiting.append((request.collection, item, i == last))

    try:
        ended = False
        while not ended:
            if not waiting:
                request = await _next(queue, reader)
                if request is None:
                    return
                unpack(request)
            if waiting[0][1] is None:
                raise InvalidArgument(waiting[0][0])
            batch = _Batch(waiting[0][0])
            while len(batch.items) < size:
                if not waiting:
                    if queue.empty():
                        await asyncio.sleep(0)  # let the reader add what has already arrived
                    if queue.empty():
                        break
                    request = queue.get_nowait()
                    if request is None:
                        ended = True
                        break
                    unpack(request)
                name, item, last = waiting[0]
                if item is None or name != batch.collection or item.key in batch.keys:
                    break
                waiting.popleft()
                batch.items.append(item)
                batch.ends.append(last)
                batch.keys.add(item.key)
            yield batch
    finally:
        reader.cancel()


async def _next(
    queue: asyncio.Queue[search_pb2.IngestStreamRequest | None], reader: asyncio.Task[None]
) -> search_pb2.IngestStreamRequest | None:
    """The next request, None at the end; raises what broke the client's stream."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if not getter.done() and reader.done() and (failure := reader.exception()):
        getter.cancel()
        raise failure
    return await getter
