"""Fits a collection's projection and publishes it while the previous one serves."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import numpy.typing as npt

from search_service import sql
from search_service.copy import binary_copy
from search_service.db import Connection, database_errors
from search_service.domain import Collection, ProjectionInfo
from search_service.projection import (
    MAX_BOUNDED_DIMENSIONS,
    ProjectionVersion,
    default_lists,
    fit_projection,
)
from search_service.store import Store
from search_service.vectors import units
from service_core.errors import FailedPrecondition

log = logging.getLogger(__name__)

# Advisory lock namespace (first key) for "a refit of collection N is running".
_LOCK_NAMESPACE = 0x1A6E
# Vectors projected per step of a fit: 64 MiB of float32 whatever the dimension.
_BATCH_BYTES = 64 << 20
MIN_IMAGES = 2
# A fit needs at least this many sampled rows to be worth publishing.
_MIN_SAMPLE = 256
# Sampled rows read per round trip.
_SAMPLE_PART = 256


class Refitter:
    """Runs at most one fit per collection across every replica (an advisory lock)."""

    def __init__(
        self, store: Store, *, dimensions: int, sample: int, memory_bytes: int = 1 << 30
    ) -> None:
        self._store = store
        self._dimensions = dimensions
        self._sample = sample
        # The fit holds its sample (rows x D float32) and a few (rows or D) x 2d blocks,
        # never a D x D matrix: the sample is cut to fit this budget.
        self._memory_bytes = memory_bytes

    def sample_size(self, dimension: int) -> int:
        """Rows sampled for a fit at ``dimension``; FAILED_PRECONDITION if too few fit."""
        rows = min(self._sample, self._memory_bytes // (4 * dimension))
        if rows < min(self._sample, _MIN_SAMPLE):
            raise FailedPrecondition(
                f"{dimension}-D vectors are too large to fit a projection in "
                f"{self._memory_bytes >> 20} MiB (room for {rows} sampled rows, at least "
                f"{min(self._sample, _MIN_SAMPLE)} needed); raise SEARCH_FIT_MEMORY_BYTES",
                reason="FIT_MEMORY_TOO_SMALL",
            )
        return rows

    async def refit(
        self, collection: Collection, *, dimensions: int = 0, lists: int = 0
    ) -> ProjectionInfo:
        """Fits, writes and publishes a new projection version; returns it."""
        async with database_errors(), self._store.pool.acquire() as connection:
            locked = await connection.fetchval(sql.FIT_LOCK, _LOCK_NAMESPACE, collection.id)
            if not locked:
                raise FailedPrecondition(
                    f"a projection of collection {collection.name!r} is already being fitted",
                    reason="FIT_IN_PROGRESS",
                    metadata={"collection": collection.name},
                )
            try:
                return await self._refit(connection, collection, dimensions, lists)
            finally:
                await connection.execute(sql.DROP_REFIT_LISTS)
                await connection.fetchval(sql.FIT_UNLOCK, _LOCK_NAMESPACE, collection.id)

    async def _refit(
        self, connection: Connection, collection: Collection, dimensions: int, lists: int
    ) -> ProjectionInfo:
        count: int = await connection.fetchval(sql.COUNT_IMAGES, collection.id)
        if count < MIN_IMAGES:
            raise FailedPrecondition(
                f"collection {collection.name!r} has {count} images; a projection needs at "
                f"least {MIN_IMAGES}",
                reason="TOO_FEW_IMAGES",
                metadata={"collection": collection.name, "minimum": str(MIN_IMAGES)},
            )
        if collection.model is None:
            raise FailedPrecondition(
                f"collection {collection.name!r} holds no vectors yet",
                reason="COLLECTION_EMPTY",
                metadata={"collection": collection.name},
            )
        started = asyncio.get_running_loop().time()
        sample = await self._read_sample(connection, collection, count)
        wanted = dimensions or self._dimensions
        dims = min(wanted, MAX_BOUNDED_DIMENSIONS, sample.shape[1], len(sample))
        lists = min(lists or default_lists(count), len(sample))
        projection = await asyncio.to_thread(fit_projection, sample, dimensions=dims, lists=lists)
        del sample
        async with connection.transaction():
            # Waits for the writes in flight; every write after this sees the new version.
            await connection.execute(sql.LOCK_FOR_NEW_VERSION, collection.id)
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
        fitted = ProjectionVersion(version, projection, bounded=True)
        try:
            await self._write_entries(connection, collection, fitted)
            async with connection.transaction():
                if self._store.distributed:
                    # Citus refuses a write to a reference table after a parallel write to
                    # shards that reference it in the same transaction; this order it takes.
                    await connection.execute(sql.PUBLISH_PROJECTION, collection.id, version)
                    await connection.execute(sql.RETIRE_PROJECTIONS, collection.id, version)
                    await connection.execute(sql.PUBLISH_LISTS, collection.id, version)
                else:
                    await connection.execute(sql.PUBLISH_LISTS, collection.id, version)
                    await connection.execute(sql.PUBLISH_PROJECTION, collection.id, version)
                    await connection.execute(sql.RETIRE_PROJECTIONS, collection.id, version)
        except BaseException:
            await connection.execute(sql.ABANDON_PROJECTION, collection.id, version)
            raise
        # The retired versions' rows go in batches, so no long lock holds up ingest.
        retired = (
            sql.DELETE_RETIRED_LISTS_DISTRIBUTED
            if self._store.distributed
            else sql.DELETE_RETIRED_LISTS
        )
        while await connection.execute(retired, collection.id, 10_000) != "DELETE 0":
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

    async def _read_sample(
        self, connection: Connection, collection: Collection, count: int
    ) -> npt.NDArray[np.float32]:
        """A random sample of the unit vectors, float32, read a part at a time.

        The sample is the fit's one large allocation: rows land in it as they arrive,
        so the bytes read from PostgreSQL never pile up beside it.
        """
        assert collection.model is not None
        size = self.sample_size(collection.model.dimension)
        percent = min(100.0, 100.0 * 1.2 * size / count)
        sample = np.empty((size, collection.model.dimension), dtype=np.float32)
        filled = 0
        pending: list[bytes] = []

        def land() -> None:
            nonlocal filled
            sample[filled : filled + len(pending)] = units(pending)
            filled += len(pending)
            pending.clear()

        async with connection.transaction():
            cursor = connection.cursor(
                sql.SAMPLE_EMBEDDINGS, collection.id, percent, size, prefetch=_SAMPLE_PART
            )
            async for record in cursor:
                pending.append(record["embedding"])
                if len(pending) == _SAMPLE_PART:
                    await asyncio.to_thread(land)
        if pending:
            land()
        return sample[:filled]

    @staticmethod
    async def _write_entries(
        connection: Connection, collection: Collection, fitted: ProjectionVersion
    ) -> None:
        """Every image's list and lower-bound cube, staged for publication."""
        assert collection.model is not None
        batch = max(1, _BATCH_BYTES // (4 * collection.model.dimension))
        await connection.execute(sql.CREATE_REFIT_LISTS)
        await connection.execute(sql.TRUNCATE_REFIT_LISTS)
        last_id = 0
        while rows := await connection.fetch(sql.EMBEDDINGS_AFTER, collection.id, last_id, batch):
            last_id = rows[-1]["id"]
            ids = [r["id"] for r in rows]
            vectors = await asyncio.to_thread(units, [r["embedding"] for r in rows])
            lists, cubes = await asyncio.to_thread(fitted.entries, vectors)
            del rows
            await connection.copy_to_table(
                "refit_lists",
                source=binary_copy(
                    ("int4", "int8", "float8[]"), zip(lists.tolist(), ids, cubes, strict=True)
                ),
                format="binary",
            )


class AutoFit:
    """Fits each collection's projection in the background as it grows.

    The first fit comes once a collection holds ``threshold`` images (below that EXACT
    ranks every vector in the service); after that, a refit each time the collection has
    grown ``growth``-fold since the serving projection was fitted, and one for a
    projection fitted before lower bounds existed. Ingest and search never wait for it.
    """

    def __init__(
        self,
        store: Store,
        refitter: Refitter,
        *,
        threshold: int,
        growth: float,
        check_interval_s: float = 10.0,
    ) -> None:
        self._store = store
        self._refitter = refitter
        self._threshold = threshold
        self._growth = growth
        # Counting a large collection costs a scan: once it has a projection, look at
        # most this often.
        self._interval = check_interval_s
        self._checked: dict[int, float] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def notice(self, collection: Collection) -> None:
        """A write stored vectors in ``collection``: check it soon, off the caller's path."""
        name = f"fit:{collection.id}"
        if any(t.get_name() == name for t in self.tasks):
            return
        now = asyncio.get_running_loop().time()
        if collection.serving_version is not None and (
            now - self._checked.get(collection.id, -self._interval) < self._interval
        ):
            return
        self._checked[collection.id] = now
        task = asyncio.create_task(self._check(collection.name), name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def check_all(self) -> None:
        """Notices every collection (at start-up: some may be due a fit)."""
        for collection in await self._store.collections():
            if collection.model is not None:
                self.notice(collection)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _check(self, name: str) -> None:
        try:
            collection = await self._store.collection(name)
            count = await self._store.count(collection)
            if await self._due(collection, count):
                await self._refitter.refit(collection)
        except FailedPrecondition as error:  # another replica is fitting, or too few rows
            log.info("automatic fit skipped: %s", error.message)
        except Exception:
            log.exception("automatic fit failed", extra={"collection": name})

    async def _due(self, collection: Collection, count: int) -> bool:
        if collection.serving_version is None:
            return count >= self._threshold
        live = await self._store.projections(collection)
        serving = next((p for p in live if p.version == collection.serving_version), None)
        if serving is None:
            return False
        if not serving.bounded:
            return True
        return self._growth > 0 and count >= self._growth * serving.fitted_on
