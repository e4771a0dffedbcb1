"""SearchService: the gRPC adapter over ingest, ranking and the store."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from search_service import convert
from search_service.domain import Collection, Hit, Query
from search_service.extractor_client import ExtractorClient
from search_service.ingest import Ingester, fail
from search_service.projection import MAX_BOUNDED_DIMENSIONS
from search_service.ranking import Ranker
from search_service.refit import AutoFit, Refitter
from search_service.settings import SearchSettings
from search_service.store import Store
from search_service.stream import ingest_stream
from search_service.vectors import unit
from service_core.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
MAX_DELETE_KEYS = 10_000
MAX_CANDIDATES = 100_000
MAX_OFFSET = 100_000
_TRANSIENT = (Unavailable, DeadlineExceeded, ResourceExhausted, Internal)
# Room a SearchResponse keeps under the message limit for its own fields.
_RESPONSE_FRAMING = 4096


@dataclass(frozen=True)
class Backend:
    """What the handlers need, built once the database is ready."""

    store: Store
    extractor: ExtractorClient
    refitter: Refitter
    ranker: Ranker
    ingester: Ingester
    autofit: AutoFit
    page_token_key: bytes  # signs page tokens; shared by every replica


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Validates requests and hands them to the domain; raises domain errors."""

    def __init__(self, settings: SearchSettings) -> None:
        self._settings = settings
        self._backend: Backend | None = None  # until the database is ready

    def serve(self, backend: Backend) -> None:
        self._backend = backend

    def _ready(self) -> Backend:
        if self._backend is None:
            raise Unavailable(
                "the search service is starting; retry shortly", reason="SERVICE_STARTING"
            )
        return self._backend

    def _timeout(self, context: Context) -> float:
        remaining = context.time_remaining()
        limit = self._settings.extractor_timeout_s
        return limit if remaining is None else max(0.001, min(limit, remaining))

    # -- ingest -------------------------------------------------------------------

    async def Ingest(  # noqa: N802 - the RPC's name
        self, request: search_pb2.IngestRequest, context: Context
    ) -> search_pb2.IngestResponse:
        backend = self._ready()
        count, most = len(request.items), self._settings.max_ingest_items
        if not 1 <= count <= most:
            raise InvalidArgument(
                f"items: {count} items in one request; send 1 to {most}",
                reason="ITEM_COUNT_OUT_OF_RANGE",
                field="items",
                metadata={"count": str(count), "limit": str(most)},
            )
        seen: dict[str, int] = {}
        for index, item in enumerate(request.items):
            if item.key in seen:
                raise InvalidArgument(
                    f"items[{index}].key: {item.key!r} repeats items[{seen[item.key]}]; "
                    "keys must be distinct within one request",
                    reason="DUPLICATE_KEY",
                    field=f"items[{index}].key",
                    metadata={"key": item.key},
                )
            seen[item.key] = index
        collection = await _collection(backend.store, request.collection)
        results = await backend.ingester.ingest(collection, request.items, self._timeout(context))
        return search_pb2.IngestResponse(results=results)

    async def IngestStream(  # noqa: N802 - the RPC's name
        self,
        request_iterator: AsyncIterator[search_pb2.IngestStreamRequest],
        context: Context,
    ) -> AsyncIterator[search_pb2.IngestStreamResponse]:
        backend = self._ready()  # UNAVAILABLE before reading the stream while starting

        async def write(
            name: str, items: Sequence[search_pb2.IngestItem]
        ) -> list[search_pb2.IngestResult]:
            # A batch that a dependency failed (the database went away, the extractor
            # is busy) is answered item by item, retryable: the batches after it,
            # perhaps written already, keep their answers. A bad request (a collection
            # that does not exist) still ends the stream.
            try:
                collection = await _collection(backend.store, name)
                return await backend.ingester.ingest(collection, items, self._timeout(context))
            except _TRANSIENT as error:
                return backend.ingester.answered([_failed(item.key, error) for item in items])

        async for response in ingest_stream(
            request_iterator,
            write,
            batch_items=self._settings.stream_batch_items,
            concurrency=self._settings.ingest_concurrency,
        ):
            yield response

    # -- search -------------------------------------------------------------------

    async def Search(  # noqa: N802 - the RPC's name
        self, request: search_pb2.SearchRequest, context: Context
    ) -> search_pb2.SearchResponse:
        backend = self._ready()
        settings = self._settings
        top_k = request.top_k or settings.default_top_k
        if top_k > settings.max_top_k:
            raise InvalidArgument(
                f"top_k: {top_k} is above the maximum, {settings.max_top_k}",
                reason="TOP_K_TOO_LARGE",
                field="top_k",
                metadata={"limit": str(settings.max_top_k)},
            )
        max_distance = math.inf
        if request.HasField("max_distance"):
            max_distance = request.max_distance
            if not (max_distance >= 0 and math.isfinite(max_distance)):
                raise InvalidArgument(
                    f"max_distance: must be a finite number >= 0, got {max_distance}",
                    reason="INVALID_MAX_DISTANCE",
                    field="max_distance",
                )
        offset, token_mode, token_version = 0, 0, 0
        binding = convert.query_binding(request)
        if request.page_token:
            offset, token_mode, token_version = convert.decode_page_token(
                request.page_token, key=backend.page_token_key, binding=binding
            )
        if offset > MAX_OFFSET:
            raise InvalidArgument(
                f"page_token: pages end at {MAX_OFFSET} hits",
                reason="PAGE_OUT_OF_RANGE",
                field="page_token",
            )
        metadata_filter = (
            convert.struct_value(request.filter, "filter") if request.HasField("filter") else None
        )

        collection = await _collection(backend.store, request.collection)
        vector, exclude = await self._query(backend, collection, request, context)
        response = search_pb2.SearchResponse()
        if vector is None:  # nothing stored yet, so nothing to rank
            response.mode = search_pb2.SEARCH_MODE_EXACT
            return response

        mode = request.mode or (
            search_pb2.SEARCH_MODE_FAST
            if collection.serving_version
            else search_pb2.SEARCH_MODE_EXACT
        )
        if request.page_token and token_mode != mode:
            raise InvalidArgument(
                "page_token: was issued for a search in another mode",
                reason="INVALID_PAGE_TOKEN",
                field="page_token",
            )
        query = Query(
            vector=vector,
            limit=top_k + 1,  # one more tells whether a next page exists
            offset=offset,
            exclude_key=exclude,
            max_distance=max_distance,
            metadata_filter=metadata_filter,
        )
        version = 0
        if mode == search_pb2.SEARCH_MODE_FAST:
            version = token_version or collection.serving_version or 0
            if not version:
                raise FailedPrecondition(
                    f"collection {collection.name!r} has no projection yet; search in EXACT "
                    "mode or call RefitProjection",
                    reason="NO_PROJECTION",
                    metadata={"collection": collection.name},
                )
            probes = request.probes or settings.default_probes
            candidates = max(request.candidates or settings.default_candidates, offset + top_k + 1)
            if candidates > MAX_CANDIDATES:
                raise InvalidArgument(
                    f"candidates: at most {MAX_CANDIDATES}",
                    reason="TOO_MANY_CANDIDATES",
                    field="candidates",
                    metadata={"limit": str(MAX_CANDIDATES)},
                )
            hits = await backend.ranker.fast(
                collection, version, query, probes=probes, candidates=candidates
            )
        elif mode == search_pb2.SEARCH_MODE_EXACT:
            hits = await backend.ranker.exact(collection, query)
        else:
            raise InvalidArgument(
                f"mode: unknown value {request.mode}", reason="UNKNOWN_MODE", field="mode"
            )

        response.mode = mode
        response.projection_version = version
        room = settings.max_message_bytes - _RESPONSE_FRAMING
        more = len(hits) > top_k
        for rank, found in enumerate(hits[:top_k]):
            hit = _hit(found, offset + rank + 1)
            room -= hit.ByteSize() + 8  # its tag and length
            if room < 0:
                # Hits of records stored before metadata was bounded: a shorter page,
                # and the next one starts at the first hit that did not fit.
                if not response.hits:
                    raise ResourceExhausted(
                        f"hit {found.key!r} alone is over the {settings.max_message_bytes}"
                        "-byte message limit (its metadata); it cannot be returned",
                        reason="HIT_TOO_LARGE",
                        metadata={"collection": collection.name, "key": found.key},
                        retryable=False,
                    )
                more = True
                break
            response.hits.append(hit)
        if more:
            response.next_page_token = convert.encode_page_token(
                offset + len(response.hits),
                mode,
                version,
                key=backend.page_token_key,
                binding=binding,
            )
        return response

    async def _query(
        self,
        backend: Backend,
        collection: Collection,
        request: search_pb2.SearchRequest,
        context: Context,
    ) -> tuple[np.ndarray | None, str | None]:
        """The unit query vector (None when the collection is empty) and a key to leave out."""
        store, extractor = backend.store, backend.extractor
        kind = request.WhichOneof("query")
        if kind is None:
            raise InvalidArgument(
                "query: set one of image, key or vector", reason="QUERY_REQUIRED", field="query"
            )
        if kind == "key":
            convert.check_key(request.key, "key")
            return unit(await store.embedding(collection, request.key)), request.key
        if kind == "vector":
            dimension = collection.model.dimension if collection.model else None
            values = convert.vector(
                request.vector.values,
                dimension or len(request.vector.values) or 1,
                "vector",
                path="vector.values",
            )
            return (unit(values) if collection.model else None), None
        if not request.image:
            raise InvalidArgument("image: the image is empty", reason="EMPTY_IMAGE", field="image")
        # Decoded even when the collection is empty: a bad image is refused either way.
        model, [outcome] = await extractor.embed(
            [("query", request.image)], timeout_s=self._timeout(context)
        )
        if outcome.vector is None:
            raise outcome.error(f"image: {outcome.error_message}", field="image")
        if collection.model is None:
            return None, None
        if model != collection.model:
            raise FailedPrecondition(
                f"the extractor serves {model.describe()}, but collection {collection.name!r} "
                f"holds {collection.model.describe()}",
                reason="MODEL_MISMATCH",
                metadata={"collection": collection.name},
            )
        return unit(outcome.vector), None

    # -- records and collections ------------------------------------------------

    async def GetImage(  # noqa: N802 - the RPC's name
        self, request: search_pb2.GetImageRequest, context: Context
    ) -> search_pb2.GetImageResponse:
        store = self._ready().store
        convert.check_key(request.key, "key")
        collection = await _collection(store, request.collection)
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
        store = self._ready().store
        if not 1 <= len(request.keys) <= MAX_DELETE_KEYS:
            raise InvalidArgument(
                f"keys: send 1 to {MAX_DELETE_KEYS} keys",
                reason="KEY_COUNT_OUT_OF_RANGE",
                field="keys",
                metadata={"limit": str(MAX_DELETE_KEYS)},
            )
        for index, key in enumerate(request.keys):
            convert.check_key(key, f"keys[{index}]")
        collection = await _collection(store, request.collection)
        deleted = await store.delete(collection, request.keys)
        missing = [k for k in dict.fromkeys(request.keys) if k not in deleted]
        return search_pb2.DeleteImagesResponse(deleted_count=len(deleted), missing_keys=missing)

    async def CreateCollection(  # noqa: N802 - the RPC's name
        self, request: search_pb2.CreateCollectionRequest, context: Context
    ) -> search_pb2.CreateCollectionResponse:
        store = self._ready().store
        model = convert.model_key(request.model, "model") if request.HasField("model") else None
        collection = await store.create_collection(
            request.name, model, max_collections=self._settings.max_collections
        )
        return search_pb2.CreateCollectionResponse(
            collection=convert.stats_message(collection, 0, [])
        )

    async def ListCollections(  # noqa: N802 - the RPC's name
        self, request: search_pb2.ListCollectionsRequest, context: Context
    ) -> search_pb2.ListCollectionsResponse:
        store = self._ready().store
        return search_pb2.ListCollectionsResponse(
            collections=[await self._stats(store, c) for c in await store.collections()]
        )

    async def DeleteCollection(  # noqa: N802 - the RPC's name
        self, request: search_pb2.DeleteCollectionRequest, context: Context
    ) -> search_pb2.DeleteCollectionResponse:
        store = self._ready().store
        if not request.name:
            raise InvalidArgument(
                "name: the collection to delete is required", reason="NAME_REQUIRED", field="name"
            )
        convert.check_collection_name(request.name, "name")
        return search_pb2.DeleteCollectionResponse(
            deleted_images=await store.delete_collection(request.name)
        )

    async def GetCollectionStats(  # noqa: N802 - the RPC's name
        self, request: search_pb2.GetCollectionStatsRequest, context: Context
    ) -> search_pb2.GetCollectionStatsResponse:
        store = self._ready().store
        collection = await _collection(store, request.collection)
        return search_pb2.GetCollectionStatsResponse(
            collection=await self._stats(store, collection)
        )

    async def RefitProjection(  # noqa: N802 - the RPC's name
        self, request: search_pb2.RefitProjectionRequest, context: Context
    ) -> search_pb2.RefitProjectionResponse:
        backend = self._ready()
        store, refitter = backend.store, backend.refitter
        if request.dimensions > MAX_BOUNDED_DIMENSIONS:
            raise InvalidArgument(
                f"dimensions: {request.dimensions} is above {MAX_BOUNDED_DIMENSIONS} (a cube "
                "holds at most 100: the coordinates and the residual's norm)",
                reason="TOO_MANY_DIMENSIONS",
                field="dimensions",
                metadata={"limit": str(MAX_BOUNDED_DIMENSIONS)},
            )
        collection = await _collection(store, request.collection)
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


async def _collection(store: Store, name: str) -> Collection:
    """The named collection; a name that could never exist is INVALID_ARGUMENT."""
    return await store.collection(convert.check_collection_name(name))


def _failed(key: str, error: ServiceError) -> search_pb2.IngestResult:
    result = search_pb2.IngestResult(key=key)
    fail(result, error)
    return result
