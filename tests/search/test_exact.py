"""EXACT by lower bounds: the brute-force answer, on real PostgreSQL, pruning most rows."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from devenv.synthetic import cnn_like_vectors
from imagesearch.search.v1 import search_pb2
from search_service.domain import Query
from search_service.ranking import Work
from search_service.vectors import unit
from tests.backends import BOTH
from tests.search.conftest import StartSearch, Stub

DIM = 128
MODEL = search_pb2.Model(name="synthetic", version="v1", dimension=DIM)


def _clustered(count: int, seed: int, start: int = 0) -> np.ndarray:
    return cnn_like_vectors(count, DIM, clusters=12, seed=seed, start=start)


def _uniform(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, DIM)).astype(np.float32)


def _duplicates(count: int, seed: int) -> np.ndarray:
    # 25 distinct vectors, each stored many times: every distance ties, keys decide.
    distinct = _clustered(25, seed)
    return distinct[np.random.default_rng(seed).integers(0, 25, count)]


DATASETS = {"clustered": _clustered, "uniform": _uniform, "duplicates": _duplicates}


def _item(key: str, values: np.ndarray, **metadata: Any) -> search_pb2.IngestItem:
    item = search_pb2.IngestItem(
        key=key,
        embedding=search_pb2.PrecomputedEmbedding(
            vector=search_pb2.Vector(values=values.tolist()), model=MODEL
        ),
    )
    item.metadata.update(metadata)
    return item


async def _store(stub: Stub, matrix: np.ndarray, first: int = 0) -> None:
    for start in range(0, len(matrix), 250):
        items = [
            _item(f"k{first + i:04d}", matrix[i], group=(first + i) % 4)
            for i in range(start, min(start + 250, len(matrix)))
        ]
        response = await stub.Ingest(search_pb2.IngestRequest(items=items))
        assert {r.status for r in response.results} == {search_pb2.INGEST_STATUS_CREATED}


def _brute_force(
    matrix: np.ndarray, query: np.ndarray, keep: np.ndarray | None = None
) -> tuple[list[str], np.ndarray]:
    """Every row's exact distance, float64 on the float32 rows; ties by key."""
    rows = matrix.astype(np.float64)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    distances = np.linalg.norm(rows - unit(query), axis=1)
    names = np.array([f"k{i:04d}" for i in range(len(matrix))])
    chosen = np.arange(len(matrix)) if keep is None else np.flatnonzero(keep)
    order = chosen[np.lexsort((names[chosen], distances[chosen]))]
    return names[order].tolist(), distances[order]


async def _exact(stub: Stub, query: np.ndarray, **fields: Any) -> search_pb2.SearchResponse:
    request = search_pb2.SearchRequest(
        vector=search_pb2.Vector(values=query.tolist()),
        mode=search_pb2.SEARCH_MODE_EXACT,
        **fields,
    )
    return await stub.Search(request)


async def _fitted(start_search: StartSearch, matrix: np.ndarray, dimensions: int) -> Any:
    app, stub = await start_search(
        extractor_address="127.0.0.1:1",
        auto_fit_threshold=10**9,
        projection_dimensions=dimensions,
    )
    await _store(stub, matrix)
    await stub.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=dimensions))
    return app, stub


@BOTH
@pytest.mark.parametrize("dataset", list(DATASETS))
async def test_exact_equals_brute_force_hit_for_hit(
    start_search: StartSearch, dataset: str
) -> None:
    matrix = DATASETS[dataset](1500, 1)
    app, stub = await _fitted(start_search, matrix, dimensions=16)
    collection = await app.backend.store.collection("")
    for seed in range(4):
        query = DATASETS[dataset](1, 100 + seed)[0]
        expected, distances = _brute_force(matrix, query)
        response = await _exact(stub, query, top_k=25)
        assert [h.key for h in response.hits] == expected[:25]
        # The wire carries float32 distances; the ranker's own are float64.
        np.testing.assert_allclose([h.distance for h in response.hits], distances[:25], rtol=1e-6)
        hits = await app.backend.ranker.exact(collection, Query(vector=unit(query), limit=25))
        assert [h.key for h in hits] == expected[:25]
        np.testing.assert_allclose([h.distance for h in hits], distances[:25], rtol=0, atol=1e-9)


@BOTH
async def test_exact_keeps_max_distance_filter_exclusion_and_pages(
    start_search: StartSearch,
) -> None:
    matrix = _clustered(1200, 2)
    _, stub = await _fitted(start_search, matrix, dimensions=12)
    query = matrix[17] + 0.01
    expected, distances = _brute_force(matrix, query)

    cut = float(np.float32(distances[30]))  # as the wire carries it
    bounded = await _exact(stub, query, top_k=100, max_distance=cut)
    assert [h.key for h in bounded.hits] == [
        k for k, d in zip(expected, distances, strict=True) if d <= cut
    ]
    assert 25 <= len(bounded.hits) <= 35

    groups = np.arange(len(matrix)) % 4
    filtered = await _exact(stub, query, top_k=20, filter=_struct(group=2))
    assert [h.key for h in filtered.hits] == _brute_force(matrix, query, groups == 2)[0][:20]

    by_key = await stub.Search(
        search_pb2.SearchRequest(key="k0017", top_k=10, mode=search_pb2.SEARCH_MODE_EXACT)
    )
    others = _brute_force(matrix, matrix[17], np.arange(len(matrix)) != 17)[0]
    assert [h.key for h in by_key.hits] == others[:10]

    pages: list[str] = []
    token = ""
    for _ in range(4):
        page = await _exact(stub, query, top_k=15, page_token=token)
        pages += [h.key for h in page.hits]
        token = page.next_page_token
    assert pages == expected[:60]


def _struct(**fields: Any) -> Any:
    from google.protobuf import struct_pb2

    value = struct_pb2.Struct()
    value.update(fields)
    return value


async def test_exact_re_ranks_a_small_share_of_the_rows(start_search: StartSearch) -> None:
    matrix = _clustered(3000, 3)
    app, _ = await _fitted(start_search, matrix, dimensions=24)
    collection = await app.backend.store.collection("")
    shares = []
    for seed in range(5):
        query = _clustered(1, 3, start=10**6 + seed)[0]  # held out, same distribution
        work = Work()
        hits = await app.backend.ranker.exact(collection, Query(vector=unit(query), limit=10), work)
        assert [h.key for h in hits] == _brute_force(matrix, query)[0][:10]
        shares.append(work.reranked / len(matrix))
    # Lower bounds prune: far fewer rows than a scan (the figure is in the benchmarks).
    assert float(np.median(shares)) < 0.25, shares


async def test_small_collection_ranks_in_the_service_without_a_projection(
    vectors_only: Stub,
) -> None:
    matrix = _uniform(300, 4)
    await _store(vectors_only, matrix)
    stats = await vectors_only.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.projection.state == search_pb2.PROJECTION_STATE_NONE
    query = _uniform(1, 5)[0]
    response = await _exact(vectors_only, query, top_k=30)
    expected, distances = _brute_force(matrix, query)
    assert [h.key for h in response.hits] == expected[:30]
    np.testing.assert_allclose([h.distance for h in response.hits], distances[:30], rtol=1e-6)


@BOTH
async def test_collection_fits_early_and_refits_as_it_grows(start_search: StartSearch) -> None:
    app, stub = await start_search(
        extractor_address="127.0.0.1:1", auto_fit_threshold=200, refit_growth=2.0
    )
    assert app.backend is not None
    matrix = _clustered(900, 6)
    await _store(stub, matrix[:250])
    await asyncio.gather(*app.backend.autofit.tasks)
    first = (await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())).collection
    assert first.projection.state == search_pb2.PROJECTION_STATE_READY
    app.backend.autofit._interval = 0  # look again at once rather than in 10 s
    await _store(stub, matrix[250:], first=250)  # 900 >= 2 x 250
    await asyncio.gather(*app.backend.autofit.tasks)
    grown = (await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())).collection
    assert grown.projection.version > first.projection.version
    assert grown.projection.fitted_on >= 500
    query = matrix[3]
    response = await _exact(stub, query, top_k=10)
    assert [h.key for h in response.hits] == _brute_force(matrix, query)[0][:10]


@BOTH
async def test_ingest_racing_a_refit_loses_nothing(start_search: StartSearch) -> None:
    app, stub = await _fitted(start_search, _clustered(1000, 7), dimensions=16)
    more = _clustered(600, 8)

    async def ingest_more() -> None:
        for start in range(0, 600, 50):
            items = [_item(f"m{i:04d}", more[i]) for i in range(start, start + 50)]
            response = await stub.Ingest(search_pb2.IngestRequest(items=items))
            assert {r.status for r in response.results} == {search_pb2.INGEST_STATUS_CREATED}

    refits = [
        stub.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=16)) for _ in range(2)
    ]
    outcomes = await asyncio.gather(ingest_more(), *refits, return_exceptions=True)
    assert outcomes[0] is None, outcomes[0]
    # Every image has exactly one entry in the serving version, so EXACT stays exact.
    store = app.backend.store
    collection = await store.collection("")
    entries = await store.pool.fetchval(
        "SELECT count(*) FROM image_lists WHERE version = $1", collection.serving_version
    )
    assert entries == 1600
    query = more[5] + 0.01
    all_rows = np.concatenate([_clustered(1000, 7), more])
    names = [f"k{i:04d}" for i in range(1000)] + [f"m{i:04d}" for i in range(600)]
    rows = all_rows.astype(np.float64) / np.linalg.norm(all_rows, axis=1, keepdims=True)
    distances = np.linalg.norm(rows - unit(query), axis=1)
    expected = sorted(zip(distances.tolist(), names, strict=True))[:10]
    response = await _exact(stub, query, top_k=10)
    assert [h.key for h in response.hits] == [k for _, k in expected]


async def test_a_model_too_large_for_the_fit_budget_is_refused_clearly(
    start_search: StartSearch,
) -> None:
    import grpc

    _, stub = await start_search(
        extractor_address="127.0.0.1:1", auto_fit_threshold=10**9, fit_memory_bytes=64 * 1024
    )
    await _store(stub, _clustered(300, 9))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RefitProjection(search_pb2.RefitProjectionRequest())
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "128-D vectors are too large" in (caught.value.details() or "")
    assert "SEARCH_FIT_MEMORY_BYTES" in (caught.value.details() or "")


async def test_collections_per_database_are_bounded(start_search: StartSearch) -> None:
    import grpc

    _, stub = await start_search(extractor_address="127.0.0.1:1", max_collections=3)
    for name in ("a", "b"):  # with "default", three
        await stub.CreateCollection(search_pb2.CreateCollectionRequest(name=name))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCollection(search_pb2.CreateCollectionRequest(name="c"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "SEARCH_MAX_COLLECTIONS" in (caught.value.details() or "")
    await stub.DeleteCollection(search_pb2.DeleteCollectionRequest(name="a"))
    await stub.CreateCollection(search_pb2.CreateCollectionRequest(name="c"))


@BOTH
async def test_exact_started_on_a_retired_version_ranks_on_the_new_one(
    start_search: StartSearch,
) -> None:
    matrix = _clustered(1200, 10)
    app, stub = await _fitted(start_search, matrix, dimensions=16)
    assert app.backend is not None
    stale = await app.backend.store.collection("")  # serving version 1
    await stub.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=16))
    fresh = await app.backend.store.collection("")
    assert fresh.serving_version != stale.serving_version
    for query in (matrix[4], matrix[900] + 0.02):
        hits = await app.backend.ranker.exact(stale, Query(vector=unit(query), limit=10))
        assert [h.key for h in hits] == _brute_force(matrix, query)[0][:10]
