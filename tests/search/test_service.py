"""SearchService over real channels, a real PostgreSQL and a real Lite0 extractor."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest

from devenv.postgres import LocalPostgres
from imagesearch.search.v1 import search_pb2
from search_service import ranking
from search_service.schema import migrate
from tests import photos
from tests.backends import BOTH
from tests.search.conftest import StartSearch, Stub

MODEL = search_pb2.Model(name="synthetic", version="v1", dimension=32)
ONES = np.ones(32, dtype=np.float32)


def vector_item(key: str, values: np.ndarray, **metadata: Any) -> search_pb2.IngestItem:
    item = search_pb2.IngestItem(
        key=key,
        embedding=search_pb2.PrecomputedEmbedding(
            vector=search_pb2.Vector(values=values.tolist()), model=MODEL
        ),
    )
    item.metadata.update(metadata)
    return item


def image_item(key: str, data: bytes, **metadata: Any) -> search_pb2.IngestItem:
    item = search_pb2.IngestItem(key=key, image=data)
    item.metadata.update(metadata)
    return item


def clustered(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.random((8, MODEL.dimension))
    points = centres[rng.integers(0, 8, count)] + 0.1 * rng.random((count, MODEL.dimension))
    return points.astype(np.float32)


async def ingest_vectors(stub: Stub, matrix: np.ndarray, collection: str = "") -> None:
    for start in range(0, len(matrix), 200):
        items = [
            vector_item(f"v{i}", matrix[i], group=int(i % 3))
            for i in range(start, min(start + 200, len(matrix)))
        ]
        response = await stub.Ingest(search_pb2.IngestRequest(collection=collection, items=items))
        statuses = {r.status for r in response.results}
        assert statuses == {search_pb2.INGEST_STATUS_CREATED}, response.results[0].error


def brute_force(matrix: np.ndarray, query: np.ndarray) -> tuple[list[str], np.ndarray]:
    units = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    distances = np.linalg.norm(units - query / np.linalg.norm(query), axis=1)
    order = np.lexsort((np.array([f"v{i}" for i in range(len(matrix))]), distances))
    return [f"v{i}" for i in order], distances[order]


def keys(response: search_pb2.SearchResponse) -> list[str]:
    return [hit.key for hit in response.hits]


async def expect_error(call: object, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    for fragment in fragments:
        assert fragment in details
    return details


# -- ranking ------------------------------------------------------------------


@BOTH
async def test_exact_search_matches_numpy_brute_force(vectors_only: Stub) -> None:
    matrix = clustered(300)
    await ingest_vectors(vectors_only, matrix)
    query = clustered(1, seed=7)[0]
    response = await vectors_only.Search(
        search_pb2.SearchRequest(
            vector=search_pb2.Vector(values=query.tolist()),
            top_k=20,
            mode=search_pb2.SEARCH_MODE_EXACT,
        )
    )
    expected_keys, expected_distances = brute_force(matrix, query)
    assert keys(response) == expected_keys[:20]
    distances = np.array([hit.distance for hit in response.hits])
    np.testing.assert_allclose(distances, expected_distances[:20], rtol=1e-5, atol=1e-6)
    for hit in response.hits:
        assert hit.similarity == pytest.approx(1 - hit.distance**2 / 2, abs=1e-6)
    assert [hit.rank for hit in response.hits] == list(range(1, 21))
    assert response.mode == search_pb2.SEARCH_MODE_EXACT


@BOTH
@pytest.mark.parametrize("rerank_chunk", [500, 64], ids=["four-parts", "ten-parts"])
async def test_fast_with_full_recall_equals_exact(
    vectors_only: Stub, rerank_chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 600 candidates come in parts of 150 (one per connection of four), or of 64.
    monkeypatch.setattr(ranking, "MAX_PART", rerank_chunk)
    matrix = clustered(600, seed=1)
    await ingest_vectors(vectors_only, matrix)
    refit = await vectors_only.RefitProjection(
        search_pb2.RefitProjectionRequest(dimensions=8, lists=12)
    )
    assert refit.projection.state == search_pb2.PROJECTION_STATE_READY
    assert refit.projection.version == 1
    assert refit.projection.fitted_on == 600
    for seed in range(3):
        query = search_pb2.Vector(values=clustered(1, seed=100 + seed)[0].tolist())
        exact = await vectors_only.Search(
            search_pb2.SearchRequest(vector=query, top_k=10, mode=search_pb2.SEARCH_MODE_EXACT)
        )
        fast = await vectors_only.Search(
            search_pb2.SearchRequest(
                vector=query, top_k=10, mode=search_pb2.SEARCH_MODE_FAST, probes=12, candidates=600
            )
        )
        assert fast.mode == search_pb2.SEARCH_MODE_FAST
        assert fast.projection_version == 1
        assert keys(fast) == keys(exact)
        assert [h.distance for h in fast.hits] == pytest.approx(
            [h.distance for h in exact.hits], abs=1e-12
        )
    stored = search_pb2.Vector(values=matrix[7].tolist())
    for mode in (search_pb2.SEARCH_MODE_EXACT, search_pb2.SEARCH_MODE_FAST):
        itself = await vectors_only.Search(
            search_pb2.SearchRequest(vector=stored, top_k=1, mode=mode, candidates=600)
        )
        assert itself.hits[0].key == "v7"
        assert itself.hits[0].distance < 1e-12
    default = await vectors_only.Search(search_pb2.SearchRequest(vector=query, top_k=10))
    assert default.mode == search_pb2.SEARCH_MODE_FAST  # a ready projection makes FAST the default


@BOTH
async def test_refit_publishes_a_new_version_and_new_images_join_its_lists(
    vectors_only: Stub,
) -> None:
    matrix = clustered(400, seed=2)
    await ingest_vectors(vectors_only, matrix[:300])
    await vectors_only.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=8, lists=6))
    second = await vectors_only.RefitProjection(
        search_pb2.RefitProjectionRequest(dimensions=6, lists=5)
    )
    assert second.projection.version == 2
    assert second.projection.dimensions == 6
    await vectors_only.Ingest(search_pb2.IngestRequest(items=[vector_item("late", matrix[399])]))
    found = await vectors_only.Search(
        search_pb2.SearchRequest(
            vector=search_pb2.Vector(values=matrix[399].tolist()),
            top_k=1,
            mode=search_pb2.SEARCH_MODE_FAST,
            probes=5,
            candidates=400,
        )
    )
    assert keys(found) == ["late"]
    stats = await vectors_only.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.projection.version == 2
    assert stats.collection.image_count == 301


@BOTH
async def test_pages_concatenate_to_the_full_ranking(vectors_only: Stub) -> None:
    matrix = clustered(50, seed=3)
    await ingest_vectors(vectors_only, matrix)
    query = search_pb2.Vector(values=matrix[0].tolist())
    whole = await vectors_only.Search(search_pb2.SearchRequest(vector=query, top_k=50))
    assert not whole.next_page_token
    paged: list[str] = []
    token = ""
    while True:
        page = await vectors_only.Search(
            search_pb2.SearchRequest(vector=query, top_k=15, page_token=token)
        )
        paged += keys(page)
        token = page.next_page_token
        if not token:
            break
    assert paged == keys(whole)
    assert [h.rank for h in whole.hits] == list(range(1, 51))


@BOTH
async def test_filter_and_max_distance_narrow_the_hits(vectors_only: Stub) -> None:
    matrix = clustered(90, seed=4)
    await ingest_vectors(vectors_only, matrix)
    query = search_pb2.Vector(values=matrix[5].tolist())
    request = search_pb2.SearchRequest(vector=query, top_k=100)
    request.filter.update({"group": 2})
    filtered = await vectors_only.Search(request)
    assert len(filtered.hits) == 30
    assert {hit.metadata["group"] for hit in filtered.hits} == {2.0}
    near = await vectors_only.Search(
        search_pb2.SearchRequest(vector=query, top_k=100, max_distance=0.05)
    )
    assert near.hits
    assert all(hit.distance <= 0.05 for hit in near.hits)
    assert len(near.hits) < 90


@BOTH
async def test_search_by_key_leaves_the_key_out(vectors_only: Stub) -> None:
    matrix = clustered(40, seed=5)
    await ingest_vectors(vectors_only, matrix)
    by_key = await vectors_only.Search(search_pb2.SearchRequest(key="v7", top_k=5))
    by_vector = await vectors_only.Search(
        search_pb2.SearchRequest(vector=search_pb2.Vector(values=matrix[7].tolist()), top_k=6)
    )
    assert keys(by_vector)[0] == "v7"
    assert keys(by_key) == keys(by_vector)[1:]


# -- images through the extractor ------------------------------------------------


async def test_transformed_photo_finds_its_original_first(search: Stub) -> None:
    names = photos.available_photos()
    response = await search.Ingest(
        search_pb2.IngestRequest(
            items=[image_item(n, photos.photo_bytes(n), caption=photos.describe(n)) for n in names]
        )
    )
    assert {r.status for r in response.results} == {search_pb2.INGEST_STATUS_CREATED}
    for name in ("chelsea", "coffee", "astronaut"):
        copy = photos.center_crop(photos.flipped(photos.photo(name).convert("RGB")), 0.8)
        found = await search.Search(
            search_pb2.SearchRequest(image=photos.encode(copy, "JPEG", quality=70), top_k=3)
        )
        assert found.hits[0].key == name
        assert found.hits[0].metadata["caption"] == photos.describe(name)
    stats = await search.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.model.name == "efficientnet-lite0"
    assert stats.collection.image_count == len(names)


async def test_same_bytes_are_not_re_extracted_and_metadata_updates(search: Stub) -> None:
    data = photos.photo_bytes("coffee")
    first = await search.Ingest(search_pb2.IngestRequest(items=[image_item("cup", data, v=1)]))
    assert first.results[0].status == search_pb2.INGEST_STATUS_CREATED
    same = await search.Ingest(search_pb2.IngestRequest(items=[image_item("cup", data, v=1)]))
    assert same.results[0].status == search_pb2.INGEST_STATUS_UNCHANGED
    relabelled = await search.Ingest(search_pb2.IngestRequest(items=[image_item("cup", data, v=2)]))
    assert relabelled.results[0].status == search_pb2.INGEST_STATUS_UPDATED
    stored = await search.GetImage(search_pb2.GetImageRequest(key="cup", include_embedding=True))
    assert stored.image.metadata["v"] == 2
    assert stored.image.content_sha256 == first.results[0].content_sha256
    assert len(stored.image.embedding.values) == 1280
    replaced = await search.Ingest(
        search_pb2.IngestRequest(items=[image_item("cup", photos.photo_bytes("chelsea"))])
    )
    assert replaced.results[0].status == search_pb2.INGEST_STATUS_UPDATED


async def test_stream_ingest_answers_each_message_in_order(search: Stub) -> None:
    messages = [["chelsea"], ["coffee", "broken", "rocket"], ["astronaut"]]
    requests = [
        search_pb2.IngestStreamRequest(
            items=[
                image_item(n, b"not an image" if n == "broken" else photos.photo_bytes(n))
                for n in names
            ]
        )
        for names in messages
    ]
    responses = [r async for r in search.IngestStream(iter(requests))]
    assert [[r.key for r in response.results] for response in responses] == messages
    results = [r for response in responses for r in response.results]
    assert results[2].status == search_pb2.INGEST_STATUS_FAILED
    assert results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "broken" in results[2].error.message
    assert {r.status for r in results[:2] + results[3:]} == {search_pb2.INGEST_STATUS_CREATED}


@BOTH
async def test_concurrent_stream_batches_answer_in_order_and_last_write_wins(
    start_search: StartSearch,
) -> None:
    _, stub = await start_search(
        extractor_address="127.0.0.1:1", stream_batch_items=3, ingest_concurrency=3
    )
    matrix = clustered(20)
    writes = [(f"k{i}", i) for i in range(12)]
    writes += [("k4", 12), ("k5", 13), *((f"k{i}", i) for i in range(12, 16)), ("k4", 19)]
    sizes = [1, 4, 2, 5, 1, 3, 2, 1]  # messages straddle the batches of 3
    assert sum(sizes) == len(writes)
    requests, start = [], 0
    for size in sizes:
        chunk = writes[start : start + size]
        items = [vector_item(key, matrix[row]) for key, row in chunk]
        requests.append(search_pb2.IngestStreamRequest(items=items))
        start += size
    responses = [r async for r in stub.IngestStream(iter(requests))]
    assert [len(r.results) for r in responses] == sizes
    results = [r for response in responses for r in response.results]
    assert [r.key for r in results] == [key for key, _ in writes]
    first = [key not in {k for k, _ in writes[:n]} for n, (key, _) in enumerate(writes)]
    assert [r.status for r in results] == [
        search_pb2.INGEST_STATUS_CREATED if new else search_pb2.INGEST_STATUS_UPDATED
        for new in first
    ]
    for key, row in (("k4", 19), ("k5", 13), ("k15", 15)):
        stored = await stub.GetImage(search_pb2.GetImageRequest(key=key, include_embedding=True))
        assert stored.image.embedding.values == pytest.approx(matrix[row].tolist(), abs=0)
    stats = await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.image_count == 16


async def test_stream_answers_a_client_that_waits_for_each_answer(vectors_only: Stub) -> None:
    matrix = clustered(3)
    call = vectors_only.IngestStream()  # type: ignore[call-arg]  # written to below
    for i in range(3):
        await call.write(search_pb2.IngestStreamRequest(items=[vector_item(f"v{i}", matrix[i])]))
        response = await asyncio.wait_for(call.read(), timeout=10)
        assert isinstance(response, search_pb2.IngestStreamResponse)
        assert [r.key for r in response.results] == [f"v{i}"]
        assert response.results[0].status == search_pb2.INGEST_STATUS_CREATED
    await call.done_writing()
    assert not isinstance(await call.read(), search_pb2.IngestStreamResponse)  # the end


@pytest.mark.parametrize(
    ("bad", "code", "fragment"),
    [
        (
            search_pb2.IngestStreamRequest(collection="nope", items=[vector_item("x", ONES)]),
            grpc.StatusCode.NOT_FOUND,
            "collection 'nope'",
        ),
        (
            search_pb2.IngestStreamRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request message 1: items",
        ),
    ],
)
async def test_stream_answers_what_it_wrote_before_failing(
    vectors_only: Stub, bad: search_pb2.IngestStreamRequest, code: grpc.StatusCode, fragment: str
) -> None:
    matrix = clustered(4)
    good = [vector_item(f"v{i}", matrix[i]) for i in range(4)]
    requests = [search_pb2.IngestStreamRequest(items=good), bad]
    answered: list[str] = []

    async def read_all() -> None:
        async for response in vectors_only.IngestStream(iter(requests)):
            answered.extend(r.key for r in response.results)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all()
    assert caught.value.code() == code
    assert fragment in (caught.value.details() or "")
    assert answered == ["v0", "v1", "v2", "v3"]
    stats = await vectors_only.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.image_count == 4


async def test_vectors_of_another_model_are_refused(search: Stub) -> None:
    await search.Ingest(
        search_pb2.IngestRequest(items=[image_item("cat", photos.photo_bytes("chelsea"))])
    )
    response = await search.Ingest(search_pb2.IngestRequest(items=[vector_item("alien", ONES)]))
    result = response.results[0]
    assert result.status == search_pb2.INGEST_STATUS_FAILED
    assert result.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "efficientnet-lite0" in result.error.message
    await expect_error(
        search.Search(search_pb2.SearchRequest(vector=search_pb2.Vector(values=[1.0] * 32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "vector: 32 values",
    )


# -- faults and bad input ----------------------------------------------------------


async def test_unreachable_extractor_is_unavailable_and_writes_nothing(vectors_only: Stub) -> None:
    await ingest_vectors(vectors_only, clustered(3))
    details = await expect_error(
        vectors_only.Ingest(
            search_pb2.IngestRequest(items=[image_item("cat", photos.photo_bytes("chelsea"))])
        ),
        grpc.StatusCode.UNAVAILABLE,
        "extractor at 127.0.0.1:1",
    )
    assert "Traceback" not in details
    stats = await vectors_only.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.image_count == 3


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (search_pb2.SearchRequest(collection="nope", key="a"), "NOT_FOUND", "collection 'nope'"),
        (search_pb2.SearchRequest(key="missing"), "NOT_FOUND", "key 'missing'"),
        (search_pb2.SearchRequest(key="v1", top_k=5000), "INVALID_ARGUMENT", "top_k"),
        (search_pb2.SearchRequest(), "INVALID_ARGUMENT", "query"),
        (
            search_pb2.SearchRequest(vector=search_pb2.Vector(values=[1.0, 2.0])),
            "INVALID_ARGUMENT",
            "vector: 2 values",
        ),
        (
            search_pb2.SearchRequest(vector=search_pb2.Vector(values=[float("nan")] * 32)),
            "INVALID_ARGUMENT",
            "finite",
        ),
        (
            search_pb2.SearchRequest(key="v1", page_token="garbage!"),
            "INVALID_ARGUMENT",
            "page_token",
        ),
        (search_pb2.SearchRequest(key="v1", max_distance=-1), "INVALID_ARGUMENT", "max_distance"),
        (
            search_pb2.SearchRequest(key="v1", mode=search_pb2.SEARCH_MODE_FAST),
            "FAILED_PRECONDITION",
            "no projection",
        ),
    ],
)
async def test_bad_search_gets_a_clear_status_naming_the_field(
    vectors_only: Stub, request_: search_pb2.SearchRequest, code: str, fragment: str
) -> None:
    await ingest_vectors(vectors_only, clustered(5))
    await expect_error(vectors_only.Search(request_), grpc.StatusCode[code], fragment)


async def test_bad_items_fail_alone(vectors_only: Stub) -> None:
    good = vector_item("good", clustered(1)[0])
    wrong_length = vector_item("short", np.ones(3, dtype=np.float32))
    not_finite = vector_item("nan", np.full(32, np.nan, dtype=np.float32))
    no_source = search_pb2.IngestItem(key="empty")
    no_key = vector_item("", clustered(1)[0])
    response = await vectors_only.Ingest(
        search_pb2.IngestRequest(items=[good, wrong_length, not_finite, no_source, no_key])
    )
    statuses = [r.status for r in response.results]
    assert statuses == [search_pb2.INGEST_STATUS_CREATED] + [search_pb2.INGEST_STATUS_FAILED] * 4
    messages = [r.error.message for r in response.results[1:]]
    assert "'short'" in messages[0]
    assert "finite" in messages[1]
    assert "'empty'" in messages[2]
    assert "key is required" in messages[3]
    await expect_error(
        vectors_only.Ingest(search_pb2.IngestRequest(items=[good, good])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "repeats items[0]",
    )


async def test_postgres_restart_fails_in_flight_then_recovers(
    vectors_only: Stub, postgres: LocalPostgres
) -> None:
    await ingest_vectors(vectors_only, clustered(10))
    request = search_pb2.GetCollectionStatsRequest()
    assert (await vectors_only.GetCollectionStats(request)).collection.image_count == 10
    await asyncio.to_thread(postgres.stop)
    try:
        await expect_error(
            vectors_only.GetCollectionStats(request), grpc.StatusCode.UNAVAILABLE, "database"
        )
    finally:
        await asyncio.to_thread(postgres.start)
    codes = []
    for _ in range(20):  # the pool replaces its dead connections on the next calls
        try:
            stats = await vectors_only.GetCollectionStats(request)
            break
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
            await asyncio.sleep(0.2)
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
    assert stats.collection.image_count == 10


# -- records and collections -------------------------------------------------------


@BOTH
async def test_collections_are_separate_and_bound_to_their_model(vectors_only: Stub) -> None:
    created = await vectors_only.CreateCollection(
        search_pb2.CreateCollectionRequest(name="products", model=MODEL)
    )
    assert created.collection.model == MODEL
    await ingest_vectors(vectors_only, clustered(4), collection="products")
    await expect_error(
        vectors_only.CreateCollection(search_pb2.CreateCollectionRequest(name="products")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await expect_error(
        vectors_only.CreateCollection(search_pb2.CreateCollectionRequest(name="bad name!")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "name",
    )
    listed = await vectors_only.ListCollections(search_pb2.ListCollectionsRequest())
    counts = {c.name: c.image_count for c in listed.collections}
    assert counts == {"default": 0, "products": 4}
    deleted = await vectors_only.DeleteImages(
        search_pb2.DeleteImagesRequest(collection="products", keys=["v0", "v1", "ghost"])
    )
    assert deleted.deleted_count == 2
    assert list(deleted.missing_keys) == ["ghost"]
    gone = await vectors_only.DeleteCollection(search_pb2.DeleteCollectionRequest(name="products"))
    assert gone.deleted_images == 2
    await expect_error(
        vectors_only.GetImage(search_pb2.GetImageRequest(collection="products", key="v2")),
        grpc.StatusCode.NOT_FOUND,
        "products",
    )


@BOTH
async def test_stored_vector_comes_back_exactly(vectors_only: Stub) -> None:
    values = clustered(1, seed=9)[0]
    await vectors_only.Ingest(search_pb2.IngestRequest(items=[vector_item("x", values, a="b")]))
    stored = await vectors_only.GetImage(
        search_pb2.GetImageRequest(key="x", include_embedding=True)
    )
    np.testing.assert_array_equal(np.asarray(stored.image.embedding.values, np.float32), values)
    assert stored.image.model == MODEL
    assert stored.image.metadata["a"] == "b"


async def test_collection_fits_its_projection_once_large_enough(
    start_search: StartSearch,
) -> None:
    app, stub = await start_search(extractor_address="127.0.0.1:1", auto_fit_threshold=100)
    await ingest_vectors(stub, clustered(120, seed=6))
    assert app.backend is not None
    await asyncio.gather(*app.backend.autofit.tasks)
    stats = await stub.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.projection.state == search_pb2.PROJECTION_STATE_READY
    assert stats.collection.projection.fitted_on >= 100


@BOTH
async def test_migrations_apply_once(database_url: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        assert await migrate(connection) == [1, 2, 3, 4]
        assert await migrate(connection) == []
    finally:
        await connection.close()
