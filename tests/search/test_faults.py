"""Faults mid-ingest: every item answered CREATED is stored, nothing half-written, recovery.

Real processes die for real: PostgreSQL and the extractor by SIGKILL, the search
service by SIGTERM; the client cancels its own call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import numpy as np
import pytest

from devenv.postgres import LocalPostgres, free_port
from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from tests.photos import available_photos, photo_bytes
from tests.search.conftest import StartSearch, Stub
from tests.test_shutdown import GRACE_S, start_process

MODEL = search_pb2.Model(name="synthetic", version="v1", dimension=32)
CREATED = search_pb2.INGEST_STATUS_CREATED
ROOT = Path(__file__).resolve().parents[2]
Processes = list[asyncio.subprocess.Process]


def messages(
    count: int, per_message: int, prefix: str = "k"
) -> list[search_pb2.IngestStreamRequest]:
    rng = np.random.default_rng(7)
    vectors = rng.random((count, MODEL.dimension), dtype=np.float32) + 0.01
    items = [
        search_pb2.IngestItem(
            key=f"{prefix}{i}",
            embedding=search_pb2.PrecomputedEmbedding(
                vector=search_pb2.Vector(values=row.tolist()), model=MODEL
            ),
        )
        for i, row in enumerate(vectors)
    ]
    return [
        search_pb2.IngestStreamRequest(items=items[i : i + per_message])
        for i in range(0, count, per_message)
    ]


async def stored(database_url: str) -> dict[str, int]:
    """Each stored key with its vector's byte length (a whole float32 vector or not)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT key, length(embedding) AS size FROM images")
    finally:
        await connection.close()
    return {row["key"]: row["size"] for row in rows}


def assert_whole(answered: set[str], rows: dict[str, int]) -> None:
    missing = answered - rows.keys()
    assert not missing, f"{len(missing)} items answered CREATED are not stored"
    assert set(rows.values()) <= {MODEL.dimension * 4}, "a stored vector is not whole"


async def recovers(stub: Stub, key: str) -> None:
    """The same process serves again: an ingest succeeds (UNAVAILABLE only meanwhile)."""
    request = search_pb2.IngestRequest(items=list(messages(1, 1, key)[0].items))
    codes = []
    for _ in range(50):
        try:
            response = await stub.Ingest(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
            await asyncio.sleep(0.2)
            continue
        assert response.results[0].status == CREATED
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
        return
    raise AssertionError(f"the service did not recover: {codes}")


def kill_cluster(cluster: LocalPostgres) -> None:
    """SIGKILL the postmaster and every backend: a crash, not a shutdown."""
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    for pid in [postmaster, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in [postmaster, *map(int, children)]:
        while "State:\tZ" not in _status(pid):
            time.sleep(0.01)
    # A dead postmaster may linger as a zombie where nothing reaps orphans, and
    # kill(pid, 0) succeeds on a zombie: PostgreSQL would take its lock file for a
    # live server and refuse to start.
    for lock in [cluster.data_dir / "postmaster.pid", *cluster.data_dir.glob(".s.PGSQL.*.lock")]:
        lock.unlink()


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "State:\tZ"


@pytest.mark.slow
async def test_kill_9_postgres_mid_stream(
    start_search: StartSearch, postgres: LocalPostgres, database_url: str
) -> None:
    # The test cluster commits asynchronously (for speed): a crash may lose what it
    # acknowledged. This database commits as production does, so none may be lost.
    connection = await asyncpg.connect(database_url)
    try:
        name = await connection.fetchval("SELECT current_database()")
        await connection.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    finally:
        await connection.close()
    _, stub = await start_search(extractor_address="127.0.0.1:1", stream_batch_items=50)
    answered: set[str] = set()
    call = stub.IngestStream(iter(messages(4000, 50)), timeout=60)
    ended = grpc.StatusCode.OK
    killed = False
    try:
        async for response in call:
            answered |= {r.key for r in response.results if r.status == CREATED}
            if len(answered) >= 500 and not killed:
                await asyncio.to_thread(kill_cluster, postgres)
                killed = True
    except grpc.aio.AioRpcError as error:
        ended = error.code()
    finally:
        await asyncio.to_thread(postgres.start)
    # The stream ends UNAVAILABLE, or answers the batches it could not write FAILED.
    assert ended in {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert 500 <= len(answered) < 4000
    assert_whole(answered, await stored(database_url))
    await recovers(stub, "after")


async def test_client_cancel_mid_stream(start_search: StartSearch, database_url: str) -> None:
    _, stub = await start_search(extractor_address="127.0.0.1:1", stream_batch_items=50)
    answered: set[str] = set()
    call = stub.IngestStream(iter(messages(4000, 50)), timeout=60)
    async for response in call:
        answered |= {r.key for r in response.results if r.status == CREATED}
        if len(answered) >= 300:
            call.cancel()
            break
    await asyncio.sleep(1.0)  # what the server had in hand settles
    assert_whole(answered, await stored(database_url))
    await recovers(stub, "after")


@pytest.fixture
async def extractor_process() -> AsyncIterator[tuple[int, Processes]]:
    """A free port for extractor processes, and the list of those started (killed after)."""
    port = free_port()
    started: Processes = []
    yield port, started
    for process in started:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def start_extractor(model_dir: Path, port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "extractor_service",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_kill_9_extractor_mid_ingest(
    start_search: StartSearch,
    extractor_process: tuple[int, Processes],
    lite0_model_dir: Path,
    database_url: str,
) -> None:
    port, processes = extractor_process
    processes.append(await start_extractor(lite0_model_dir, port))
    _, stub = await start_search(extractor_address=f"127.0.0.1:{port}", extractor_timeout_s=20)
    photos = [photo_bytes(name) for name in available_photos()]

    def request(batch: int) -> search_pb2.IngestRequest:
        return search_pb2.IngestRequest(
            items=[
                search_pb2.IngestItem(key=f"b{batch}-{i}", image=data)
                for i, data in enumerate(photos)
            ]
        )

    await stub.Ingest(request(0), timeout=120)  # the extractor is up and warm
    calls = [asyncio.ensure_future(stub.Ingest(request(b), timeout=60)) for b in range(1, 9)]
    await asyncio.sleep(0.3)
    processes[0].kill()  # SIGKILL
    await processes[0].wait()
    answered: set[str] = {f"b0-{i}" for i in range(len(photos))}
    codes = set()
    for call in calls:
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            codes.add(error.code())
            continue
        answered |= {r.key for r in response.results if r.status == CREATED}
    assert codes <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    rows = await stored(database_url)
    assert answered <= rows.keys()
    # A request is answered whole or not at all: no batch is stored in part.
    batches = {key.split("-")[0] for key in rows}
    for batch in batches:
        assert sum(key.startswith(batch + "-") for key in rows) == len(photos), batch

    processes.append(await start_extractor(lite0_model_dir, port))  # the same address
    codes = set()
    for _ in range(100):  # the search service reconnects by itself
        try:
            response = await stub.Ingest(request(99), timeout=30)
            break
        except grpc.aio.AioRpcError as error:
            codes.add(error.code())
            await asyncio.sleep(0.5)
    assert codes <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert {r.status for r in response.results} == {CREATED}


@pytest.mark.slow
async def test_sigterm_during_a_stream(database_url: str) -> None:
    process, port = await start_process(
        "-m", "search_service", "--database-url", database_url, "--extractor-address", "127.0.0.1:1"
    )
    assert process.stderr is not None
    drain = asyncio.create_task(process.stderr.read())  # its log must not fill the pipe
    answered: set[str] = set()
    ended = grpc.StatusCode.OK
    sent = messages(4000, 50)

    async def slowly() -> AsyncIterator[search_pb2.IngestStreamRequest]:
        for message in sent:
            yield message
            await asyncio.sleep(0.02)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            await wait_serving(stub)
            try:
                async for response in stub.IngestStream(slowly(), timeout=60):
                    answered |= {r.key for r in response.results if r.status == CREATED}
                    if len(answered) >= 300 and process.returncode is None:
                        process.send_signal(signal.SIGTERM)
            except grpc.aio.AioRpcError as error:
                ended = error.code()
        async with asyncio.timeout(GRACE_S + 5):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await drain
    # The stream either finished within the grace period or was cut at its end.
    assert ended in {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert len(answered) >= 300
    assert_whole(answered, await stored(database_url))


async def wait_serving(stub: Stub) -> None:
    for _ in range(100):
        try:
            await stub.ListCollections(search_pb2.ListCollectionsRequest(), timeout=2)
            return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise AssertionError("the search service never answered")
