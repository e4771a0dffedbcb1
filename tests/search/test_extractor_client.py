"""The search service's extractor client: chunk sizes from the extractor, its codes kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from extractor_service.app import ExtractorApp
from extractor_service.settings import ExtractorSettings
from search_service.extractor_client import ExtractorClient
from service_core.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    error_for,
)
from tests.photos import photo_bytes


@pytest.fixture
async def small_requests(lite0_model_dir: Path) -> AsyncIterator[str]:
    """An extractor that takes at most 3 images per Embed call."""
    app = ExtractorApp(
        ExtractorSettings(model_dir=lite0_model_dir, grace_period_s=0, max_request_images=3)
    )
    server = await app.start()
    await app.wait_ready()
    yield f"127.0.0.1:{server.port}"
    await app.stop()


async def test_chunks_follow_the_extractors_max_request_images(small_requests: str) -> None:
    client = ExtractorClient(small_requests, max_message_bytes=64 << 20)
    try:
        images = [(f"photo-{i}", photo_bytes("coffee")) for i in range(8)]
        model, results = await client.embed(images, timeout_s=60)
        assert await client.chunk_images(timeout_s=5) == 3
    finally:
        await client.close()
    assert len(results) == 8
    assert all(r.vector is not None and r.vector.shape == (model.dimension,) for r in results)


async def test_item_errors_keep_the_extractors_code(small_requests: str) -> None:
    client = ExtractorClient(small_requests, max_message_bytes=64 << 20)
    try:
        _, results = await client.embed(
            [("good", photo_bytes("coffee")), ("bad", b"not an image")], timeout_s=60
        )
    finally:
        await client.close()
    assert results[0].vector is not None
    assert results[1].vector is None
    assert results[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "bad" in results[1].error_message


async def test_chunks_stay_under_the_message_limit(small_requests: str) -> None:
    # Three 400 kB images would not fit in one 1 MB message: the client sends two calls.
    client = ExtractorClient(small_requests, max_message_bytes=1 << 20)
    image = photo_bytes("coffee")
    padded = image + b"\0" * (400_000 - len(image))  # JPEG readers stop at EOI
    try:
        _, results = await client.embed([(f"p{i}", padded) for i in range(3)], timeout_s=60)
    finally:
        await client.close()
    assert [r.vector is not None for r in results] == [True, True, True]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.INTERNAL, Internal),
        (grpc.StatusCode.UNKNOWN, Internal),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.UNIMPLEMENTED, Unavailable),
        (grpc.StatusCode.UNAUTHENTICATED, Unavailable),  # our credentials, not the caller's
        (grpc.StatusCode.PERMISSION_DENIED, Unavailable),
    ],
)
def test_a_dependencys_code_is_carried_on(code: grpc.StatusCode, kind: type) -> None:
    error = error_for(code, "why")
    assert type(error) is kind
    assert error.message == "why"


async def test_an_unreachable_extractor_is_unavailable() -> None:
    client = ExtractorClient("127.0.0.1:1", max_message_bytes=1 << 20)
    try:
        with pytest.raises(Unavailable):
            await client.embed([("x", b"x")], timeout_s=5)
    finally:
        await client.close()
