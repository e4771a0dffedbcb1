"""The project's own local PostgreSQL cluster, as `make run` uses it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.postgres import LocalPostgres


@pytest.fixture
def data_dir() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="imagesearch-devpg-"))
    parent.chmod(0o755)  # reachable by the unprivileged user PostgreSQL runs as under root
    yield parent / "data"
    cluster = LocalPostgres(parent / "data")
    cluster.stop()
    shutil.rmtree(parent, ignore_errors=True)


def test_cluster_has_cube_listens_on_loopback_and_keeps_data_across_restarts(
    data_dir: Path,
) -> None:
    cluster = LocalPostgres(data_dir)
    dsn = cluster.start()
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert (
        cluster.psql("SELECT cube_distance(cube(array[0,0]), cube(array[3,4]))", "imagesearch")
        == "5"
    )
    assert cluster.psql("SHOW listen_addresses") == "127.0.0.1"
    cluster.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)", "imagesearch")

    cluster.stop()
    assert not cluster.is_running()
    again = LocalPostgres(data_dir)
    assert again.start() == dsn  # same port, same cluster
    assert again.psql("SELECT x FROM kept", "imagesearch") == "42"
