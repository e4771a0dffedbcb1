"""Fixtures for the client tests: real search services (and extractor) on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from devenv.stack import Stack, address
from search_service.app import SearchApp
from tests.security.conftest import pki, start_secure_search

__all__ = ["pki", "start_secure_search"]

StartSearch = Callable[..., Awaitable[str]]


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    # After the database (and so stopped before it is dropped).
    async with Stack() as started:
        yield started


@pytest.fixture
async def start_search(stack: Stack, database_url: str) -> StartSearch:
    """Starts a SearchApp with settings overrides; returns its address."""

    async def start(**overrides: Any) -> str:
        app: SearchApp = await stack.search(database_url, **overrides)
        return address(app)

    return start


@pytest.fixture
async def vectors_only(start_search: StartSearch) -> str:
    """A search service whose extractor address leads nowhere (precomputed vectors only)."""
    return await start_search(extractor_address="127.0.0.1:1", extractor_timeout_s=2)


@pytest.fixture
async def extractor_address(stack: Stack, lite0_model_dir: Path) -> str:
    return address(await stack.extractor(lite0_model_dir))


@pytest.fixture
async def with_images(start_search: StartSearch, extractor_address: str) -> str:
    """A search service wired to a real Lite0 extractor."""
    return await start_search(extractor_address=extractor_address)
