"""The typed client against real servers: every call, sync and async, streams, TLS."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imagesearch.client import (
    CREATED,
    EXACT,
    UPDATED,
    AlreadyExists,
    AsyncSearchClient,
    Connection,
    DeadlineExceeded,
    Item,
    Model,
    NotFound,
    SearchClient,
    Tls,
    Unauthenticated,
    default_service_config,
)
from tests.security.conftest import TOKENS, Pki, StartApp, callers_file

MODEL = Model("test-model", 8, "1")


def vectors(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, MODEL.dimension)).astype(np.float32)


def items(matrix: np.ndarray, prefix: str = "k") -> list[Item]:
    return [
        Item(f"{prefix}{i}", vector=row.tolist(), model=MODEL, metadata={"i": i})
        for i, row in enumerate(matrix)
    ]


async def test_the_sync_client_makes_every_collection_and_record_call(vectors_only: str) -> None:
    # The servers run on this test's event loop: the blocking client runs beside it.
    await asyncio.to_thread(_every_call, vectors_only)


def _every_call(vectors_only: str) -> None:
    matrix = vectors(20)
    with SearchClient(Connection(vectors_only), collection="photos") as client:
        created = client.create_collection("photos", model=MODEL)
        assert created.name == "photos"
        with pytest.raises(AlreadyExists):
            client.create_collection("photos")
        results = client.ingest(items(matrix))
        assert {r.status for r in results} == {CREATED}
        assert [r.status for r in client.ingest(items(matrix[:2]))] == [UPDATED, UPDATED]

        page = client.search("k3", top_k=5, mode=EXACT)
        assert len(page.hits) == 5
        assert "k3" not in [h.key for h in page.hits]
        by_vector = client.search(matrix[3].tolist(), top_k=1)
        assert by_vector.hits[0].key == "k3"
        pages = list(client.search_pages("k0", top_k=7))
        assert sum(len(p.hits) for p in pages) == 19  # every other image, once
        filtered = client.search(matrix[0].tolist(), top_k=10, filter={"i": 4})
        assert [h.key for h in filtered.hits] == ["k4"]

        stored = client.get_image("k5", include_embedding=True)
        assert stored.metadata["i"] == 5
        np.testing.assert_allclose(stored.embedding.values, matrix[5])
        assert client.find_image("missing") is None
        with pytest.raises(NotFound) as caught:
            client.get_image("missing")
        assert caught.value.reason == "KEY_NOT_FOUND"

        assert client.collection_stats().image_count == 20
        assert {c.name for c in client.list_collections()} == {"default", "photos"}
        deleted = client.delete_images(["k1", "nope"])
        assert (deleted.deleted_count, list(deleted.missing_keys)) == (1, ["nope"])
        assert client.delete_collection("photos") == 19
        assert {c.name for c in client.list_collections()} == {"default"}


async def test_the_async_client_streams_an_iterable_with_per_item_results(
    vectors_only: str,
) -> None:
    matrix = vectors(250, seed=1)
    async with AsyncSearchClient(Connection(vectors_only)) as client:
        await client.create_collection("bulk", model=MODEL)
        source = [*items(matrix), Item("bad", vector=[1.0], model=MODEL)]
        results = [r async for r in client.ingest_stream(source, collection="bulk", batch_items=64)]
        assert [r.key for r in results] == [i.key for i in source]
        assert all(r.status == CREATED for r in results[:-1])
        assert results[-1].error is not None
        assert results[-1].error.field_path == "items[58].embedding.vector.values"
        again = [r async for r in client.ingest_stream(source[:3], collection="bulk")]
        assert [r.status for r in again] == [UPDATED] * 3  # vectors are always rewritten
        assert (await client.collection_stats("bulk")).image_count == 250
        projection = await client.refit_projection("bulk", dimensions=4)
        assert projection.version == 1


async def test_ingest_reads_the_iterable_no_faster_than_results_are_taken(
    vectors_only: str,
) -> None:
    """Back-pressure: with results not taken, the source stops being read after
    ``window`` unanswered messages (and the one being assembled)."""
    await asyncio.to_thread(_paced, vectors_only)


def _paced(vectors_only: str) -> None:
    matrix = vectors(400, seed=2)
    pulled = 0
    lock = threading.Lock()

    def source() -> Iterator[Item]:
        nonlocal pulled
        for item in items(matrix):
            with lock:
                pulled += 1
            yield item

    with SearchClient(Connection(vectors_only)) as client:
        client.create_collection("paced", model=MODEL)
        results = client.ingest_stream(source(), collection="paced", batch_items=10, window=2)
        first = next(results)
        assert first.key == "k0"
        time.sleep(0.5)  # ample time to read everything, were nothing holding it back
        with lock:
            read_while_paused = pulled
        # Two unanswered messages, the one waiting for a slot, and the results of
        # the one answered (buffered by gRPC) at most.
        assert read_while_paused <= 10 * 5
        rest = list(results)
        assert len(rest) == 399
        assert pulled == 400


def test_the_shipped_service_config_retries_only_calls_safe_to_repeat() -> None:
    [policy] = default_service_config()["methodConfig"]
    methods = {name["method"] for name in policy["name"]}
    assert {"Search", "Ingest", "GetImage"} <= methods
    assert not methods & {"CreateCollection", "DeleteCollection", "RefitProjection"}
    assert set(policy["retryPolicy"]["retryableStatusCodes"]) == {
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
    }


async def test_a_deadline_is_sent_with_each_call(vectors_only: str) -> None:
    async with AsyncSearchClient(Connection(vectors_only, timeout_s=0.000001)) as client:
        with pytest.raises(DeadlineExceeded):
            await client.list_collections()


async def test_tls_and_a_token(pki: Pki, start_secure_search: StartApp) -> None:
    _, port = await start_secure_search(
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        auth_file=callers_file(pki.folder),
    )
    tls = Tls(ca_file=pki.ca.bundle)
    target = f"localhost:{port}"
    async with AsyncSearchClient(Connection(target, tls=tls, token=TOKENS["reader"])) as client:
        assert [c.name for c in await client.list_collections()] == ["default"]
    async with AsyncSearchClient(Connection(target, tls=tls)) as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.list_collections()
    assert caught.value.reason == "NO_CREDENTIALS"
    with pytest.raises(ValueError, match="both its cert and key"):
        Connection(target, tls=Tls(cert_file=Path("c.pem"))).credentials()
