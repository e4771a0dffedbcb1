"""The evaluation's gRPC client: ingest, leave-one-out searches, stored vectors, refits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import struct_pb2

from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from imagesearch.search.v1 import search_pb2, search_pb2_grpc

SearchStub: TypeAlias = "search_pb2_grpc.SearchServiceAsyncStub"  # a name of the .pyi only
ExtractorStub: TypeAlias = "extractor_pb2_grpc.ExtractorServiceAsyncStub"
EXACT = search_pb2.SEARCH_MODE_EXACT
FAST = search_pb2.SEARCH_MODE_FAST
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Unary calls in flight at once where latency is not being measured.
_WINDOW = 16
# Images per Embed request: below the extractor's default max_request_images (64).
_EMBED_CHUNK = 32
_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Pass:
    """One leave-one-out pass: each query's ranked keys and each search's wall time."""

    rankings: dict[str, list[str]]
    seconds: list[float]


class Api:
    """Stubs of a search service and, optionally, the extractor it uses."""

    def __init__(self, search: SearchStub, extractor: ExtractorStub | None = None) -> None:
        self.search = search
        self.extractor = extractor

    # -- collections and ingest -------------------------------------------------------

    async def fresh_collection(self, name: str) -> None:
        """Creates ``name`` empty, deleting what an earlier run left under that name."""
        try:
            await self.search.DeleteCollection(
                search_pb2.DeleteCollectionRequest(name=name), timeout=_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await self.search.CreateCollection(
            search_pb2.CreateCollectionRequest(name=name), timeout=_TIMEOUT_S
        )

    async def ingest(
        self, collection: str, images: Sequence[tuple[str, bytes, Mapping[str, Any]]]
    ) -> float:
        """Stores (key, image bytes, metadata) items through IngestStream; returns seconds.

        Raises RuntimeError naming the first item the service did not store.
        """

        async def requests() -> AsyncIterator[search_pb2.IngestStreamRequest]:
            for key, data, metadata in images:
                fields = struct_pb2.Struct()
                fields.update(dict(metadata))
                yield search_pb2.IngestStreamRequest(
                    collection=collection,
                    items=[search_pb2.IngestItem(key=key, image=data, metadata=fields)],
                )

        started = time.perf_counter()
        stored = 0
        async for response in self.search.IngestStream(requests(), timeout=3600):
            for result in response.results:
                if result.status == search_pb2.INGEST_STATUS_FAILED:
                    raise RuntimeError(f"ingest of {result.key!r} failed: {result.error.message}")
                stored += 1
        if stored != len(images):
            raise RuntimeError(f"IngestStream answered {stored} of {len(images)} items")
        return time.perf_counter() - started

    async def stored_embeddings(
        self, collection: str, keys: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """The stored full vectors, as GetImage returns them, one row per key."""
        gate = asyncio.Semaphore(_WINDOW)

        async def one(key: str) -> list[float]:
            async with gate:
                reply = await self.search.GetImage(
                    search_pb2.GetImageRequest(
                        collection=collection, key=key, include_embedding=True
                    ),
                    timeout=_TIMEOUT_S,
                )
            return list(reply.image.embedding.values)

        rows = await asyncio.gather(*(one(key) for key in keys))
        return np.asarray(rows, dtype=np.float32)

    async def refit(self, collection: str, *, dimensions: int, lists: int = 0) -> int:
        """Fits a FAST projection; returns its number of lists."""
        reply = await self.search.RefitProjection(
            search_pb2.RefitProjectionRequest(
                collection=collection, dimensions=dimensions, lists=lists
            ),
            timeout=_TIMEOUT_S,
        )
        return int(reply.projection.lists)

    # -- searches ---------------------------------------------------------------------

    async def leave_one_out(
        self,
        collection: str,
        queries: Sequence[str],
        *,
        top_k: int,
        mode: int = EXACT,
        probes: int = 0,
        candidates: int = 0,
    ) -> Pass:
        """Searches by each stored key (which the service leaves out of its hits), one at a
        time so that each search's latency is its own, not a queue's."""
        rankings: dict[str, list[str]] = {}
        seconds: list[float] = []
        for key in queries:
            request = search_pb2.SearchRequest(
                collection=collection,
                key=key,
                top_k=top_k,
                mode=mode,  # type: ignore[arg-type]
                probes=probes,
                candidates=candidates,
            )
            started = time.perf_counter()
            reply = await self.search.Search(request, timeout=_TIMEOUT_S)
            seconds.append(time.perf_counter() - started)
            rankings[key] = [hit.key for hit in reply.hits]
        return Pass(rankings, seconds)

    async def search_image(self, collection: str, data: bytes, *, top_k: int) -> list[str]:
        """Keys of the EXACT nearest stored images to an image file."""
        reply = await self.search.Search(
            search_pb2.SearchRequest(collection=collection, image=data, top_k=top_k, mode=EXACT),
            timeout=_TIMEOUT_S,
        )
        return [hit.key for hit in reply.hits]

    # -- the extractor ------------------------------------------------------------------

    async def model(self) -> extractor_pb2.ModelInfo:
        if self.extractor is None:
            raise RuntimeError("no extractor address given")
        reply = await self.extractor.GetModelInfo(
            extractor_pb2.GetModelInfoRequest(), timeout=_TIMEOUT_S
        )
        return reply.model

    async def embed(self, images: Sequence[bytes]) -> npt.NDArray[np.float32]:
        """Raw (not normalised) embeddings straight from the extractor, one row per image."""
        if self.extractor is None:
            raise RuntimeError("no extractor address given")
        extractor = self.extractor
        rows: list[list[float]] = []
        for start in range(0, len(images), _EMBED_CHUNK):
            chunk = images[start : start + _EMBED_CHUNK]
            reply = await extractor.Embed(
                extractor_pb2.EmbedRequest(
                    images=[
                        extractor_pb2.Image(id=str(start + i), data=data)
                        for i, data in enumerate(chunk)
                    ]
                ),
                timeout=_TIMEOUT_S,
            )
            for result in reply.results:
                if result.WhichOneof("outcome") != "embedding":
                    raise RuntimeError(f"extractor failed on image {result.id}: {result.error}")
                rows.append(list(result.embedding.values))
        return np.asarray(rows, dtype=np.float32)


def channel(
    address: str, credentials: grpc.ChannelCredentials | None = None, server_name: str = ""
) -> grpc.aio.Channel:
    """A channel that carries full-ranking pages and batches of images; TLS if credentials."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)
