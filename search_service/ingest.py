"""Ingest: validate each item, embed the images that changed, write the batch."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from imagesearch.search.v1 import search_pb2
from search_service import convert
from search_service.domain import Collection, ModelKey, NewImage, Vector
from search_service.extractor_client import ExtractorClient
from search_service.metrics import SearchMetrics
from search_service.store import Store
from service_core.errors import FailedPrecondition, InvalidArgument, ServiceError


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

    def fail(self, error: ServiceError) -> None:
        fail(self.result, error)

    @property
    def pending(self) -> bool:
        return self.result.status == search_pb2.INGEST_STATUS_UNSPECIFIED


class Ingester:
    """Turns IngestItems into stored images, one result per item."""

    def __init__(
        self,
        store: Store,
        extractor: ExtractorClient,
        *,
        written: Callable[[Collection], None],
        max_metadata_bytes: int = 32 * 1024,
        metrics: SearchMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or SearchMetrics(CollectorRegistry())
        self._max_metadata_bytes = max_metadata_bytes
        self._extractor = extractor
        # Told after each write that stored new vectors: the projection may need a fit.
        self._written = written

    async def ingest(
        self, collection: Collection, messages: Sequence[search_pb2.IngestItem], timeout_s: float
    ) -> list[search_pb2.IngestResult]:
        """Writes the valid items in one transaction; the others are answered FAILED."""
        return self.answered(await self._ingest(collection, messages, timeout_s))

    def answered(self, results: list[search_pb2.IngestResult]) -> list[search_pb2.IngestResult]:
        """``results``, counted by status: every item answered passes here once."""
        self._metrics.answered(results)
        return results

    async def _ingest(
        self, collection: Collection, messages: Sequence[search_pb2.IngestItem], timeout_s: float
    ) -> list[search_pb2.IngestResult]:
        store = self._store
        items = [
            parse(index, message, max_metadata_bytes=self._max_metadata_bytes)
            for index, message in enumerate(messages)
        ]
        # Only image items can be UNCHANGED (same bytes, same key); a batch of vectors
        # skips the round trip.
        with_images = [i.key for i in items if i.pending and i.image is not None]
        existing = await store.existing(collection, with_images) if with_images else {}
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
            model, embedded = await self._extractor.embed(
                [(i.key, i.image or b"") for i in to_embed], timeout_s=timeout_s
            )
            for item, outcome in zip(to_embed, embedded, strict=True):
                if outcome.vector is None:
                    item.fail(
                        outcome.error(outcome.error_message, field=f"items[{item.index}].image")
                    )
                else:
                    item.vector, item.model = outcome.vector, model
        target = collection.model or next((i.model for i in items if i.pending), None)
        for item in items:
            if item.pending and item.model != target:
                assert item.model is not None
                assert target is not None
                item.fail(
                    FailedPrecondition(
                        f"item {item.key!r}: vector of {item.model.describe()}, but collection "
                        f"{collection.name!r} holds {target.describe()}",
                        reason="MODEL_MISMATCH",
                        field=f"items[{item.index}].embedding.model",
                        metadata={"collection": collection.name, "key": item.key},
                    )
                )
        to_write = [i for i in items if i.pending]
        if not to_write and not updates:
            return [i.result for i in items]
        with self._metrics.stage["ingest_write"].time():
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
            self._written(collection)
        return [i.result for i in items]


def parse(index: int, message: search_pb2.IngestItem, *, max_metadata_bytes: int) -> _Item:
    """An item with its image or vector, or already FAILED with the reason.

    Everything PostgreSQL would refuse (a key past the index's byte limit, NUL in
    jsonb, NaN) is refused here, per item, so that the other items are stored.
    """
    item = _Item(index, message.key, {})
    item.result.key = message.key
    at = f"items[{index}]"
    try:
        convert.check_key(message.key, f"{at}.key")
        item.metadata = convert.struct_value(
            message.metadata,
            f"item {message.key!r} metadata",
            max_bytes=max_metadata_bytes,
            path=f"{at}.metadata",
        )
        source = message.WhichOneof("source")
        if source == "image":
            if not message.image:
                raise InvalidArgument(
                    f"item {message.key!r}: the image is empty",
                    reason="EMPTY_IMAGE",
                    field=f"{at}.image",
                )
            item.image = message.image
            item.sha256 = hashlib.sha256(message.image).digest()
            item.result.content_sha256 = item.sha256.hex()
        elif source == "embedding":
            model = convert.model_key(
                message.embedding.model,
                f"item {message.key!r} model",
                path=f"{at}.embedding.model",
            )
            item.model = model
            item.vector = convert.vector(
                message.embedding.vector.values,
                model.dimension,
                f"item {message.key!r}",
                path=f"{at}.embedding.vector.values",
            )
        else:
            raise InvalidArgument(
                f"item {message.key!r}: set image bytes or an embedding",
                reason="SOURCE_REQUIRED",
                field=f"{at}.source",
            )
    except InvalidArgument as error:
        error.metadata.setdefault("key", message.key)
        item.fail(error)
    return item


def fail(result: search_pb2.IngestResult, error: ServiceError) -> None:
    """Marks ``result`` FAILED with ``error``: the ItemError older clients read, and the
    google.rpc.Status with its details beside it."""
    result.status = search_pb2.INGEST_STATUS_FAILED
    result.error.code = error.code.value[0]
    result.error.message = error.message
    result.rpc_status.CopyFrom(error.status())
