"""README.md's grpcurl commands, run as written with the real grpcurl against real servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devenv.stack import Stack, address
from imagesearch.search.v1 import search_pb2
from tests import photos

README = Path(__file__).resolve().parent.parent / "README.md"
# The addresses the README uses, which `make run` serves on.
README_SEARCH, README_EXTRACTOR = "127.0.0.1:50052", "127.0.0.1:50051"
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S+")


def grpcurl_block(text: str) -> str:
    """The sh block under the '## Talking to it with grpcurl' heading."""
    section = text.split("## Talking to it with grpcurl", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "README's grpcurl section has no ```sh block"
    return found.group(1)


def commands(block: str) -> list[str]:
    """The block's commands, each with its continuation lines (\\, |, open quotes)."""
    found: list[str] = []
    current = ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line + "\n"
        try:
            shlex.split(current, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if not current.rstrip().endswith(("\\", "|")):
            found.append(current.strip())
            current = ""
    assert not current, f"unfinished command at the end of the block: {current!r}"
    return found


@dataclass(frozen=True)
class Check:
    """What one README command calls (a substring of it) and what its output must show."""

    calls: str
    holds: Callable[[str], object]


def _json(output: str) -> Any:
    return json.loads(output)


# In README order; a command added to the README without a check here fails the test.
CHECKS = [
    Check(
        " list",
        lambda out: (
            {"imagesearch.search.v1.SearchService", "grpc.health.v1.Health"} <= set(out.split())
        ),
    ),
    Check("Health/Check", lambda out: _json(out) == {"status": "SERVING"}),
    Check("describe imagesearch.search.v1.SearchRequest", lambda out: "top_k = 5;" in out),
    Check(
        "SearchService/Ingest",
        lambda out: _json(out)["results"][0]["status"] == "INGEST_STATUS_CREATED",
    ),
    Check("SearchService/Search", lambda out: _json(out)["hits"][0]["key"] == "cat.jpg"),
    Check(
        '{"key": "cat.jpg"',
        lambda out: (keys := [h["key"] for h in _json(out)["hits"]]) and "cat.jpg" not in keys,
    ),
    Check(
        "ExtractorService/Embed",
        lambda out: len(_json(out)["results"][0]["embedding"]["values"]) == 1280,
    ),
    Check("GetModelInfo", lambda out: "efficientnet-lite0" in out),
]


@pytest.fixture
async def servers(database_url: str, lite0_model_dir: Path) -> AsyncIterator[tuple[str, str]]:
    """(search, extractor) addresses of real servers; the collection holds three photos."""
    async with Stack() as stack:
        extractor = await stack.extractor(lite0_model_dir)
        search = await stack.search(database_url, extractor_address=address(extractor))
        # Something else to find, so that searching by the README's key has hits.
        items = [
            search_pb2.IngestItem(key=f"{name}.png", image=photos.photo_bytes(name))
            for name in ("coffee", "rocket", "astronaut")
        ]
        await stack.search_stub(search).Ingest(search_pb2.IngestRequest(items=items))
        yield address(search), address(extractor)


def test_readme_block_splits_into_the_checked_commands() -> None:
    found = commands(grpcurl_block(README.read_text()))
    assert len(found) == 1 + len(CHECKS)  # the address assignment, then one per check
    for command, check in zip(found[1:], CHECKS, strict=True):
        assert check.calls in command, command


async def test_every_readme_grpcurl_command_works_as_written(
    servers: tuple[str, str], grpcurl: str, tmp_path: Path
) -> None:
    search, extractor = servers
    # A 12-megapixel camera photo: its base64 is far past the 128 KiB limit of one
    # command-line argument, as a reader's own cat.jpg would be.
    cat = photos.large_jpeg("chelsea")
    assert len(cat) > 200_000
    (tmp_path / "cat.jpg").write_bytes(cat)
    query = photos.center_crop(photos.flipped(photos.photo("chelsea")), 0.85)
    (tmp_path / "query.jpg").write_bytes(photos.encode(query.convert("RGB")))

    text = grpcurl_block(README.read_text())
    text = text.replace(README_SEARCH, search).replace(README_EXTRACTOR, extractor)
    prelude = [c for c in commands(text) if ASSIGNMENT.match(c)]
    runnable = [c for c in commands(text) if not ASSIGNMENT.match(c)]
    assert len(runnable) == len(CHECKS)
    env = os.environ | {"PATH": f"{Path(grpcurl).parent}{os.pathsep}{os.environ['PATH']}"}
    for command, check in zip(runnable, CHECKS, strict=True):
        script = "\n".join([*prelude, command])
        ran = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-e", "-o", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
            env=env,
        )
        assert ran.returncode == 0, f"{command}\n{ran.stderr}"
        assert check.holds(ran.stdout), f"{command}\n{ran.stdout[:2000]}"
