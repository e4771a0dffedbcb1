"""The imagesearch console script end to end: a subprocess, real servers, real photos."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import asyncpg
import grpc
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from devenv.postgres import LocalPostgres
from devenv.stack import Stack, address
from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from tests import photos
from tests.conftest import TEMPLATE

REPO = Path(__file__).resolve().parent.parent
# Where each photo goes in the test folder: nested, so keys carry their folder.
FOLDERS = {
    "chelsea": "animals",
    "dog": "animals",
    "eagle": "animals",
    "giraffe": "animals",
    "horses": "animals",
    "astronaut": "space",
    "rocket": "space",
    "hubble_deep_field": "space",
    "moon": "space",
}
SUMMARY = re.compile(r"created (\d+), updated (\d+), unchanged (\d+), failed (\d+)")


def cli(*args: str, server: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m imagesearch_cli ARGS`` the way a user's shell would."""
    env = os.environ | {"IMAGESEARCH_SERVER": server, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "imagesearch_cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=env,
    )


async def run_cli(*args: str, server: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # On a thread: the servers answering it run on this test's event loop.
    return await asyncio.to_thread(cli, *args, server=server, cwd=cwd)


def counts(output: str) -> dict[str, int]:
    found = SUMMARY.search(output)
    assert found, output
    return dict(
        zip(("created", "updated", "unchanged", "failed"), map(int, found.groups()), strict=True)
    )


def key_of(name: str) -> str:
    return f"{FOLDERS.get(name, 'misc')}/{name}.png"


on_module_loop = pytest.mark.asyncio(loop_scope="module")


def write_album(root: Path, names: Iterable[str]) -> Path:
    for name in names:
        path = root / key_of(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photos.encode(photos.photo(name), "PNG"))
    return root


@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every available photo as PNG in nested folders, a sidecar, and two non-images."""
    root = write_album(tmp_path_factory.mktemp("album"), photos.available_photos())
    (root / "animals/chelsea.png.json").write_text(json.dumps({"album": "pets", "year": 2024}))
    (root / "notes.txt").write_text("not a photo")
    (root / "misc/not-really.jpg").write_text("a text file with an image's name")
    return root


# One database and one pair of servers for the module: starting them and embedding
# the album for every test would cost more than the tests. Tests that write use
# collections of their own.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(postgres: LocalPostgres, lite0_model_dir: Path) -> AsyncIterator[str]:
    """host:port of a search service backed by a real Lite0 extractor and PostgreSQL."""
    database = f"cli_{uuid.uuid4().hex[:12]}"
    await admin(postgres, f'CREATE DATABASE "{database}" TEMPLATE {TEMPLATE}')
    async with Stack() as stack:
        extractor = await stack.extractor(lite0_model_dir)
        search = await stack.search(postgres.dsn(database), extractor_address=address(extractor))
        yield address(search)
    await admin(postgres, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def admin(postgres: LocalPostgres, statement: str) -> None:
    connection = await asyncpg.connect(postgres.dsn("postgres"))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def first_index(server: str, album: Path) -> subprocess.CompletedProcess[str]:
    """The album indexed into the default collection; what the command said."""
    return await run_cli("index", str(album), server=server, cwd=album)


@pytest.fixture
def indexed(first_index: subprocess.CompletedProcess[str], server: str) -> str:
    assert first_index.returncode == 0, first_index.stderr
    return server


@on_module_loop
async def test_index_counts_images_and_skipped_files_and_stores_sidecar_metadata(
    indexed: str, first_index: subprocess.CompletedProcess[str]
) -> None:
    images = len(photos.available_photos())
    output = first_index.stdout
    assert counts(output) == {"created": images, "updated": 0, "unchanged": 0, "failed": 0}
    assert "skipped 2 non-image files" in output  # notes.txt, not-really.jpg; not the sidecar
    assert re.search(rf"^{images} images in [\d.]+ s \([\d.]+ images/s\)", output, re.M)

    async with grpc.aio.insecure_channel(indexed) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        stored = await stub.GetImage(search_pb2.GetImageRequest(key="animals/chelsea.png"))
    assert dict(stored.image.metadata) == {"album": "pets", "year": 2024}


@on_module_loop
async def test_rerun_uploads_nothing_and_reports_everything_unchanged(
    indexed: str, album: Path, tmp_path: Path
) -> None:
    images = len(photos.available_photos())
    again = await run_cli("index", str(album), server=indexed, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert counts(again.stdout) == {"created": 0, "updated": 0, "unchanged": images, "failed": 0}
    assert "uploaded 0.0 MB" in again.stdout
    # Without the check the bytes go up, and the server still recognises them.
    unchecked = await run_cli("index", "--no-check", str(album), server=indexed, cwd=tmp_path)
    assert unchecked.returncode == 0, unchecked.stderr
    assert counts(unchecked.stdout)["unchanged"] == images


@on_module_loop
async def test_resumes_a_partial_index_and_sees_changed_metadata(
    server: str, tmp_path: Path
) -> None:
    folder = write_album(tmp_path / "photos", ["chelsea", "coffee"])
    mapping = tmp_path / "metadata.json"
    mapping.write_text(json.dumps({"misc/coffee.png": {"album": "kitchen"}}))
    args = ("index", "--collection", "resume", "--metadata-file", str(mapping), str(folder))
    first = await run_cli(*args, server=server, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created collection 'resume'" in first.stdout
    write_album(folder, ["rocket"])
    mapping.write_text(json.dumps({"misc/coffee.png": {"album": "breakfast"}}))
    second = await run_cli(*args, server=server, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert counts(second.stdout) == {"created": 1, "updated": 1, "unchanged": 1, "failed": 0}


@on_module_loop
async def test_index_lists_each_failure_with_its_message_and_exits_1(
    server: str, tmp_path: Path
) -> None:
    folder = write_album(tmp_path / "photos", ["coffee"])
    # Starts like a JPEG, so it is sent; the extractor cannot decode it.
    (folder / "misc/truncated.jpg").write_bytes(photos.encode(photos.photo("coffee"))[:300])
    result = await run_cli(
        "index", "--collection", "broken", str(folder), server=server, cwd=tmp_path
    )
    assert result.returncode == 1
    assert counts(result.stdout) == {"created": 1, "updated": 0, "unchanged": 0, "failed": 1}
    failure = re.search(r"^  misc/truncated\.jpg: INVALID_ARGUMENT: .+$", result.stdout, re.M)
    assert failure, result.stdout


def table(output: str) -> list[list[str]]:
    """The rows of the ranked table: rank, key, distance, similarity."""
    return [line.split() for line in output.splitlines() if re.match(r"\s*\d+\s", line)]


@on_module_loop
async def test_search_of_transformed_copy_ranks_original_first_in_table_html_and_png(
    indexed: str, album: Path, tmp_path: Path
) -> None:
    query = tmp_path / "query.jpg"
    copy = photos.center_crop(photos.flipped(photos.photo("chelsea")), 0.85)
    query.write_bytes(photos.encode(copy.convert("RGB"), "JPEG"))
    html, png = tmp_path / "out.html", tmp_path / "out.png"
    result = await run_cli(
        "search", str(query), "--top-k", "5", "--root", str(album),
        "--html", str(html), "--png", str(png),
        server=indexed, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:4] == ["rank", "key", "distance", "similarity"]
    rows = table(result.stdout)
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    _, key, distance, similarity = rows[0]
    assert key == "animals/chelsea.png"
    assert 0 <= float(distance) < 1
    assert float(similarity) > 0.5

    page = html.read_text()
    assert page.index("1. animals/chelsea.png") < page.index("2. ")
    assert page.count('src="data:image/jpeg;base64,') == 6  # the query and five hits
    with Image.open(png) as sheet:
        sheet.verify()
    with Image.open(png) as sheet:
        assert sheet.format == "PNG"
        assert sheet.width > 900
        assert 200 < sheet.height < 1000


@on_module_loop
async def test_search_by_key_leaves_the_query_out_and_shows_missing_files(
    indexed: str, album: Path, tmp_path: Path
) -> None:
    # The folder as another machine sees it: one indexed file is not there.
    root = tmp_path / "copy"
    shutil.copytree(album, root, ignore=shutil.ignore_patterns("moon.png"))
    html = tmp_path / "hits.html"
    result = await run_cli(
        "search", "--key", "space/rocket.png", "--top-k", "50", "--root", str(root),
        "--html", str(html), server=indexed, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    keys = [row[1] for row in table(result.stdout)]
    assert "space/rocket.png" not in keys
    assert len(keys) == len(photos.available_photos()) - 1
    assert html.read_text().count("file not found") == 1  # the moon's placeholder


@on_module_loop
async def test_map_draws_every_indexed_image_on_a_png(
    indexed: str, album: Path, tmp_path: Path
) -> None:
    out = tmp_path / "map.png"
    result = await run_cli(
        "map", str(album), "--key", "misc/never-indexed.png", "--out", str(out),
        server=indexed, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    images = len(photos.available_photos())
    assert f"{images} images, 1 not indexed" in result.stdout
    with Image.open(out) as drawn:
        assert drawn.format == "PNG"
        assert drawn.size == (1600, 1200)
        pixels = np.asarray(drawn.convert("RGB"))
    painted = (pixels < 240).any(axis=2).mean()
    assert painted > 0.02  # twenty thumbnails, not a blank page


@on_module_loop
async def test_stats_delete_and_refit_for_the_operator(indexed: str, tmp_path: Path) -> None:
    images = len(photos.available_photos())
    stats = await run_cli("stats", server=indexed, cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert re.search(rf"^images\s+{images}$", stats.stdout, re.M)
    assert "efficientnet-lite0" in stats.stdout

    folder = write_album(tmp_path / "photos", ["chelsea", "coffee", "rocket", "astronaut", "moon"])
    ops = ("--collection", "ops")
    await run_cli("index", *ops, str(folder), server=indexed, cwd=tmp_path)
    deleted = await run_cli(
        "delete", *ops, "space/moon.png", "nope.png", server=indexed, cwd=tmp_path
    )
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted 1 from 'ops'" in deleted.stdout
    assert "not found: nope.png" in deleted.stderr

    refit = await run_cli(
        "refit", *ops, "--dimensions", "3", "--lists", "2", server=indexed, cwd=tmp_path
    )
    assert refit.returncode == 0, refit.stderr
    assert "v1 ready: 3 dimensions, 2 lists, fitted on 4 images" in refit.stdout
    listed = await run_cli("stats", "--all", server=indexed, cwd=tmp_path)
    assert re.search(r"^collection\s+ops\nimages\s+4\n", listed.stdout, re.M)
    fast = await run_cli(
        "search", *ops, "--key", "misc/coffee.png", "--mode", "fast", server=indexed, cwd=tmp_path
    )
    assert fast.returncode == 0, fast.stderr
    assert len(table(fast.stdout)) == 3


@on_module_loop
async def test_server_error_is_one_readable_line_and_exit_1(server: str, tmp_path: Path) -> None:
    result = await run_cli("search", "--key", "x", server=server, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "error: NOT_FOUND: key 'x' is not in collection 'default'\n"
    other = await run_cli("stats", "--collection", "nope", server=server, cwd=tmp_path)
    assert other.returncode == 1
    assert other.stderr == "error: NOT_FOUND: collection 'nope' does not exist\n"


def test_unreachable_server_says_where_and_how_to_start_it(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = cli("stats", server=address, cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: the search service at {address} is unreachable")
    assert "make run" in line


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = cli("search", server="127.0.0.1:1", cwd=tmp_path)
    assert result.returncode == 2
    assert "one of the arguments image --key is required" in result.stderr


def test_version_is_pyprojects(tmp_path: Path) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    shown = cli("--version", server="127.0.0.1:1", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"imagesearch {pyproject['project']['version']}"
