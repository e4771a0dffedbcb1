"""The client's value types: items to ingest and their per-item results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from google.rpc import status_pb2

from imagesearch.client.errors import SearchError, from_status
from imagesearch.search.v1 import search_pb2

CREATED = search_pb2.INGEST_STATUS_CREATED
UPDATED = search_pb2.INGEST_STATUS_UPDATED
UNCHANGED = search_pb2.INGEST_STATUS_UNCHANGED
FAILED = search_pb2.INGEST_STATUS_FAILED
EXACT = search_pb2.SEARCH_MODE_EXACT
FAST = search_pb2.SEARCH_MODE_FAST


@dataclass(frozen=True)
class Model:
    """The model a precomputed vector comes from (see search.v1.Model)."""

    name: str
    dimension: int
    version: str = ""


@dataclass(frozen=True)
class Item:
    """One image to store under ``key``: its encoded file, or a vector of ``model``."""

    key: str
    image: bytes | None = None
    vector: Sequence[float] | None = None
    model: Model | None = None
    metadata: Mapping[str, Any] | None = None

    def message(self) -> search_pb2.IngestItem:
        if (self.image is None) == (self.vector is None):
            raise ValueError(f"item {self.key!r}: give exactly one of image and vector")
        item = search_pb2.IngestItem(key=self.key, metadata=struct(self.metadata))
        if self.image is not None:
            item.image = self.image
        else:
            if self.model is None:
                raise ValueError(f"item {self.key!r}: a vector needs its model")
            item.embedding.vector.values.extend(float(v) for v in self.vector or ())
            item.embedding.model.name = self.model.name
            item.embedding.model.version = self.model.version
            item.embedding.model.dimension = self.model.dimension
        return item


@dataclass(frozen=True)
class ItemResult:
    """What happened to one ingested item; ``error`` is set when it was not stored."""

    key: str
    status: search_pb2.IngestStatus.ValueType
    content_sha256: str = ""
    error: SearchError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def of(cls, result: search_pb2.IngestResult) -> ItemResult:
        error = None
        if result.status == FAILED:
            # A service older than the google.rpc.Status field sends only ItemError.
            status = result.rpc_status
            if not result.HasField("rpc_status"):
                status = status_pb2.Status(code=result.error.code, message=result.error.message)
            error = from_status(status)
        return cls(result.key, result.status, result.content_sha256, error)


def struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    converted = struct_pb2.Struct()
    converted.update(dict(value))
    return converted
