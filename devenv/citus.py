"""A local Citus cluster (a coordinator and two workers) for development and tests.

Three local PostgreSQL clusters (devenv.postgres) side by side under one directory
(``.data/citus`` by default), each with ``shared_preload_libraries = 'citus'``. Citus
keeps its metadata per database, so a database exists on every node, has the citus
extension on every node, and lists the workers on the coordinator.
Citus is in neither Debian nor PyPI: ../shared/citus/install.sh builds it.

    python -m devenv.citus start [--data-dir DIR]   # prints the coordinator's DSN
    python -m devenv.citus stop|status|dsn [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from devenv.postgres import DEFAULT_DATABASE, LocalPostgres, PostgresError, act

DEFAULT_DATA_DIR = Path(".data/citus")
WORKERS = 2
# Four shards per worker: room to add workers and rebalance onto them, while each query's
# fan-out stays small on a laptop; and enough cached connections per worker that a query
# reaches its shards on connections already open (1, Citus's default, opens and closes
# the rest on every query). Measured: docs/scaling.md.
SHARDING = {"citus.shard_count": "8", "citus.max_cached_conns_per_worker": "4"}
INSTALL_HINT = "build and install it with: sudo ../shared/citus/install.sh"


class LocalCitus:
    """A coordinator and its workers, each a LocalPostgres in a directory of its own."""

    def __init__(self, data_dir: Path, *, durable: bool = True, workers: int = WORKERS) -> None:
        self.data_dir = data_dir.resolve()
        self.coordinator = self._node("coordinator", durable)
        self.workers = [self._node(f"worker{n}", durable) for n in range(1, workers + 1)]

    def _node(self, name: str, durable: bool) -> LocalPostgres:
        # The nodes talk over loopback in plaintext: with libpq's default (sslmode=prefer)
        # a server run under root's environment tries to read root's client certificate.
        settings = {"citus.node_conninfo": "sslmode=disable"} | SHARDING
        return LocalPostgres(
            self.data_dir / name, durable=durable, preload=("citus",), settings=settings
        )

    @property
    def nodes(self) -> list[LocalPostgres]:
        return [self.coordinator, *self.workers]

    def dsn(self, database: str = DEFAULT_DATABASE) -> str:
        return self.coordinator.dsn(database)

    def is_running(self) -> bool:
        return all(node.is_running() for node in self.nodes)

    def start(self) -> str:
        """Creates and starts every node, registers the workers; returns the coordinator's DSN."""
        # Checked first: a server told to preload a library it lacks does not start.
        if not (self.coordinator.bindir.parent / "lib" / "citus.so").exists():
            raise PostgresError(
                f"the citus extension is missing from {self.coordinator.bindir.parent}; "
                f"{INSTALL_HINT}"
            )
        # Workers first: the coordinator's database lists them once they answer.
        for node in [*self.workers, self.coordinator]:
            node.start()
        self.register(DEFAULT_DATABASE)
        return self.dsn()

    def stop(self) -> None:
        for node in [self.coordinator, *self.workers]:
            node.stop()

    def register(self, database: str) -> None:
        """Lists the workers in ``database`` on the coordinator (idempotent)."""
        self.coordinator.psql("; ".join(self.registration()), database)

    def registration(self) -> list[str]:
        """What ``register`` runs (the tests run it over asyncpg)."""
        return [
            f"SELECT citus_set_coordinator_host('127.0.0.1', {self.coordinator.port})",
            *(f"SELECT citus_add_node('127.0.0.1', {w.port})" for w in self.workers),
        ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Manage the local Citus cluster.")
    parser.add_argument("action", choices=["start", "stop", "status", "dsn"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("IMAGESEARCH_CITUSDATA", DEFAULT_DATA_DIR)),
    )
    options = parser.parse_args(argv)
    cluster = LocalCitus(options.data_dir)
    act(options.action, cluster, start=cluster.start)


if __name__ == "__main__":
    main()
