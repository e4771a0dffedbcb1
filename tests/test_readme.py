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


def grpcurl_block(text: str, heading: str = "## Talking to it with grpcurl") -> str:
    """The sh block under ``heading``."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, f"README's {heading!r} section has no ```sh block"
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


# The '## Security' block, in README order.
SECURE_CHECKS = [
    Check("Health/Check", lambda out: _json(out) == {"status": "SERVING"}),
    Check("ListCollections", lambda out: isinstance(_json(out), dict)),
    Check("GetModelInfo", lambda out: "efficientnet-lite0" in out),
]


async def test_readme_tls_and_token_recipes_work_as_written(
    database_url: str, lite0_model_dir: Path, grpcurl: str, tmp_path: Path
) -> None:
    from service_core.auth import hash_token
    from tests.security.certs import Authority

    ca = Authority(tmp_path, "ca")
    server = ca.issue("localhost", hosts=("localhost", "127.0.0.1"))
    client = ca.issue("client", client=True)
    (tmp_path / "ca.pem").write_bytes(ca.bundle.read_bytes())
    client.cert.rename(tmp_path / "client.pem")
    client.key.rename(tmp_path / "client.key")
    (tmp_path / "reader.token").write_text("a-reader-token\n")
    callers = tmp_path / "callers"
    callers.write_text(f"token {hash_token('a-reader-token')} reader ops\ncert client reader\n")
    tls: dict[str, Any] = {
        "tls_cert_file": server.cert,
        "tls_key_file": server.key,
        "auth_file": callers,
    }
    async with Stack() as stack:
        extractor = await stack.extractor(lite0_model_dir, tls_client_ca_file=ca.bundle, **tls)
        search = await stack.search(database_url, **tls)
        extractor_port = address(extractor).rsplit(":", 1)[1]
        search_port = address(search).rsplit(":", 1)[1]
        text = grpcurl_block(README.read_text(), "## Security")
        text = text.replace("localhost:50052", f"localhost:{search_port}")
        text = text.replace("localhost:50051", f"localhost:{extractor_port}")
        prelude = [c for c in commands(text) if ASSIGNMENT.match(c)]
        runnable = [c for c in commands(text) if not ASSIGNMENT.match(c)]
        assert len(runnable) == len(SECURE_CHECKS)
        env = os.environ | {"PATH": f"{Path(grpcurl).parent}{os.pathsep}{os.environ['PATH']}"}
        refusals = 0
        for command, check in zip(runnable, SECURE_CHECKS, strict=True):
            assert check.calls in command, command
            ran = await asyncio.to_thread(
                subprocess.run,
                ["bash", "-e", "-o", "pipefail", "-c", "\n".join([*prelude, command])],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=tmp_path,
                env=env,
            )
            assert ran.returncode == 0, f"{command}\n{ran.stderr}"
            assert check.holds(ran.stdout), f"{command}\n{ran.stdout[:2000]}"
            # The same command without its credentials is refused.
            bare = re.sub(r" -H \"authorization: Bearer [^\"]*\"| -cert \S+ -key \S+", "", command)
            if bare != command:
                refused = await asyncio.to_thread(
                    subprocess.run,
                    ["bash", "-c", "\n".join([*prelude, bare])],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    cwd=tmp_path,
                    env=env,
                )
                assert refused.returncode != 0, bare
                refusals += 1
        assert refusals == 2  # the token and the client certificate each matter
