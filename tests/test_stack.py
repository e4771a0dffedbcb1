"""The stack harness's subprocess side: what `make run`, the evaluation and benchmarks use."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.postgres import free_port
from devenv.stack import Stack, address, spawn, stop_all, wait_serving
from imagesearch.search.v1 import search_pb2
from tests import photos


async def test_spawned_services_serve_together_and_stop_cleanly(
    database_url: str, lite0_model_dir: Path, tmp_path: Path
) -> None:
    extractor, search = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with (tmp_path / "services.log").open("wb") as log:
        children = [
            spawn(
                "extractor",
                {"port": extractor.rsplit(":")[1], "model_dir": lite0_model_dir},
                log=log,
            ),
            spawn(
                "search",
                {
                    "port": search.rsplit(":")[1],
                    "database_url": database_url,
                    "extractor_address": extractor,
                },
                log=log,
            ),
        ]
    try:
        await wait_serving(extractor, children[0])
        await wait_serving(search, children[1])
        async with Stack() as stack:
            item = search_pb2.IngestItem(key="chelsea.png", image=photos.photo_bytes("chelsea"))
            reply = await stack.search_stub(search).Ingest(search_pb2.IngestRequest(items=[item]))
        assert [r.status for r in reply.results] == [search_pb2.INGEST_STATUS_CREATED]
    finally:
        stop_all(children)
    assert [child.returncode for child in children] == [0, 0], (
        tmp_path / "services.log"
    ).read_text()


async def test_wait_serving_fails_at_once_when_the_server_exits(tmp_path: Path) -> None:
    with (tmp_path / "search.log").open("wb") as log:
        child = spawn("search", {"port": 70000}, log=log)  # out of range: it exits
    try:
        with pytest.raises(RuntimeError, match=r"search_service exited with 2"):
            await wait_serving(f"127.0.0.1:{free_port()}", child, timeout_s=60)
    finally:
        stop_all([child])
    assert "port must be 0..65535" in (tmp_path / "search.log").read_text()


async def test_stack_stops_its_servers_on_leaving(database_url: str) -> None:
    async with Stack() as stack:
        app = await stack.search(database_url)
        where = address(app)
        await wait_serving(where, timeout_s=5)
    with pytest.raises(RuntimeError, match="did not report SERVING"):
        await wait_serving(where, timeout_s=1)
