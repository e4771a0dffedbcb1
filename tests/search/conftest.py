"""Fixtures for the search service: real PostgreSQL, real extractor, real channels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest

from extractor_service.app import ExtractorApp
from extractor_service.settings import ExtractorSettings
from imagesearch.search.v1 import search_pb2_grpc
from search_service.app import SearchApp
from search_service.settings import SearchSettings

Stub: TypeAlias = "search_pb2_grpc.SearchServiceAsyncStub"  # a name of the .pyi only
StartSearch = Callable[..., Awaitable[tuple[SearchApp, Stub]]]


@pytest.fixture
async def extractor_address(lite0_model_dir: Path) -> AsyncIterator[str]:
    app = ExtractorApp(ExtractorSettings(model_dir=lite0_model_dir, grace_period_s=0))
    server = await app.start()
    await app.wait_ready()
    yield f"127.0.0.1:{server.port}"
    await app.stop()


@pytest.fixture
async def start_search(database_url: str) -> AsyncIterator[StartSearch]:
    """Starts SearchApps on port 0 against the test's database, with overrides."""
    started: list[tuple[SearchApp, grpc.aio.Channel]] = []

    async def start(**overrides: Any) -> tuple[SearchApp, Stub]:
        defaults: dict[str, Any] = {"database_url": database_url, "grace_period_s": 0}
        settings = SearchSettings(**(defaults | overrides))
        app = SearchApp(settings)
        server = await app.start()
        await app.wait_ready()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((app, channel))
        return app, search_pb2_grpc.SearchServiceStub(channel)

    yield start
    for app, channel in started:
        await channel.close(None)
        await app.stop()


@pytest.fixture
async def search(start_search: StartSearch, extractor_address: str) -> Stub:
    """A search service wired to a real Lite0 extractor."""
    return (await start_search(extractor_address=extractor_address))[1]


@pytest.fixture
async def vectors_only(start_search: StartSearch) -> Stub:
    """A search service whose extractor address leads nowhere (precomputed vectors only)."""
    return (await start_search(extractor_address="127.0.0.1:1", extractor_timeout_s=2))[1]
