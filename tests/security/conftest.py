"""Fixtures for the security tests: a PKI made per test, callers files, TLS servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extractor_service.app import ExtractorApp
from extractor_service.settings import ExtractorSettings
from search_service.app import SearchApp
from search_service.settings import SearchSettings
from service_core.auth import hash_token
from tests.security.certs import Authority, Issued

# One token per role, and the callers file line of each.
TOKENS = {"reader": "reader-secret-1", "writer": "writer-secret-2", "admin": "admin-secret-3"}


@dataclass(frozen=True)
class Pki:
    """A CA with a server certificate for 127.0.0.1/localhost and two client certificates."""

    folder: Path
    ca: Authority
    server: Issued
    search_client: Issued  # the search service's own identity towards the extractor
    client: Issued  # a caller's certificate that no callers file names
    other_ca: Authority  # trusted by nobody


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Authority(tmp_path, "ca")
    return Pki(
        folder=tmp_path,
        ca=ca,
        server=ca.issue("server", hosts=("127.0.0.1", "localhost")),
        search_client=ca.issue("search-service", client=True),
        client=ca.issue("someone", client=True),
        other_ca=Authority(tmp_path, "other-ca"),
    )


def callers_file(folder: Path, *extra: str) -> Path:
    """A callers file with one token per role of TOKENS, and ``extra`` lines."""
    lines = [f"token {hash_token(t)} {role} {role}-user" for role, t in TOKENS.items()]
    path = folder / "callers"
    path.write_text("\n".join(["# test callers", *lines, *extra]) + "\n")
    return path


StartApp = Callable[..., Awaitable[Any]]


@pytest.fixture
async def start_secure_search(database_url: str) -> AsyncIterator[StartApp]:
    """Starts SearchApps on port 0 against the test's database; returns (app, port)."""
    started: list[SearchApp] = []

    async def start(**overrides: Any) -> tuple[SearchApp, int]:
        defaults: dict[str, Any] = {
            "database_url": database_url,
            "grace_period_s": 0,
            "extractor_address": "127.0.0.1:1",
            "extractor_timeout_s": 2,
        }
        app = SearchApp(SearchSettings(**(defaults | overrides)))
        server = await app.start()
        started.append(app)
        await app.wait_ready()
        return app, server.port

    yield start
    for app in started:
        await app.stop()


@pytest.fixture
async def start_secure_extractor(lite0_model_dir: Path) -> AsyncIterator[StartApp]:
    """Starts ExtractorApps on port 0; returns (app, port)."""
    started: list[ExtractorApp] = []

    async def start(**overrides: Any) -> tuple[ExtractorApp, int]:
        settings = ExtractorSettings(model_dir=lite0_model_dir, grace_period_s=0, **overrides)
        app = ExtractorApp(settings)
        server = await app.start()
        started.append(app)
        await app.wait_ready()
        return app, server.port

    yield start
    for app in started:
        await app.stop()
