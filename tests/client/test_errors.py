"""Every error kind's google.rpc details, as the client's typed exceptions read them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from devenv.photos import encode
from devenv.stack import Stack
from imagesearch.client import (
    AsyncSearchClient,
    Connection,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Item,
    Model,
    NotFound,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
    from_status,
)
from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from service_core.errors import DEFAULT_RETRY_S, DOMAIN, ServiceError, error_for
from service_core.errors import Unavailable as ServiceUnavailable
from tests.client.conftest import StartSearch
from tests.test_bootstrap import gated

__all__ = ["gated"]

REPO = Path(__file__).resolve().parents[2]
MODEL = Model("test-model", 4, "1")


def client(target: str, **connection: object) -> AsyncSearchClient:
    return AsyncSearchClient(Connection(target, **connection))  # type: ignore[arg-type]


def jpeg() -> bytes:
    return encode(Image.new("RGB", (64, 48), (200, 30, 30)))


async def test_a_vector_of_the_wrong_length_names_its_field(vectors_only: str) -> None:
    async with client(vectors_only) as search:
        await search.create_collection("c", model=MODEL)
        with pytest.raises(InvalidArgument) as caught:
            await search.search([1.0, 2.0], collection="c")
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "VECTOR_LENGTH_MISMATCH"
    assert error.domain == DOMAIN
    assert error.metadata == {"expected": "4", "actual": "2"}
    assert [v.field for v in error.field_violations] == ["vector.values"]
    assert "2 values" in error.field_violations[0].description
    assert error.retry_delay is None


async def test_ingest_items_fail_alone_with_their_field_path_and_a_status(
    vectors_only: str,
) -> None:
    items = [
        Item("good", vector=[1, 0, 0, 0], model=MODEL),
        Item("short", vector=[1, 0, 0], model=MODEL),
        Item("nan", vector=[1, float("nan"), 0, 0], model=MODEL),
    ]
    async with client(vectors_only) as search:
        results = await search.ingest(items)
    assert [r.key for r in results] == ["good", "short", "nan"]
    assert results[0].ok
    assert results[0].status == search_pb2.INGEST_STATUS_CREATED
    short, nan = results[1].error, results[2].error
    assert isinstance(short, InvalidArgument)
    assert short.reason == "VECTOR_LENGTH_MISMATCH"
    assert short.field_path == "items[1].embedding.vector.values"
    assert short.metadata["key"] == "short"
    assert isinstance(nan, InvalidArgument)
    assert nan.reason == "VECTOR_NOT_FINITE"
    assert nan.field_path == "items[2].embedding.vector.values[1]"


async def test_old_clients_still_read_the_item_error_beside_the_status(
    stack: Stack, vectors_only: str
) -> None:
    stub = search_pb2_grpc.SearchServiceStub(stack.channel(vectors_only))
    item = search_pb2.IngestItem(key="k")  # neither image nor embedding
    response = await stub.Ingest(search_pb2.IngestRequest(items=[item]))
    [result] = response.results
    assert result.status == search_pb2.INGEST_STATUS_FAILED
    assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert result.rpc_status.code == result.error.code
    assert result.rpc_status.message == result.error.message
    assert from_status(result.rpc_status).reason == "SOURCE_REQUIRED"


async def test_an_unknown_collection_is_not_found_with_its_reason(vectors_only: str) -> None:
    async with client(vectors_only) as search:
        with pytest.raises(NotFound) as caught:
            await search.collection_stats("nowhere")
    assert caught.value.reason == "COLLECTION_NOT_FOUND"
    assert caught.value.metadata == {"collection": "nowhere"}
    assert caught.value.field_violations == ()


async def test_a_model_mismatch_is_a_failed_precondition_per_item(vectors_only: str) -> None:
    other = Model("other-model", 4, "1")
    async with client(vectors_only) as search:
        await search.create_collection("bound", model=MODEL)
        [result] = await search.ingest(
            [Item("k", vector=[1, 2, 3, 4], model=other)], collection="bound"
        )
    assert isinstance(result.error, FailedPrecondition)
    assert result.error.reason == "MODEL_MISMATCH"
    assert result.error.field_path == "items[0].embedding.model"


async def test_a_shed_call_says_when_to_retry_and_the_retry_policy_waits_for_it(
    start_search: StartSearch,
) -> None:
    target = await start_search(
        extractor_address="127.0.0.1:1", extractor_timeout_s=2, max_calls_in_flight=1
    )
    held = asyncio.Event()

    async def never_ending() -> AsyncIterator[search_pb2.IngestStreamRequest]:
        await held.wait()
        return
        yield  # an async generator that sends nothing until released

    async with client(target) as holder, client(target, retries=False) as once:
        stream = holder._stub.IngestStream(never_ending())  # holds the one call slot
        await asyncio.sleep(0.2)
        with pytest.raises(ResourceExhausted) as caught:
            await once.list_collections()
        error = caught.value
        assert error.reason == "SERVER_OVERLOADED"
        assert error.retry_delay == pytest.approx(1.0)
        assert error.metadata["limit"] == "1"

        # The shipped service config retries; the server's pushback paces it, so a
        # call made while the slot is held succeeds once it is freed.
        async with client(target) as patient:
            call = asyncio.ensure_future(patient.list_collections())
            await asyncio.sleep(0.3)
            assert not call.done()
            held.set()
            assert [c.name for c in await asyncio.wait_for(call, 10)] == ["default"]
        async for _ in stream:
            pass


async def test_an_unreachable_extractor_is_unavailable_with_a_retry_delay(
    vectors_only: str,
) -> None:
    async with client(vectors_only, retries=False) as search:
        with pytest.raises(Unavailable) as caught:
            await search.search(jpeg())
    assert caught.value.retry_delay is not None
    assert caught.value.metadata == {"dependency": "extractor"}


async def test_extractor_items_carry_a_status_with_reason_and_field(
    stack: Stack, extractor_address: str
) -> None:
    stub = stack.extractor_stub(extractor_address)
    request = extractor_pb2.EmbedRequest(
        images=[
            extractor_pb2.Image(id="ok", data=jpeg()),
            extractor_pb2.Image(id="junk", data=b"not an image at all"),
            extractor_pb2.Image(data=b""),
        ]
    )
    ok, junk, empty = (await stub.Embed(request)).results
    assert ok.WhichOneof("outcome") == "embedding"
    assert not ok.HasField("rpc_status")
    assert junk.WhichOneof("outcome") == "error"
    details = from_status(junk.rpc_status)
    assert isinstance(details, InvalidArgument)
    assert details.reason == "UNSUPPORTED_FORMAT"
    assert details.field_path == "images[1].data"
    assert details.metadata == {"id": "junk"}
    assert junk.rpc_status.message == junk.error.message
    assert from_status(empty.rpc_status).reason == "EMPTY_IMAGE"
    assert from_status(empty.rpc_status).field_path == "images[2].data"

    async def one() -> AsyncIterator[extractor_pb2.EmbedStreamRequest]:
        yield extractor_pb2.EmbedStreamRequest(image=extractor_pb2.Image(data=b"junk"))

    [streamed] = [r async for r in stub.EmbedStream(one())]
    assert from_status(streamed.result.rpc_status).field_path == "image.data"


async def test_the_extractor_reason_reaches_the_ingest_caller(with_images: str) -> None:
    async with client(with_images) as search:
        results = [
            r
            async for r in search.ingest_stream(
                [Item("photo", image=jpeg()), Item("junk", image=b"not an image at all")]
            )
        ]
        assert results[0].ok
        error = results[1].error
        assert isinstance(error, InvalidArgument)
        assert error.reason == "UNSUPPORTED_FORMAT"
        assert error.field_path == "items[1].image"
        with pytest.raises(InvalidArgument) as caught:
            await search.search(b"not an image at all")
        assert caught.value.reason == "UNSUPPORTED_FORMAT"
        assert caught.value.field_path == "image"


async def test_every_reason_raised_is_in_the_catalogue() -> None:
    """docs/errors.md lists each reason a raise site names, so callers can rely on it."""
    catalogue = (REPO / "docs" / "errors.md").read_text()
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", catalogue, re.MULTILINE))
    sources = [
        path
        for folder in ("service_core", "search_service", "extractor_service")
        for path in (REPO / folder).rglob("*.py")
    ]
    raised = {
        reason for path in sources for reason in re.findall(r'reason="([A-Z_]+)"', path.read_text())
    }
    # Each kind's own reason, for raise sites that name none (and a peer's codes).
    raised |= {kind.default_reason for kind in ServiceError.__subclasses__()}
    raised |= {"JSON_TOO_DEEP", "NOT_JSON", "UNIMPLEMENTED"}  # named through constants
    assert len(raised) > 40
    assert raised - listed == set()
    assert listed - raised == set(), "the catalogue lists reasons no code raises"


def test_vectors_are_checked_client_side_for_a_model() -> None:
    with pytest.raises(ValueError, match="needs its model"):
        Item("k", vector=np.zeros(3).tolist()).message()


async def test_unexpected_errors_carry_their_correlation_id_and_streams_their_details(
    gated: tuple[Any, grpc.aio.Channel],
) -> None:
    stub = extractor_pb2_grpc.ExtractorServiceStub(gated[1])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(extractor_pb2.EmbedRequest())
    internal = from_rpc_error(caught.value)
    assert isinstance(internal, Internal)
    assert internal.reason == "INTERNAL"
    assert caught.value.details() == (
        f"internal error (correlation id {internal.metadata['correlation_id']})"
    )
    call = stub.EmbedStream(iter([extractor_pb2.EmbedStreamRequest()] * 2))
    await call.read()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    midstream = from_rpc_error(caught.value)
    assert isinstance(midstream, InvalidArgument)
    assert midstream.reason == "INVALID_ARGUMENT"  # the raise site names no reason
    assert midstream.message == "item 'b' is broken"


def test_a_peers_reason_is_passed_on_only_with_its_own_code() -> None:
    busy = error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", reason="QUEUE_FULL")
    assert (busy.reason, busy.retry_after) == ("QUEUE_FULL", DEFAULT_RETRY_S)
    # The search service's own credentials were refused: not the caller's to fix.
    refused = error_for(grpc.StatusCode.UNAUTHENTICATED, "no", reason="INVALID_TOKEN")
    assert isinstance(refused, ServiceUnavailable)
    assert refused.reason == "UNAVAILABLE"
    assert refused.retry_after == DEFAULT_RETRY_S
    too_big = error_for(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "big", reason="IMAGE_TOO_LARGE", retryable=False
    )
    assert too_big.retry_after is None
    assert from_status(too_big.status()).retry_delay is None
