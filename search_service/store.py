"""PostgreSQL access for the search service: collections, images, list entries, rows."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from search_service import sql
from search_service.copy import binary_copy
from search_service.db import Connection, database_errors
from search_service.domain import (
    DEFAULT_COLLECTION,
    Collection,
    CollectionSummary,
    ModelKey,
    NewImage,
    ProjectionInfo,
    StoredImage,
    Vector,
)
from search_service.projection import Projection, ProjectionVersion
from search_service.vectors import unit_rows
from service_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# A write that meets a fit's publication on the same image can deadlock (PostgreSQL
# then aborts one side); the write is simply tried again.
_WRITE_ATTEMPTS = 3
Record = asyncpg.Record


def _collection(row: Record) -> Collection:
    model = None
    if row["model_name"] is not None:
        model = ModelKey(row["model_name"], row["model_version"], row["dimension"])
    return Collection(row["id"], row["name"], model, row["serving_version"], row["created_at"])


class Store:
    """Every read and write of the search service goes through here."""

    def __init__(self, pool: asyncpg.Pool, *, distributed: bool = False) -> None:
        self.pool = pool
        # On a Citus coordinator: the few statements that differ there (sql.*_DISTRIBUTED).
        self.distributed = distributed
        self._versions: dict[tuple[int, int], ProjectionVersion] = {}

    # -- collections ------------------------------------------------------------

    async def collection(self, name: str) -> Collection:
        name = name or DEFAULT_COLLECTION
        async with database_errors():
            row = await self.pool.fetchrow(sql.COLLECTION_BY_NAME, name)
        if row is None:
            raise NotFound(
                f"collection {name!r} does not exist",
                reason="COLLECTION_NOT_FOUND",
                metadata={"collection": name},
            )
        return _collection(row)

    async def collections(self) -> list[Collection]:
        async with database_errors():
            return [_collection(r) for r in await self.pool.fetch(sql.COLLECTIONS)]

    async def create_collection(
        self, name: str, model: ModelKey | None, *, max_collections: int
    ) -> Collection:
        if not _NAME.match(name):
            raise InvalidArgument(
                f"name: {name!r} is not a valid collection name (1-63 letters, digits, '.', "
                "'_' or '-', starting with a letter or digit)",
                reason="INVALID_COLLECTION_NAME",
                field="name",
            )
        args = (model.name, model.version, model.dimension) if model else (None, None, None)
        async with database_errors(), self.pool.acquire() as connection, connection.transaction():
            # Creations take turns, so the count they check is the one they add to.
            await connection.execute(sql.LOCK_COLLECTION_CREATION)
            count: int = await connection.fetchval(sql.COUNT_COLLECTIONS)
            if count >= max_collections:
                raise ResourceExhausted(
                    f"name: the database holds {count} collections, the most allowed "
                    f"(SEARCH_MAX_COLLECTIONS); delete one first",
                    reason="TOO_MANY_COLLECTIONS",
                    metadata={"limit": str(max_collections)},
                    retryable=False,
                )
            row = await connection.fetchrow(sql.CREATE_COLLECTION, name, *args)
        if row is None:
            raise AlreadyExists(
                f"collection {name!r} already exists",
                reason="COLLECTION_EXISTS",
                metadata={"collection": name},
            )
        return _collection(row)

    async def delete_collection(self, name: str) -> int:
        """Deletes a collection (empties the default one); returns the images removed."""
        found = await self.collection(name)
        async with database_errors(), self.pool.acquire() as connection, connection.transaction():
            if self.distributed:
                await connection.execute(sql.SEQUENTIAL)
            count: int = await connection.fetchval(sql.COUNT_IMAGES, found.id)
            if found.name == DEFAULT_COLLECTION:
                await connection.execute(sql.DELETE_PROJECTIONS, found.id)
                await connection.fetchval(sql.EMPTY_COLLECTION, found.id)
            else:
                await connection.execute(sql.DELETE_COLLECTION, found.id)
        return count

    async def count(self, collection: Collection) -> int:
        async with database_errors():
            value: int = await self.pool.fetchval(sql.COUNT_IMAGES, collection.id)
            return value

    async def summaries(self) -> list[CollectionSummary]:
        """Every collection's projection state and image count (a scan: not per request)."""
        async with database_errors():
            rows = await self.pool.fetch(sql.COLLECTION_SUMMARIES)
        return [CollectionSummary(r["name"], r["state"], r["images"]) for r in rows]

    async def projections(self, collection: Collection) -> list[ProjectionInfo]:
        """Projections that are serving or being built, oldest first."""
        async with database_errors():
            rows = await self.pool.fetch(sql.LIVE_PROJECTIONS, collection.id)
        return [ProjectionInfo(**dict(r)) for r in rows]

    async def version(self, collection: Collection, version: int) -> ProjectionVersion:
        """A projection version's fitted model; immutable once written, so cached."""
        cache_key = (collection.id, version)
        if cache_key not in self._versions:
            async with database_errors():
                row = await self.pool.fetchrow(sql.PROJECTION_MODEL, collection.id, version)
            if row is None:
                raise NotFound(
                    f"projection {version} of {collection.name!r} is gone",
                    reason="PROJECTION_NOT_FOUND",
                    metadata={"collection": collection.name, "version": str(version)},
                )
            projection = await asyncio.to_thread(Projection.from_bytes, row["model"])
            self._versions[cache_key] = ProjectionVersion(version, projection, row["bounded"])
        return self._versions[cache_key]

    # -- images -----------------------------------------------------------------

    async def existing(
        self, collection: Collection, keys: Sequence[str]
    ) -> dict[str, tuple[bytes | None, dict[str, Any]]]:
        """Content hash and metadata of the keys already stored."""
        async with database_errors():
            rows = await self._by_keys(sql.EXISTING, sql.EXISTING_DISTRIBUTED, collection, keys)
        return {r["key"]: (r["content_sha256"], r["metadata"]) for r in rows}

    async def write(
        self,
        collection: Collection,
        model: ModelKey | None,
        images: Sequence[NewImage],
        metadata_updates: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> dict[str, bool]:
        """Upserts ``images`` in one transaction; returns key -> created (vs replaced).

        Binds an unbound collection to ``model`` first, and refuses a model that
        differs from the collection's (FAILED_PRECONDITION), writing nothing. Each image
        gets its list entry, with its lower-bound cube, in every live projection version.
        """
        # Unit vectors once, off the event loop; every version's cubes start from them.
        vectors = (
            await asyncio.to_thread(unit_rows, np.stack([i.embedding for i in images]))
            if images
            else None
        )
        entries: dict[int, _Entries] = {}
        if vectors is not None:
            # Computed before the transaction, so that it holds its locks briefly; a
            # version deleted meanwhile is skipped (the transaction reads the live ones).
            for info in await self.projections(collection):
                try:
                    fitted = await self.version(collection, info.version)
                except NotFound:
                    continue
                entries[info.version] = await asyncio.to_thread(fitted.entries, vectors)
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                return await self._write(
                    collection, model, images, vectors, entries, metadata_updates
                )
            except asyncpg.DeadlockDetectedError:
                if attempt == _WRITE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _write(
        self,
        collection: Collection,
        model: ModelKey | None,
        images: Sequence[NewImage],
        vectors: npt.NDArray[np.float64] | None,
        entries: dict[int, _Entries],
        metadata_updates: Sequence[tuple[str, dict[str, Any]]],
    ) -> dict[str, bool]:
        async with database_errors(), self.pool.acquire() as connection, connection.transaction():
            rows: list[Record] = []
            if images:
                assert model is not None
                assert vectors is not None
                await self._bind(connection, collection, model)
                await connection.execute(sql.LOCK_FOR_WRITE, collection.id)
                live = [
                    r["version"]
                    for r in await connection.fetch(sql.LIVE_VERSIONS_LOCKED, collection.id)
                ]
                for version in live:
                    if version not in entries:  # published since the entries were computed
                        fitted = await self.version(collection, version)
                        entries[version] = await asyncio.to_thread(fitted.entries, vectors)
                rows = await connection.fetch(
                    sql.UPSERT_IMAGES_DISTRIBUTED if self.distributed else sql.UPSERT_IMAGES,
                    collection.id,
                    [i.key for i in images],
                    [i.content_sha256 for i in images],
                    [i.metadata for i in images],
                    [i.embedding.astype("<f4").tobytes() for i in images],
                )
                if len(rows) < len(images):
                    written = {r["key"] for r in rows}
                    refused = [i.key for i in images if i.key not in written]
                    # The transaction rolls back: nothing of the batch is written.
                    raise AlreadyExists(
                        f"key {refused[0]!r} hashes to the id of another key of collection "
                        f"{collection.name!r} (a 63-bit hash collision); store it under "
                        "another key"
                    )
                if live and rows:
                    ids = {r["key"]: r["id"] for r in rows}
                    image_ids = [ids[i.key] for i in images]
                    await self._write_lists(
                        connection, collection, {v: entries[v] for v in live}, image_ids
                    )
            for key, metadata in metadata_updates:
                await connection.execute(
                    sql.UPDATE_METADATA_DISTRIBUTED if self.distributed else sql.UPDATE_METADATA,
                    collection.id,
                    key,
                    metadata,
                )
        return {r["key"]: r["created"] for r in rows}

    async def _bind(self, connection: Connection, collection: Collection, model: ModelKey) -> None:
        await connection.execute(
            sql.BIND_MODEL, collection.id, model.name, model.version, model.dimension
        )
        row = await connection.fetchrow(sql.COLLECTION_MODEL, collection.id)
        assert row is not None, "collections are deleted only with their images"
        bound = ModelKey(row["model_name"], row["model_version"], row["dimension"])
        if bound != model:
            raise FailedPrecondition(
                f"collection {collection.name!r} holds vectors of {bound.describe()}; "
                f"refusing vectors of {model.describe()}",
                reason="MODEL_MISMATCH",
                metadata={"collection": collection.name},
            )

    @staticmethod
    async def _write_lists(
        connection: Connection,
        collection: Collection,
        entries: dict[int, _Entries],
        image_ids: list[int],
    ) -> None:
        rows: list[tuple[int, int, int, Any]] = []
        for version, (lists, cubes) in entries.items():
            rows += zip([version] * len(image_ids), lists.tolist(), image_ids, cubes, strict=True)
        await connection.execute(sql.DELETE_LIST_ENTRIES, image_ids)
        await connection.execute(sql.CREATE_STAGING_LISTS)
        await connection.copy_to_table(
            "staging_lists",
            source=binary_copy(("int4", "int4", "int8", "float8[]"), rows),
            format="binary",
        )
        await connection.execute(sql.LISTS_FROM_STAGING, collection.id)

    async def embedding(self, collection: Collection, key: str) -> Vector:
        async with database_errors():
            data = await self.pool.fetchval(
                sql.EMBEDDING_OF_DISTRIBUTED if self.distributed else sql.EMBEDDING_OF,
                collection.id,
                key,
            )
        if data is None:
            raise NotFound(
                f"key {key!r} is not in collection {collection.name!r}",
                reason="KEY_NOT_FOUND",
                metadata={"collection": collection.name, "key": key},
            )
        return np.frombuffer(data, dtype="<f4").astype(np.float32)

    async def image(self, collection: Collection, key: str) -> StoredImage:
        async with database_errors():
            row = await self.pool.fetchrow(
                sql.IMAGE_DISTRIBUTED if self.distributed else sql.IMAGE, collection.id, key
            )
        if row is None:
            raise NotFound(
                f"key {key!r} is not in collection {collection.name!r}",
                reason="KEY_NOT_FOUND",
                metadata={"collection": collection.name, "key": key},
            )
        return StoredImage(
            key=row["key"],
            content_sha256=row["content_sha256"],
            metadata=row["metadata"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            embedding=np.frombuffer(row["embedding"], dtype="<f4").astype(np.float32),
        )

    async def delete(self, collection: Collection, keys: Sequence[str]) -> set[str]:
        async with database_errors():
            rows = await self._by_keys(
                sql.DELETE_IMAGES, sql.DELETE_IMAGES_DISTRIBUTED, collection, keys
            )
        return {r["key"] for r in rows}

    async def _by_keys(
        self, statement: str, distributed: str, collection: Collection, keys: Sequence[str]
    ) -> list[Record]:
        """Runs a statement on a batch of keys ($2); on Citus with their ids as $3, so that
        it reaches only the shards that hold them."""
        if not self.distributed:
            return await self.pool.fetch(statement, collection.id, list(keys))
        async with self.pool.acquire() as connection:
            ids = await connection.fetchval(sql.KEY_IDS, collection.id, list(keys))
            return await connection.fetch(distributed, collection.id, list(keys), ids)

    # -- what ranking reads -----------------------------------------------------

    async def list_candidates(
        self,
        collection: Collection,
        version: int,
        lists: Sequence[int],
        cube: npt.NDArray[np.float64],
        limit: int,
    ) -> list[int]:
        """Ids of the ``limit`` rows of ``lists`` nearest ``cube`` (FAST's candidates)."""
        async with database_errors():
            rows = await self.pool.fetch(
                sql.FAST_CANDIDATES, collection.id, version, list(lists), cube.tolist(), limit
            )
        return [r["image_id"] for r in rows]

    async def within_bound(
        self,
        collection: Collection,
        version: int,
        cube: npt.NDArray[np.float64],
        threshold: float,
        metadata_filter: dict[str, Any] | None,
    ) -> list[Record] | None:
        """(image_id, bound) of every row whose lower bound is <= ``threshold``, nearest first.

        None when the version has been retired: its rows may be going, so the scan could
        miss some, and the caller ranks again on the version now serving.
        """
        statement, extra = sql.BOUND_SCAN, []
        if metadata_filter is not None:
            statement, extra = sql.BOUND_SCAN_FILTERED, [metadata_filter]
        args = (collection.id, version, cube.tolist(), threshold, *extra)
        async with (
            database_errors(),
            self.pool.acquire() as connection,
            # One snapshot: the state read is the state of the rows scanned (a fit retires
            # a version before it deletes the version's rows).
            connection.transaction(readonly=True, isolation="repeatable_read"),
        ):
            state = await connection.fetchval(sql.PROJECTION_STATE, collection.id, version)
            if state != "ready":
                return None
            await connection.execute(sql.PARALLEL_SCAN)
            return await connection.fetch(statement, *args)

    async def vectors(
        self, ids: Sequence[int], exclude_key: str | None, metadata_filter: dict[str, Any] | None
    ) -> list[Record]:
        """(key, metadata, embedding) of the rows ``ids`` that pass the filter."""
        statement, extra = sql.CANDIDATE_VECTORS, []
        if metadata_filter is not None:
            statement, extra = sql.CANDIDATE_VECTORS_FILTERED, [metadata_filter]
        async with database_errors():
            return await self.pool.fetch(statement, list(ids), exclude_key, *extra)

    async def vectors_after(
        self,
        collection: Collection,
        after_id: int,
        limit: int,
        exclude_key: str | None,
        metadata_filter: dict[str, Any] | None,
    ) -> list[Record]:
        """(id, key, metadata, embedding) of the next ``limit`` rows in id order."""
        statement, extra = sql.VECTORS_AFTER, []
        if metadata_filter is not None:
            statement, extra = sql.VECTORS_AFTER_FILTERED, [metadata_filter]
        async with database_errors():
            return await self.pool.fetch(
                statement, collection.id, after_id, exclude_key, limit, *extra
            )


_Entries = tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]
