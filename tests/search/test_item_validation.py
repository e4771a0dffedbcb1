"""Each bad item is answered alone; hostile names, filters and tokens get INVALID_ARGUMENT."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from imagesearch.search.v1 import search_pb2
from tests.search.conftest import StartSearch, Stub
from tests.search.test_service import ONES, clustered, ingest_vectors, vector_item

CREATED = search_pb2.INGEST_STATUS_CREATED
FAILED = search_pb2.INGEST_STATUS_FAILED
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def bad_items() -> list[tuple[search_pb2.IngestItem, str]]:
    """Items PostgreSQL or JSON would refuse, each with what its error names."""
    emoji = "\N{GRINNING FACE}" * 1024  # 1,024 characters, 4,096 bytes of UTF-8
    cases = [
        (vector_item(emoji, ONES), "bytes of UTF-8"),
        (vector_item("nul-metadata", ONES, note="a\x00b"), "'nul-metadata' metadata.note"),
        (vector_item("nan", ONES), "'nan' metadata.score"),
        (vector_item("inf", ONES), "'inf' metadata.score"),
        (vector_item("deep", ONES), "'deep' metadata"),
        (vector_item("huge", ONES, blob="x" * 40_000), "bytes of JSON"),
    ]
    cases[2][0].metadata.fields["score"].number_value = float("nan")
    cases[3][0].metadata.fields["score"].number_value = float("inf")
    cases[4][0].metadata.update(deep(25))  # past MAX_DEPTH, within protobuf's
    return cases


def assert_alone(results: list[search_pb2.IngestResult], cases: list[Any]) -> None:
    assert results[0].status == CREATED
    for result, (_, fragment) in zip(results[1:], cases, strict=True):
        assert result.status == FAILED, result.key[:20]
        assert result.error.code == INVALID
        assert fragment in result.error.message


async def test_bad_items_fail_alone_in_ingest(vectors_only: Stub) -> None:
    cases = bad_items()
    good = vector_item("good", ONES, ok=True)
    response = await vectors_only.Ingest(
        search_pb2.IngestRequest(items=[good, *(item for item, _ in cases)])
    )
    assert_alone(list(response.results), cases)
    stats = await vectors_only.GetCollectionStats(search_pb2.GetCollectionStatsRequest())
    assert stats.collection.image_count == 1


async def test_bad_items_fail_alone_in_a_stream(vectors_only: Stub) -> None:
    cases = bad_items()
    good = vector_item("good", ONES)
    request = search_pb2.IngestStreamRequest(items=[good, *(item for item, _ in cases)])
    results = [
        r async for response in vectors_only.IngestStream(iter([request])) for r in response.results
    ]
    assert_alone(results, cases)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.Search(search_pb2.SearchRequest(collection="a\x00", key="k")),
        lambda s: s.GetImage(search_pb2.GetImageRequest(collection="a\x00", key="k")),
        lambda s: s.DeleteImages(search_pb2.DeleteImagesRequest(collection="a\x00", keys=["k"])),
        lambda s: s.GetCollectionStats(search_pb2.GetCollectionStatsRequest(collection="a\x00")),
        lambda s: s.RefitProjection(search_pb2.RefitProjectionRequest(collection="a\x00")),
        lambda s: s.DeleteCollection(search_pb2.DeleteCollectionRequest(name="a\x00")),
        lambda s: s.Ingest(
            search_pb2.IngestRequest(collection="a\x00", items=[vector_item("k", ONES)])
        ),
        lambda s: s.DeleteImages(search_pb2.DeleteImagesRequest(keys=["ok", "b\x00"])),
        lambda s: s.Search(search_pb2.SearchRequest(key="k", filter=struct(note="\x00"))),
        lambda s: s.Search(search_pb2.SearchRequest(key="k", filter=struct(n=float("nan")))),
        lambda s: s.Search(search_pb2.SearchRequest(key="k", page_token="e30.AAAA")),
    ],
)
async def test_hostile_requests_are_invalid_argument(vectors_only: Stub, call: Any) -> None:
    await ingest_vectors(vectors_only, clustered(3))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(vectors_only)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def struct(**fields: Any) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


async def test_a_stream_to_a_nul_collection_is_invalid(vectors_only: Stub) -> None:
    request = search_pb2.IngestStreamRequest(collection="a\x00", items=[vector_item("k", ONES)])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in vectors_only.IngestStream(iter([request])):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_page_token_from_another_search_is_invalid(vectors_only: Stub) -> None:
    await ingest_vectors(vectors_only, clustered(30))
    first = await vectors_only.Search(search_pb2.SearchRequest(key="v0", top_k=5))
    assert first.next_page_token
    again = await vectors_only.Search(
        search_pb2.SearchRequest(key="v0", top_k=5, page_token=first.next_page_token)
    )
    assert [h.rank for h in again.hits] == [6, 7, 8, 9, 10]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await vectors_only.Search(
            search_pb2.SearchRequest(key="v1", top_k=5, page_token=first.next_page_token)
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_hits_that_would_not_fit_come_on_the_next_page(start_search: StartSearch) -> None:
    # Records ingested under a generous metadata bound, then read back under a small
    # message limit: each page holds what fits, and the pages cover every hit.
    limit = 256 * 1024
    _, stub = await start_search(
        extractor_address="127.0.0.1:1",
        max_message_bytes=limit,
        max_request_bytes_in_flight=limit,
        max_metadata_bytes=60_000,
    )
    matrix = clustered(10)
    for i in range(10):
        item = vector_item(f"v{i}", matrix[i], blob="x" * 50_000)
        await stub.Ingest(search_pb2.IngestRequest(items=[item]))
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await stub.Search(
            search_pb2.SearchRequest(
                vector=search_pb2.Vector(values=ONES.tolist()), top_k=10, page_token=token
            )
        )
        assert page.ByteSize() <= limit
        seen += [h.key for h in page.hits]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(f"v{i}" for i in range(10))
    assert pages >= 2  # ten 50 kB hits do not fit in one 256 kB page


async def test_a_garbage_image_against_an_empty_collection_is_refused(search: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await search.Search(search_pb2.SearchRequest(image=b"not an image at all"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image" in (raised.value.details() or "")
