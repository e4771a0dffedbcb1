"""The search service's domain values: collections, images, hits and search queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
DEFAULT_COLLECTION = "default"


@dataclass(frozen=True)
class ModelKey:
    """Which model made a vector; vectors compare only within one."""

    name: str
    version: str
    dimension: int

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.dimension}-D)"


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    model: ModelKey | None
    serving_version: int | None
    created_at: datetime


@dataclass(frozen=True)
class ProjectionInfo:
    version: int
    state: str
    dimensions: int
    lists: int
    fitted_on: int
    fitted_at: datetime
    # False for a projection fitted before lower-bound cubes (schema 0001): its cubes
    # order FAST's candidates but prove nothing, so EXACT cannot prune with them.
    bounded: bool = True


@dataclass(frozen=True)
class CollectionSummary:
    """What the per-collection metrics show: a name, its projection state, its images."""

    name: str
    state: str  # none, building or ready: search.v1's ProjectionState, lower case
    images: int


@dataclass(frozen=True)
class NewImage:
    """An image to store, its vector already computed."""

    key: str
    content_sha256: bytes | None
    metadata: dict[str, Any]
    embedding: Vector  # as produced, float32


@dataclass(frozen=True)
class Hit:
    key: str
    distance: float
    metadata: dict[str, Any]


@dataclass(frozen=True)
class StoredImage:
    key: str
    content_sha256: bytes | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    embedding: Vector


@dataclass(frozen=True, kw_only=True)
class Query:
    """One page of a search: what to rank against and which hits it may return.

    ``limit`` and ``offset`` are in hits; a caller that wants to know whether a next
    page exists asks for one hit more than it shows.
    """

    vector: npt.NDArray[np.float64]  # unit length
    limit: int
    offset: int = 0
    exclude_key: str | None = None
    max_distance: float = float("inf")
    metadata_filter: dict[str, Any] | None = None

    @property
    def keep(self) -> int:
        """How many of the nearest hits the page needs, the skipped ones included."""
        return self.offset + self.limit
