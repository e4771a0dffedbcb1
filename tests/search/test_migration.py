"""A database written under schema 0001 upgrades in place, with nothing lost."""

from __future__ import annotations

import asyncio

import asyncpg
import numpy as np

from devenv.synthetic import cnn_like_vectors
from imagesearch.search.v1 import search_pb2
from search_service import schema
from search_service.projection import fit_projection
from search_service.vectors import unit_rows
from tests.search.conftest import StartSearch

DIM = 96
COUNT = 400


async def _populate_0001(database_url: str, matrix: np.ndarray) -> None:
    """What the service of schema 0001 wrote: vectors twice, an unbounded projection."""
    first = schema.available()[0]
    assert first.version == 1
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(first.sql)
        await connection.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await connection.execute("INSERT INTO schema_migrations VALUES (1, $1)", first.name)
        await connection.execute(
            "UPDATE collections SET model_name = 'synthetic', model_version = 'v1', "
            "dimension = $1 WHERE name = 'default'",
            DIM,
        )
        units = unit_rows(matrix)
        for i, row in enumerate(matrix):
            await connection.execute(
                "INSERT INTO images (collection_id, key, metadata, embedding, unit) "
                "VALUES (1, $1, $2::jsonb, $3, imagesearch_chunks($4::float8[]))",
                f"k{i:04d}",
                f'{{"n": {i}, "tag": "t{i % 5}"}}',
                row.astype("<f4").tobytes(),
                units[i].tolist(),
            )
        projection = fit_projection(matrix, dimensions=16, lists=8)
        await connection.execute(
            "INSERT INTO projections (collection_id, version, state, dimensions, lists, "
            "fitted_on, model) VALUES (1, 1, 'ready', 16, 8, $1, $2)",
            COUNT,
            projection.to_bytes(),
        )
        coarse = projection.project(units.astype(np.float32))
        lists = projection.assign(coarse)
        for i in range(COUNT):
            await connection.execute(
                "INSERT INTO image_lists (collection_id, version, list_id, image_id, coarse) "
                "VALUES (1, 1, $1, $2, cube($3::float8[]))",
                int(lists[i]),
                i + 1,
                coarse[i].astype(np.float64).tolist(),
            )
        await connection.execute("UPDATE collections SET serving_version = 1")
    finally:
        await connection.close()


async def test_a_0001_database_upgrades_with_nothing_lost(
    database_url: str, start_search: StartSearch
) -> None:
    matrix = cnn_like_vectors(COUNT, DIM, clusters=10, seed=5)
    await _populate_0001(database_url, matrix)

    app, stub = await start_search(extractor_address="127.0.0.1:1", auto_fit_threshold=100)
    assert app.backend is not None
    await asyncio.gather(*app.backend.autofit.tasks)  # the bounded refit, at start-up

    for i in range(0, COUNT, 7):
        stored = await stub.GetImage(
            search_pb2.GetImageRequest(key=f"k{i:04d}", include_embedding=True)
        )
        # Bit-exact: the float32 copy is the one that stays.
        assert np.asarray(stored.image.embedding.values, np.float32).tobytes() == (
            matrix[i].tobytes()
        )
        assert dict(stored.image.metadata) == {"n": i, "tag": f"t{i % 5}"}
    stats = (await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())).collection
    assert stats.image_count == COUNT
    assert stats.projection.version == 2
    assert stats.projection.state == search_pb2.PROJECTION_STATE_READY

    units = unit_rows(matrix)
    for i in (3, 150, 399):
        response = await stub.Search(
            search_pb2.SearchRequest(
                vector=search_pb2.Vector(values=matrix[i].tolist()),
                top_k=10,
                mode=search_pb2.SEARCH_MODE_EXACT,
            )
        )
        distances = np.linalg.norm(units - units[i], axis=1)
        expected = sorted(
            zip(distances.tolist(), [f"k{j:04d}" for j in range(COUNT)], strict=True)
        )[:10]
        assert [h.key for h in response.hits] == [k for _, k in expected]
        fast = await stub.Search(
            search_pb2.SearchRequest(vector=search_pb2.Vector(values=matrix[i].tolist()), top_k=1)
        )
        assert fast.mode == search_pb2.SEARCH_MODE_FAST
        assert fast.hits[0].key == f"k{i:04d}"

    connection = await asyncpg.connect(database_url)
    try:
        columns = await connection.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'images'::regclass "
            "AND attnum > 0 AND NOT attisdropped"
        )
        assert "unit" not in {c["attname"] for c in columns}
        assert await connection.fetchval("SELECT count(*) FROM projections") == 1
        assert await connection.fetchval("SELECT bool_and(bounded) FROM projections")
    finally:
        await connection.close()
