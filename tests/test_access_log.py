"""Request ids and the access log, through both real servers."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from devenv.stack import SearchStub, Stack, address
from imagesearch.extractor.v1 import extractor_pb2
from imagesearch.search.v1 import search_pb2
from service_core.access_log import choose_request_id
from service_core.logs import RequestIdFilter
from tests import photos
from tests.search.test_service import vector_item

SEARCH = "/imagesearch.search.v1.SearchService/Search"
EMBED = "/imagesearch.extractor.v1.ExtractorService/Embed"


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog with the filter the services' own log handler has."""
    keep = RequestIdFilter()
    caplog.handler.addFilter(keep)
    caplog.set_level(logging.INFO)
    yield caplog
    caplog.handler.removeFilter(keep)


@pytest.fixture
async def wired(database_url: str, lite0_model_dir: Path) -> AsyncIterator[SearchStub]:
    async with Stack() as stack:
        extractor = await stack.extractor(lite0_model_dir)
        app = await stack.search(database_url, extractor_address=address(extractor))
        yield stack.search_stub(app)


async def access_lines(
    caplog: pytest.LogCaptureFixture, method: str, count: int = 1
) -> list[logging.LogRecord]:
    """The access-log lines of ``method``, once ``count`` of them are there (or after 5 s).

    A failed call's line is written as its handler unwinds, which may be just after the
    caller has its status: the status goes out when the error interceptor aborts.
    """
    deadline = time.monotonic() + 5
    while True:
        lines = [
            r for r in caplog.records if r.name == "access" and getattr(r, "method", "") == method
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.01)


async def test_a_request_id_is_returned_logged_and_passed_to_the_extractor(
    wired: SearchStub, logged: pytest.LogCaptureFixture
) -> None:
    call = wired.Search(
        search_pb2.SearchRequest(image=photos.photo_bytes("coffee"), top_k=1),
        metadata=(("x-request-id", "req-42/a.b"),),
    )
    await call
    assert (await call.trailing_metadata())["x-request-id"] == "req-42/a.b"
    [search] = await access_lines(logged, SEARCH)
    [embed] = await access_lines(logged, EMBED)  # the extractor's own line, in this process
    for line in (search, embed):
        assert line.request_id == "req-42/a.b"  # type: ignore[attr-defined]
        assert line.code == "OK"  # type: ignore[attr-defined]
        assert line.peer.startswith("ipv")  # type: ignore[attr-defined]
        assert line.duration_ms > 0  # type: ignore[attr-defined]
    assert search.duration_ms > embed.duration_ms  # type: ignore[attr-defined]


async def test_every_line_of_a_failed_call_carries_its_request_id(
    wired: SearchStub, logged: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await wired.Search(
            search_pb2.SearchRequest(key="k", top_k=5000), metadata=(("x-request-id", "bad-1"),)
        )
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers: Any = failed.value.trailing_metadata()  # grpc.aio.Metadata, typed as a tuple
    assert trailers["x-request-id"] == "bad-1"
    [line] = await access_lines(logged, SEARCH)
    during = [r for r in logged.records if getattr(r, "request_id", None) == "bad-1"]
    assert {r.name for r in during} >= {"access", "service_core.interceptor"}
    assert line.code == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert line.levelno == logging.WARNING


async def test_without_a_request_id_each_call_gets_a_fresh_one(
    wired: SearchStub, logged: pytest.LogCaptureFixture
) -> None:
    ids = []
    for _ in range(2):
        call = wired.ListCollections(search_pb2.ListCollectionsRequest())
        await call
        ids.append((await call.trailing_metadata())["x-request-id"])
    assert all(re.fullmatch("[0-9a-f]{32}", str(i)) for i in ids)
    assert ids[0] != ids[1]
    lines = await access_lines(logged, "/imagesearch.search.v1.SearchService/ListCollections", 2)
    assert [line.request_id for line in lines] == ids  # type: ignore[attr-defined]


@pytest.mark.parametrize("given", ["x" * 129, "two words", ""])
async def test_an_unusable_request_id_is_replaced_and_said_so(
    wired: SearchStub, logged: pytest.LogCaptureFixture, given: str
) -> None:
    call = wired.ListCollections(
        search_pb2.ListCollectionsRequest(), metadata=(("x-request-id", given),)
    )
    await call
    returned = (await call.trailing_metadata())["x-request-id"]
    assert re.fullmatch("[0-9a-f]{32}", str(returned))
    [line] = await access_lines(logged, "/imagesearch.search.v1.SearchService/ListCollections")
    assert line.request_id == returned  # type: ignore[attr-defined]
    assert line.request_id_replaced is True  # type: ignore[attr-defined]


def test_request_ids_are_bounded_visible_ascii() -> None:
    assert choose_request_id("a" * 128) == ("a" * 128, False)
    assert choose_request_id("00-4bf92f3577b34da6-01") == ("00-4bf92f3577b34da6-01", False)
    for bad in ("a" * 129, "new\nline", "é", b"bytes"):
        fresh, replaced = choose_request_id(bad)
        assert replaced
        assert re.fullmatch("[0-9a-f]{32}", fresh)
    assert choose_request_id(None)[1] is False


async def test_streams_get_a_request_id_and_an_access_line_too(
    database_url: str, logged: pytest.LogCaptureFixture
) -> None:
    async with Stack() as stack:
        app = await stack.search(database_url, extractor_address="127.0.0.1:1")
        stub = stack.search_stub(app)
        item = vector_item("v", np.ones(32, dtype=np.float32))
        call = stub.IngestStream(
            iter([search_pb2.IngestStreamRequest(items=[item])]),
            metadata=(("x-request-id", "bulk-7"),),
        )
        responses = [response async for response in call]
        assert len(responses) == 1
        assert (await call.trailing_metadata())["x-request-id"] == "bulk-7"
    [line] = await access_lines(logged, "/imagesearch.search.v1.SearchService/IngestStream")
    assert (line.code, line.request_id) == ("OK", "bulk-7")  # type: ignore[attr-defined]


async def test_sampling_leaves_out_successes_but_never_failures(
    lite0_model_dir: Path, logged: pytest.LogCaptureFixture
) -> None:
    async with Stack() as stack:
        app = await stack.extractor(lite0_model_dir, access_log_sample_rate=0)
        stub = stack.extractor_stub(app)
        for _ in range(5):
            await stub.GetModelInfo(extractor_pb2.GetModelInfoRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Embed(extractor_pb2.EmbedRequest())
    assert (
        await access_lines(logged, "/imagesearch.extractor.v1.ExtractorService/GetModelInfo", 0)
        == []
    )
    [failure] = await access_lines(logged, EMBED)
    assert failure.code == "INVALID_ARGUMENT"  # type: ignore[attr-defined]


def test_sample_rate_is_a_share() -> None:
    from service_core.settings import ServerSettings

    with pytest.raises(ValueError, match=r"access_log_sample_rate must be 0\.\.1"):
        ServerSettings(access_log_sample_rate=1.5)
