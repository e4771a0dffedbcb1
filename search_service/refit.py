"""Fits a collection's projection and publishes it while the previous one serves."""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np

from search_service import sql
from search_service.copy import binary_copy
from search_service.projection import default_lists, fit_projection
from search_service.store import (
    Collection,
    Connection,
    ProjectionInfo,
    Store,
    database_errors,
)
from service_core.errors import FailedPrecondition

log = logging.getLogger(__name__)

# Advisory lock namespace (first key) for "a refit of collection N is running".
_LOCK_NAMESPACE = 0x1A6E
_BATCH = 4096
MIN_IMAGES = 2

_CREATE_RESULTS = """
CREATE TEMPORARY TABLE IF NOT EXISTS refit_lists (
    list_id integer NOT NULL, image_id bigint NOT NULL, coarse float8[] NOT NULL)
"""
_PUBLISH_LISTS = """
INSERT INTO image_lists (collection_id, version, list_id, image_id, coarse)
SELECT $1, $2, r.list_id, r.image_id, cube(r.coarse)
FROM refit_lists r JOIN images i ON i.id = r.image_id
ORDER BY r.list_id, r.image_id
ON CONFLICT DO NOTHING
"""


class Refitter:
    """Runs at most one fit per collection across every replica (an advisory lock)."""

    def __init__(self, store: Store, *, dimensions: int, sample: int) -> None:
        self._store = store
        self._dimensions = dimensions
        self._sample = sample

    async def refit(
        self, collection: Collection, *, dimensions: int = 0, lists: int = 0
    ) -> ProjectionInfo:
        """Fits, writes and publishes a new projection version; returns it."""
        async with database_errors(), self._store.pool.acquire() as connection:
            locked = await connection.fetchval(sql.FIT_LOCK, _LOCK_NAMESPACE, collection.id)
            if not locked:
                raise FailedPrecondition(
                    f"a projection of collection {collection.name!r} is already being fitted"
                )
            try:
                return await self._refit(connection, collection, dimensions, lists)
            finally:
                await connection.execute("DROP TABLE IF EXISTS refit_lists")
                await connection.fetchval(sql.FIT_UNLOCK, _LOCK_NAMESPACE, collection.id)

    async def _refit(
        self, connection: Connection, collection: Collection, dimensions: int, lists: int
    ) -> ProjectionInfo:
        count: int = await connection.fetchval(sql.COUNT_IMAGES, collection.id)
        if count < MIN_IMAGES:
            raise FailedPrecondition(
                f"collection {collection.name!r} has {count} images; a projection needs at "
                f"least {MIN_IMAGES}"
            )
        percent = min(100.0, 100.0 * 1.2 * self._sample / count)
        rows = await connection.fetch(sql.SAMPLE_EMBEDDINGS, collection.id, percent, self._sample)
        sample = _units([r["embedding"] for r in rows])
        wanted = dimensions or self._dimensions
        dims = min(wanted, sample.shape[1], len(sample))
        lists = min(lists or default_lists(count), len(sample))
        started = asyncio.get_running_loop().time()
        projection = await asyncio.to_thread(fit_projection, sample, dimensions=dims, lists=lists)
        version: int = await connection.fetchval(sql.NEXT_PROJECTION_VERSION, collection.id)
        await connection.execute(
            sql.INSERT_PROJECTION,
            collection.id,
            version,
            dims,
            projection.lists,
            count,
            projection.to_bytes(),
        )
        try:
            await connection.execute(_CREATE_RESULTS)
            await connection.execute("TRUNCATE refit_lists")
            last_id = 0
            while batch := await connection.fetch(
                sql.EMBEDDINGS_AFTER, collection.id, last_id, _BATCH
            ):
                last_id = batch[-1]["id"]
                vectors = _units([r["embedding"] for r in batch])
                coarse = await asyncio.to_thread(projection.project, vectors)
                assigned = await asyncio.to_thread(projection.assign, coarse)
                entries = zip(assigned.tolist(), [r["id"] for r in batch], coarse, strict=True)
                await connection.copy_to_table(
                    "refit_lists",
                    source=binary_copy(("int4", "int8", "float8[]"), entries),
                    format="binary",
                )
            async with connection.transaction():
                await connection.execute(_PUBLISH_LISTS, collection.id, version)
                await connection.execute(sql.PUBLISH_PROJECTION, collection.id, version)
                await connection.execute(sql.RETIRE_PROJECTIONS, collection.id, version)
        except BaseException:
            await connection.execute(sql.ABANDON_PROJECTION, collection.id, version)
            raise
        # The retired versions' rows go in batches, so no long lock holds up ingest.
        while (
            await connection.execute(sql.DELETE_RETIRED_LISTS, collection.id, 10_000) != "DELETE 0"
        ):
            pass
        await connection.execute(sql.DELETE_RETIRED_PROJECTIONS, collection.id)
        # Fresh statistics at once: with those of an empty or retired version the planner
        # scans a whole version instead of probing the lists through the index.
        await connection.execute(sql.ANALYZE_LISTS)
        seconds = asyncio.get_running_loop().time() - started
        log.info(
            "projection published",
            extra={
                "collection": collection.name,
                "version": version,
                "dimensions": dims,
                "lists": projection.lists,
                "fitted_on": count,
                "seconds": round(seconds, 1),
            },
        )
        info = [p for p in await self._store.projections(collection) if p.version == version]
        return info[0]


def _units(blobs: list[bytes]) -> np.ndarray:
    """Stored float32 vectors, L2-normalised, as one (n, D) float32 matrix."""
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalised: np.ndarray = (matrix / np.maximum(norms, math.ulp(1.0))).astype(np.float32)
    return normalised
