"""Fixtures for the search service: real PostgreSQL, real extractor, real channels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from devenv.stack import SearchStub, Stack, address
from search_service.app import SearchApp

Stub = SearchStub
StartSearch = Callable[..., Awaitable[tuple[SearchApp, Stub]]]


@pytest.fixture
async def extractor_address(lite0_model_dir: Path) -> AsyncIterator[str]:
    async with Stack() as stack:
        yield address(await stack.extractor(lite0_model_dir))


@pytest.fixture
async def start_search(database_url: str) -> AsyncIterator[StartSearch]:
    """Starts SearchApps on port 0 against the test's database (unless overrides name
    another database_url), with overrides."""
    async with Stack() as stack:

        async def start(**overrides: Any) -> tuple[SearchApp, Stub]:
            app = await stack.search(overrides.pop("database_url", database_url), **overrides)
            return app, stack.search_stub(app)

        yield start


@pytest.fixture
async def search(start_search: StartSearch, extractor_address: str) -> Stub:
    """A search service wired to a real Lite0 extractor."""
    return (await start_search(extractor_address=extractor_address))[1]


@pytest.fixture
async def vectors_only(start_search: StartSearch) -> Stub:
    """A search service whose extractor address leads nowhere (precomputed vectors only)."""
    return (await start_search(extractor_address="127.0.0.1:1", extractor_timeout_s=2))[1]
