"""The search service on a real Citus cluster (a coordinator and two workers).

The correctness tests of test_service.py and test_exact.py run on both backends
(tests.backends.BOTH); these pin down what only Citus has: the tables' distribution, the
candidate stage inside each shard, the same answer as a single node, a worker lost and
found again, migrations taken in turn by replicas starting together.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest

from devenv.citus import LocalCitus
from devenv.postgres import LocalPostgres
from imagesearch.search.v1 import search_pb2
from search_service import schema, sql
from tests.conftest import NewDatabase
from tests.search.conftest import StartSearch, Stub
from tests.search.test_service import (
    MODEL,
    brute_force,
    clustered,
    expect_error,
    ingest_vectors,
    vector_item,
)

pytestmark = pytest.mark.citus


async def _fitted(stub: Stub, count: int, seed: int) -> np.ndarray:
    matrix = clustered(count, seed=seed)
    await ingest_vectors(stub, matrix)
    refit = await stub.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=8, lists=6))
    assert refit.projection.state == search_pb2.PROJECTION_STATE_READY
    return matrix


async def _fetch(dsn: str, statement: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


async def _fast_shutdown(node: LocalPostgres) -> None:
    """Stops a server the way pg_ctl's fast mode does, by signal: forking pg_ctl while
    gRPC threads are busy can crash the child before it runs."""
    pid = int((node.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGINT)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)


def _search(
    query: np.ndarray, mode: search_pb2.SearchMode.ValueType, **fields: Any
) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(
        vector=search_pb2.Vector(values=query.tolist()), top_k=10, mode=mode, **fields
    )


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_images_spread_over_both_workers_and_small_tables_are_copied(
    start_search: StartSearch, database_url: str
) -> None:
    _, stub = await start_search(extractor_address="127.0.0.1:1")
    await _fitted(stub, 400, seed=2)
    tables = {
        r["table"]: (r["kind"], r["column"])
        for r in await _fetch(
            database_url,
            "SELECT logicalrelid::text AS table, partmethod AS kind,"
            " column_to_column_name(logicalrelid, partkey) AS column FROM pg_dist_partition",
        )
    }
    assert tables == {
        "collections": (b"n", None),
        "projections": (b"n", None),
        "images": (b"h", "id"),
        "image_lists": (b"h", "image_id"),
    }
    colocated = await _fetch(
        database_url,
        "SELECT count(DISTINCT colocationid) FROM pg_dist_partition"
        " WHERE logicalrelid IN ('images'::regclass, 'image_lists'::regclass)",
    )
    assert colocated[0]["count"] == 1
    # One collection's rows sit on every worker, in (nearly) equal parts.
    placed = await _fetch(
        database_url,
        "SELECT nodeport, sum(result::bigint) AS rows FROM run_command_on_shards("
        "'images', 'SELECT count(*) FROM %s') r JOIN pg_dist_placement p USING (shardid)"
        " JOIN pg_dist_node n USING (groupid) GROUP BY nodeport",
    )
    assert len(placed) == 2
    assert sum(r["rows"] for r in placed) == 400
    assert min(r["rows"] for r in placed) > 120


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_candidate_stage_runs_order_by_limit_inside_each_shard_rerank_reads_its_rows(
    start_search: StartSearch, database_url: str
) -> None:
    _, stub = await start_search(extractor_address="127.0.0.1:1")
    await _fitted(stub, 300, seed=3)
    shards = (
        await _fetch(
            database_url,
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'image_lists'::regclass",
        )
    )[0]["count"]
    # Two candidates' rows, and the shards that hold them.
    picked = await _fetch(
        database_url,
        "SELECT id, get_shard_id_for_distribution_column('images', id) AS shard"
        " FROM images ORDER BY id LIMIT 2",
    )
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("SET citus.explain_all_tasks = on")
        plan = "\n".join(
            r[0]
            for r in await connection.fetch(
                "EXPLAIN " + sql.FAST_CANDIDATES, 1, 1, [0, 1, 2], [0.0] * 9, 50
            )
        )
        rerank = "\n".join(
            r[0]
            for r in await connection.fetch(
                "EXPLAIN " + sql.CANDIDATE_VECTORS, [r["id"] for r in picked], None
            )
        )
    finally:
        await connection.close()
    # The re-rank reads the candidates' vectors from their shards only.
    assert f"Task Count: {len({r['shard'] for r in picked})}" in rerank, rerank
    assert f"Task Count: {shards}" in plan, plan
    # Every shard task sorts by the cube distance and stops at the limit; the
    # coordinator merges the tasks' rows with a Limit -> Sort of its own.
    tasks = plan.split("->  Task")
    assert len(tasks) == shards + 1, plan
    for task in tasks[1:]:
        assert _in_order(task, "->  Limit", "->  Sort", "Sort Key: ((image_lists.coarse <->"), task
    assert _in_order(tasks[0], "Limit", "->  Sort", "->  Custom Scan (Citus Adaptive)"), plan


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_look_ups_by_key_reach_only_the_shards_that_hold_the_keys(
    start_search: StartSearch, database_url: str
) -> None:
    _, stub = await start_search(extractor_address="127.0.0.1:1")
    await ingest_vectors(stub, clustered(200, seed=5))
    stored = await _fetch(
        database_url,
        "SELECT collection_id, key, id, get_shard_id_for_distribution_column('images', id)"
        " AS shard FROM images ORDER BY key LIMIT 3",
    )
    collection, keys = stored[0]["collection_id"], [r["key"] for r in stored]
    connection = await asyncpg.connect(database_url)
    try:
        # The ids the store computes for a batch of keys are those the upsert stored.
        ids = await connection.fetchval(sql.KEY_IDS, collection, keys)
        assert ids == [r["id"] for r in stored]

        async def plan(statement: str, *args: object) -> str:
            return "\n".join(r[0] for r in await connection.fetch("EXPLAIN " + statement, *args))

        for single in (sql.IMAGE_DISTRIBUTED, sql.EMBEDDING_OF_DISTRIBUTED):
            assert "Task Count: 1\n" in await plan(single, collection, keys[0])
        shards = len({r["shard"] for r in stored})
        for batch in (sql.EXISTING_DISTRIBUTED, sql.DELETE_IMAGES_DISTRIBUTED):
            assert f"Task Count: {shards}\n" in await plan(batch, collection, keys, ids)
        # The same statements on the rows, as the service runs them.
        found = await connection.fetch(sql.EXISTING_DISTRIBUTED, collection, keys, ids)
        assert sorted(r["key"] for r in found) == keys
    finally:
        await connection.close()
    got = await stub.GetImage(search_pb2.GetImageRequest(key=keys[0]))
    assert got.image.key == keys[0]
    deleted = await stub.DeleteImages(search_pb2.DeleteImagesRequest(keys=[*keys, "absent"]))
    assert (deleted.deleted_count, list(deleted.missing_keys)) == (3, ["absent"])


def _in_order(text: str, *parts: str) -> bool:
    at = [text.find(part) for part in parts]
    return -1 not in at and at == sorted(at)


async def test_same_hits_and_distances_as_a_single_node(
    start_search: StartSearch, new_database: NewDatabase, postgres: object, citus: object
) -> None:
    matrix = clustered(500, seed=4)
    single_url, citus_url = await new_database("postgres"), await new_database("citus")
    _, single = await start_search(
        database_url=single_url, extractor_address="127.0.0.1:1", auto_fit_threshold=10**9
    )
    await ingest_vectors(single, matrix)
    await single.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=8, lists=6))
    # The same projection on Citus (a fit's sample comes in shard order, so a fit there
    # would differ): published before the rows arrive, each write adds their entries.
    fitted = (await _fetch(single_url, "SELECT * FROM projections"))[0]
    _, distributed = await start_search(
        database_url=citus_url, extractor_address="127.0.0.1:1", auto_fit_threshold=10**9
    )
    await _fetch(
        citus_url,
        "WITH p AS (INSERT INTO projections (collection_id, version, state, dimensions, lists,"
        " fitted_on, model, bounded) VALUES (1, $1, 'ready', $2, $3, $4, $5, $6))"
        " UPDATE collections SET serving_version = $1 WHERE id = 1",
        *(fitted[c] for c in ("version", "dimensions", "lists", "fitted_on", "model", "bounded")),
    )
    await ingest_vectors(distributed, matrix)
    for seed in range(3):
        query = clustered(1, seed=200 + seed)[0]
        for mode, fields in (
            (search_pb2.SEARCH_MODE_EXACT, {}),
            (search_pb2.SEARCH_MODE_FAST, {"probes": 2, "candidates": 40}),
        ):
            one = await single.Search(_search(query, mode, **fields))
            spread = await distributed.Search(_search(query, mode, **fields))
            if mode == search_pb2.SEARCH_MODE_FAST:
                assert spread.projection_version == one.projection_version == fitted["version"]
            assert [h.key for h in spread.hits] == [h.key for h in one.hits]
            assert [h.distance for h in spread.hits] == [h.distance for h in one.hits]


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_a_stopped_worker_is_unavailable_then_the_service_recovers(
    start_search: StartSearch, citus: LocalCitus, database_url: str
) -> None:
    _, stub = await start_search(extractor_address="127.0.0.1:1")
    await _fitted(stub, 300, seed=5)
    query = clustered(1, seed=9)[0]
    before = await stub.Search(_search(query, search_pb2.SEARCH_MODE_EXACT))
    worker = citus.workers[0]

    stopped = asyncio.Event()

    async def searches() -> list[grpc.StatusCode]:
        """Codes of the searches from just before the worker stops to after it is down."""
        codes: list[grpc.StatusCode] = []
        while len(codes) < 10:
            down = stopped.is_set()
            try:
                await stub.Search(_search(query, search_pb2.SEARCH_MODE_FAST))
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            if down:
                codes.append(code)
            else:  # under way when the worker stopped, or before
                assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
        return codes

    try:
        running = asyncio.create_task(searches())
        await asyncio.sleep(0.2)
        await _fast_shutdown(worker)
        stopped.set()
        assert await running == [grpc.StatusCode.UNAVAILABLE] * 10
        # A batch whose rows fall on both workers: all of it or none of it.
        items = [vector_item(f"new{i}", clustered(1, seed=300 + i)[0]) for i in range(20)]
        await expect_error(
            stub.Ingest(search_pb2.IngestRequest(items=items)),
            grpc.StatusCode.UNAVAILABLE,
            "database",
        )
    finally:
        await asyncio.to_thread(worker.start)
    codes = []
    for _ in range(50):  # the pool replaces its dead connections on the next calls
        try:
            after = await stub.Search(_search(query, search_pb2.SEARCH_MODE_EXACT))
            break
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
            await asyncio.sleep(0.2)
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
    assert [h.key for h in after.hits] == [h.key for h in before.hits]
    stats = await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.image_count == 300


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_a_worker_lost_mid_batch_leaves_all_of_it_or_none(
    start_search: StartSearch, citus: LocalCitus, database_url: str
) -> None:
    _, stub = await start_search(extractor_address="127.0.0.1:1", max_ingest_items=3000)
    await _fitted(stub, 300, seed=10)
    matrix = clustered(3000, seed=11)
    items = [vector_item(f"batch{i}", matrix[i]) for i in range(len(matrix))]
    worker = citus.workers[1]
    try:
        writing = asyncio.ensure_future(stub.Ingest(search_pb2.IngestRequest(items=items)))
        await asyncio.sleep(0.3)
        await _fast_shutdown(worker)
        try:
            await writing
            outcome = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            outcome = error.code()
        assert outcome in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    finally:
        await asyncio.to_thread(worker.start)
    # A transaction the coordinator committed while the worker held it prepared is
    # finished on that worker by Citus's recovery (here at once rather than within a minute).
    await _fetch(database_url, "SELECT recover_prepared_transactions()")
    counts = await _fetch(
        database_url,
        "SELECT (SELECT count(*) FROM images WHERE key LIKE 'batch%') AS images,"
        " (SELECT count(*) FROM image_lists l JOIN images i ON i.id = l.image_id"
        "  WHERE i.key LIKE 'batch%') AS entries",
    )
    written = 3000 if outcome == grpc.StatusCode.OK else 0
    assert dict(counts[0]) == {"images": written, "entries": written}


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_replicas_starting_together_migrate_once(
    start_search: StartSearch, database_url: str
) -> None:
    await asyncio.gather(*(start_search(extractor_address="127.0.0.1:1") for _ in range(3)))
    applied = await _fetch(database_url, "SELECT version FROM schema_migrations ORDER BY 1")
    assert [r["version"] for r in applied] == [1, 2, 3, 4]
    shards = await _fetch(
        database_url,
        "SELECT logicalrelid::text AS t, count(*) FROM pg_dist_shard GROUP BY 1 ORDER BY 1",
    )
    assert {r["t"]: r["count"] for r in shards}.keys() == {
        "collections",
        "projections",
        "images",
        "image_lists",
    }


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_a_key_whose_id_is_taken_is_refused_and_nothing_written(
    start_search: StartSearch, database_url: str
) -> None:
    _, stub = await start_search(extractor_address="127.0.0.1:1")
    await ingest_vectors(stub, clustered(10, seed=6))
    # Stands for a 63-bit hash collision: the id "victim" would get is held by "squatter".
    await _fetch(
        database_url,
        "INSERT INTO images (id, collection_id, key, embedding)"
        " SELECT greatest(hashtextextended('victim', 1) & 9223372036854775807, 1), 1,"
        " 'squatter', embedding FROM images LIMIT 1",
    )
    items = [vector_item("fresh", clustered(1, seed=7)[0]), vector_item("victim", np.ones(32))]
    await expect_error(
        stub.Ingest(search_pb2.IngestRequest(items=items)),
        grpc.StatusCode.ALREADY_EXISTS,
        "'victim'",
        "hash collision",
    )
    stats = await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.image_count == 11
    found = await _fetch(database_url, "SELECT key FROM images WHERE key IN ('fresh', 'victim')")
    assert found == []


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_deleting_the_default_collection_empties_every_shard(
    start_search: StartSearch, database_url: str
) -> None:
    _, stub = await start_search(extractor_address="127.0.0.1:1")
    await _fitted(stub, 300, seed=8)
    gone = await stub.DeleteCollection(search_pb2.DeleteCollectionRequest(name="default"))
    assert gone.deleted_images == 300
    left = await _fetch(
        database_url,
        "SELECT (SELECT count(*) FROM images) AS images, (SELECT count(*) FROM image_lists)"
        " AS entries, (SELECT count(*) FROM projections) AS projections",
    )
    assert dict(left[0]) == {"images": 0, "entries": 0, "projections": 0}
    await ingest_vectors(stub, clustered(20, seed=9))
    stats = await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.image_count == 20


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
async def test_a_database_that_served_on_one_node_distributes_with_nothing_lost(
    start_search: StartSearch, database_url: str
) -> None:
    # Schema 0003's tables, written as one node writes them (ids from the sequence),
    # restored on a coordinator: migration 0004 then gives the rows their hashed ids.
    matrix = clustered(50, seed=12)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(sql.CREATE_MIGRATIONS_TABLE)
        for migration in schema.available():
            if migration.version < 4:
                await connection.execute(migration.sql)
                await connection.execute(sql.RECORD_MIGRATION, migration.version, migration.name)
        await connection.execute(
            "UPDATE collections SET model_name = $1, model_version = $2, dimension = $3",
            MODEL.name,
            MODEL.version,
            MODEL.dimension,
        )
        await connection.executemany(
            "INSERT INTO images (collection_id, key, embedding) VALUES (1, $1, $2)",
            [(f"v{i}", row.astype("<f4").tobytes()) for i, row in enumerate(matrix)],
        )
    finally:
        await connection.close()
    _, stub = await start_search(extractor_address="127.0.0.1:1")
    distributed = await _fetch(
        database_url,
        "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'images'::regclass",
    )
    assert distributed[0]["count"] == 1
    query = clustered(1, seed=13)[0]
    response = await stub.Search(_search(query, search_pb2.SEARCH_MODE_EXACT))
    assert [h.key for h in response.hits] == brute_force(matrix, query)[0][:10]
    # The same keys again: found where the store looks for them, not stored twice.
    items = [vector_item(f"v{i}", matrix[i] * 2) for i in range(10)]
    again = await stub.Ingest(search_pb2.IngestRequest(items=items))
    assert {r.status for r in again.results} == {search_pb2.INGEST_STATUS_UPDATED}
    stats = await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.image_count == 50
