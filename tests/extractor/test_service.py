"""ExtractorService over a real channel, with Lite0's real weights in ONNX Runtime."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from devenv.stack import ExtractorStub, Stack
from extractor_service.app import ExtractorApp
from extractor_service.manifest import load_manifest
from extractor_service.preprocess import preprocess
from extractor_service.runtime import ModelLoadError, OnnxModel
from extractor_service.settings import ExtractorSettings
from imagesearch.extractor.v1 import extractor_pb2
from tests import photos

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]

Stub = ExtractorStub
StartExtractor = Callable[..., Awaitable[tuple[ExtractorApp, Stub]]]


@pytest.fixture
async def start_extractor(lite0_model_dir: Path) -> AsyncIterator[StartExtractor]:
    """Starts ExtractorApps on port 0 with settings overrides; stops them after the test."""
    async with Stack() as stack:

        async def start(**overrides: Any) -> tuple[ExtractorApp, Stub]:
            app = await stack.extractor(lite0_model_dir, **({"grace_period_s": 0.5} | overrides))
            large = [("grpc.max_send_message_length", 256 * 1024 * 1024)]
            return app, stack.extractor_stub(app, large)

        yield start


@pytest.fixture
async def stub(start_extractor: StartExtractor) -> Stub:
    return (await start_extractor())[1]


def image(name: str, data: bytes) -> extractor_pb2.Image:
    return extractor_pb2.Image(id=name, data=data)


def vector(result: extractor_pb2.EmbedResult) -> np.ndarray:
    assert result.WhichOneof("outcome") == "embedding", result.error.message
    return np.asarray(result.embedding.values, dtype=np.float32)


async def test_embed_returns_one_vector_per_image_in_order(stub: Stub) -> None:
    names = ["chelsea", "coffee", "astronaut"]
    response = await stub.Embed(
        extractor_pb2.EmbedRequest(images=[image(n, photos.photo_bytes(n)) for n in names])
    )
    assert [r.id for r in response.results] == names
    assert response.model.name == "efficientnet-lite0"
    assert response.model.dimension == 1280
    vectors = [vector(r) for r in response.results]
    assert all(v.shape == (1280,) for v in vectors)
    assert all(np.isfinite(v).all() for v in vectors)
    assert not np.allclose(vectors[0], vectors[1])


async def test_vectors_equal_onnx_runtime_on_the_same_preprocessing(
    stub: Stub, lite0_model_dir: Path
) -> None:
    data = photos.photo_bytes("coffee")
    response = await stub.Embed(extractor_pb2.EmbedRequest(images=[image("coffee", data)]))
    manifest = load_manifest(lite0_model_dir)
    config = manifest.preprocess_config()
    direct = OnnxModel.load(lite0_model_dir).run(preprocess(data, config, item="coffee")[None])[0]
    np.testing.assert_allclose(vector(response.results[0]), direct, rtol=1e-5, atol=1e-5)


async def test_normalize_returns_unit_vectors_in_the_same_direction(stub: Stub) -> None:
    item = image("cat", photos.photo_bytes("chelsea"))
    raw = vector((await stub.Embed(extractor_pb2.EmbedRequest(images=[item]))).results[0])
    unit = vector(
        (await stub.Embed(extractor_pb2.EmbedRequest(images=[item], normalize=True))).results[0]
    )
    assert np.linalg.norm(unit) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw), atol=1e-6)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, without the pixels to back it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


def bad_images() -> dict[str, tuple[bytes, int]]:
    """Each kind of bad input, by name, with the code its item error must carry."""
    jpeg = photos.encode(photos.photo("coffee"), "JPEG")
    return {
        "empty.jpg": (b"", INVALID_ARGUMENT),
        "noise.bin": (bytes(range(256)) * 8, INVALID_ARGUMENT),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], INVALID_ARGUMENT),
        "notes.txt": (b"just some text, not an image\n", INVALID_ARGUMENT),
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10"/>', INVALID_ARGUMENT),
        "huge.png": (_png_header_claiming(100_000, 100_000), RESOURCE_EXHAUSTED),
    }


async def test_bad_images_get_item_errors_and_good_ones_still_embed(stub: Stub) -> None:
    bad = bad_images()
    items = [image("good.png", photos.photo_bytes("chelsea"))]
    items += [image(name, data) for name, (data, _) in bad.items()]
    response = await stub.Embed(extractor_pb2.EmbedRequest(images=items))

    assert vector(response.results[0]).shape == (1280,)
    for result, (name, (_, code)) in zip(response.results[1:], bad.items(), strict=True):
        assert result.id == name
        assert result.WhichOneof("outcome") == "error", name
        assert result.error.code == code, (name, result.error.message)
        assert name in result.error.message
        assert "Traceback" not in result.error.message
    # and the server keeps serving
    again = await stub.Embed(extractor_pb2.EmbedRequest(images=items[:1]))
    np.testing.assert_array_equal(vector(again.results[0]), vector(response.results[0]))


async def test_items_without_ids_are_named_by_index(stub: Stub) -> None:
    response = await stub.Embed(
        extractor_pb2.EmbedRequest(
            images=[extractor_pb2.Image(data=photos.photo_bytes("coffee")), extractor_pb2.Image()]
        )
    )
    assert [r.id for r in response.results] == ["#0", "#1"]
    assert "'#1'" in response.results[1].error.message


@pytest.mark.parametrize(
    ("count", "message"),
    [(0, "images: at least one image is required"), (5, "images: 5 images in one request")],
)
async def test_request_with_wrong_image_count_is_invalid(
    start_extractor: StartExtractor, count: int, message: str
) -> None:
    _, stub = await start_extractor(max_request_images=4)
    request = extractor_pb2.EmbedRequest(
        images=[image(f"{i}", photos.photo_bytes("coffee")) for i in range(count)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(message)


async def test_oversize_message_is_resource_exhausted(start_extractor: StartExtractor) -> None:
    _, stub = await start_extractor(max_message_bytes=1024 * 1024)
    request = extractor_pb2.EmbedRequest(images=[image("big", b"\xff" * 2 * 1024 * 1024)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_concurrent_requests_share_batches(start_extractor: StartExtractor) -> None:
    app, stub = await start_extractor(max_batch_wait_ms=300, max_batch_size=16)
    data = photos.photo_bytes("chelsea")
    responses = await asyncio.gather(
        *(stub.Embed(extractor_pb2.EmbedRequest(images=[image(f"{i}", data)])) for i in range(8))
    )
    first = vector(responses[0].results[0])
    for response in responses[1:]:
        np.testing.assert_allclose(vector(response.results[0]), first, rtol=1e-5, atol=1e-6)
    assert app.servicer.engine is not None
    assert app.servicer.engine.batcher.batches_run < 8  # 1 on a quiet machine


async def test_full_queue_refuses_at_once(start_extractor: StartExtractor) -> None:
    # A long batching window keeps the first request's images waiting in the queue.
    _, stub = await start_extractor(
        max_queue_images=4, max_request_images=3, max_batch_wait_ms=1500
    )
    data = photos.photo_bytes("coffee")
    request = extractor_pb2.EmbedRequest(images=[image(f"{i}", data) for i in range(3)])
    first = asyncio.ensure_future(stub.Embed(request))
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    refused_at = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "busy" in (caught.value.details() or "")
    assert loop.time() - refused_at < 1.0  # refused, not queued behind the first
    assert len((await first).results) == 3


async def test_expired_request_is_not_run(start_extractor: StartExtractor) -> None:
    app, stub = await start_extractor(max_batch_wait_ms=1000)
    request = extractor_pb2.EmbedRequest(images=[image("late", photos.photo_bytes("coffee"))])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(request, timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(1.2)  # past the batching window: the batch would have run by now
    assert app.servicer.engine is not None
    assert app.servicer.engine.batcher.batches_run == 0


async def test_stream_answers_in_order_with_item_errors(stub: Stub) -> None:
    names = ["chelsea", "broken", "coffee", "astronaut"]

    def requests() -> list[extractor_pb2.EmbedStreamRequest]:
        return [
            extractor_pb2.EmbedStreamRequest(
                image=image(n, b"nope" if n == "broken" else photos.photo_bytes(n)),
                normalize=True,
            )
            for n in names
        ]

    responses = [r async for r in stub.EmbedStream(iter(requests()))]
    assert [r.result.id for r in responses] == names
    assert responses[1].result.error.code == INVALID_ARGUMENT
    assert np.linalg.norm(vector(responses[3].result)) == pytest.approx(1.0, abs=1e-5)
    unary = await stub.Embed(
        extractor_pb2.EmbedRequest(images=[image("coffee", photos.photo_bytes("coffee"))])
    )
    raw = vector(unary.results[0])
    np.testing.assert_allclose(
        vector(responses[2].result), raw / np.linalg.norm(raw), rtol=1e-5, atol=1e-6
    )


async def test_stream_answers_a_client_that_waits_for_each_result(stub: Stub) -> None:
    call = stub.EmbedStream()  # type: ignore[call-arg]  # aio: no iterator, write() instead
    for name in ["chelsea", "coffee"]:
        await call.write(
            extractor_pb2.EmbedStreamRequest(image=image(name, photos.photo_bytes(name)))
        )
        async with asyncio.timeout(30):
            response = await call.read()
        assert isinstance(response, extractor_pb2.EmbedStreamResponse)
        assert response.result.id == name
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]


async def test_model_info_reports_the_manifest_and_providers(
    stub: Stub, lite0_model_dir: Path
) -> None:
    manifest = load_manifest(lite0_model_dir)
    info = await stub.GetModelInfo(extractor_pb2.GetModelInfoRequest())
    assert info.model.ref.name == manifest.name
    assert info.model.ref.version == manifest.version
    assert info.model.ref.dimension == manifest.dimension
    assert info.model.onnx_sha256 == manifest.onnx_sha256
    assert list(info.model.mean) == pytest.approx(list(manifest.mean))
    assert info.execution_providers == ["CPUExecutionProvider"]
    assert info.max_request_images == ExtractorSettings().max_request_images


def test_missing_model_directory_fails_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="make model"):
        OnnxModel.load(tmp_path / "nowhere")


def test_unavailable_provider_is_refused_by_name(lite0_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="TensorrtExecutionProvider"):
        OnnxModel.load(lite0_model_dir, providers=["TensorrtExecutionProvider"])


def test_modified_onnx_file_is_refused(lite0_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for path in lite0_model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    with (copy / "model.onnx").open("ab") as onnx_file:
        onnx_file.write(b"\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        OnnxModel.load(copy)


def test_settings_reject_a_request_larger_than_the_queue() -> None:
    with pytest.raises(ValueError, match="max_request_images"):
        dataclasses.replace(ExtractorSettings(), max_request_images=300, max_queue_images=256)
