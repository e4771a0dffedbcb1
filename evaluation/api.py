"""The evaluation's client: ingest, leave-one-out searches, stored vectors, refits (through
imagesearch.client), and raw embeddings from the extractor."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import numpy as np
import numpy.typing as npt

from imagesearch.client import AsyncSearchClient, Item, NotFound
from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from imagesearch.search.v1 import search_pb2

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
    """A client of a search service and, optionally, a stub of the extractor it uses."""

    def __init__(self, search: AsyncSearchClient, extractor: ExtractorStub | None = None) -> None:
        self.search = search
        self.extractor = extractor

    # -- collections and ingest -------------------------------------------------------

    async def fresh_collection(self, name: str) -> None:
        """Creates ``name`` empty, deleting what an earlier run left under that name."""
        try:
            await self.search.delete_collection(name, timeout=_TIMEOUT_S)
        except NotFound as error:
            if error.reason != "COLLECTION_NOT_FOUND":
                raise
        await self.search.create_collection(name, timeout=_TIMEOUT_S)

    async def ingest(
        self, collection: str, images: Sequence[tuple[str, bytes, Mapping[str, Any]]]
    ) -> float:
        """Stores (key, image bytes, metadata) items through IngestStream; returns seconds.

        Raises RuntimeError naming the first item the service did not store.
        """

        async def items() -> AsyncIterator[Item]:
            for key, data, metadata in images:
                yield Item(key, image=data, metadata=metadata)

        started = time.perf_counter()
        stored = 0
        # One image per message, and a window wide enough that the service, not the
        # window, sets the pace: the seconds measured are the service's.
        results = self.search.ingest_stream(
            items(), collection=collection, batch_items=1, window=64, timeout=3600
        )
        async for result in results:
            if result.error is not None:
                raise RuntimeError(f"ingest of {result.key!r} failed: {result.error}")
            stored += 1
        if stored != len(images):
            raise RuntimeError(f"IngestStream answered {stored} of {len(images)} items")
        return time.perf_counter() - started

    async def stored_embeddings(
        self, collection: str, keys: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """The stored full vectors, as GetImage returns them, one row per key."""
        found = await self.search.get_images(
            keys,
            collection=collection,
            include_embedding=True,
            concurrency=_WINDOW,
            timeout=_TIMEOUT_S,
        )
        missing = [key for key in keys if key not in found]
        if missing:
            raise RuntimeError(f"{len(missing)} keys are not stored, {missing[0]!r} first")
        return np.asarray([found[key].embedding.values for key in keys], dtype=np.float32)

    async def refit(self, collection: str, *, dimensions: int, lists: int = 0) -> int:
        """Fits a FAST projection; returns its number of lists."""
        projection = await self.search.refit_projection(
            collection, dimensions=dimensions, lists=lists, timeout=_TIMEOUT_S
        )
        return int(projection.lists)

    # -- searches ---------------------------------------------------------------------

    async def leave_one_out(
        self,
        collection: str,
        queries: Sequence[str],
        *,
        top_k: int,
        mode: search_pb2.SearchMode.ValueType = EXACT,
        probes: int = 0,
        candidates: int = 0,
    ) -> Pass:
        """Searches by each stored key (which the service leaves out of its hits), one at a
        time so that each search's latency is its own, not a queue's."""
        rankings: dict[str, list[str]] = {}
        seconds: list[float] = []
        for key in queries:
            started = time.perf_counter()
            reply = await self.search.search(
                key,
                collection=collection,
                top_k=top_k,
                mode=mode,
                probes=probes,
                candidates=candidates,
                timeout=_TIMEOUT_S,
            )
            seconds.append(time.perf_counter() - started)
            rankings[key] = [hit.key for hit in reply.hits]
        return Pass(rankings, seconds)

    async def search_image(self, collection: str, data: bytes, *, top_k: int) -> list[str]:
        """Keys of the EXACT nearest stored images to an image file."""
        reply = await self.search.search(
            data, collection=collection, top_k=top_k, mode=EXACT, timeout=_TIMEOUT_S
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
