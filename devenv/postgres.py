"""A local PostgreSQL cluster for development and tests, run from the system's binaries.

The cluster lives in a directory of its own (``.data/postgres`` by default), listens
on loopback only with trust authentication, and has the ``cube`` extension in its
databases. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user (or ``nobody``), which must be able to reach the directory.

    python -m devenv.postgres start [--data-dir DIR] [--port N]   # prints the DSN
    python -m devenv.postgres stop|status|dsn [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

INSTALL_HINT = "install them with: apt-get install postgresql postgresql-contrib"
DEFAULT_DATA_DIR = Path(".data/postgres")
DEFAULT_DATABASE = "imagesearch"
SUPERUSER = "postgres"


class PostgresError(RuntimeError):
    """The local cluster cannot be set up; the message says what to do."""


def find_bindir() -> Path:
    """The directory of the newest installed server binaries (initdb, pg_ctl, postgres)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    on_path = shutil.which("pg_ctl")
    if candidates and (Path(candidates[-1]) / "initdb").exists():
        return Path(candidates[-1])
    if on_path and (Path(on_path).resolve().parent / "initdb").exists():
        return Path(on_path).resolve().parent
    raise PostgresError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT}")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalPostgres:
    """One cluster directory: create it, start it, stop it, name its DSN."""

    def __init__(
        self,
        data_dir: Path,
        *,
        durable: bool = True,
        preload: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.durable = durable
        # Extensions that need shared_preload_libraries (citus); created in each database.
        self.preload = tuple(preload)
        self.settings = dict(settings or {})
        self.bindir = find_bindir()
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None

    @property
    def port(self) -> int:
        conf = (self.data_dir / "postgresql.auto.conf").read_text()
        match = re.search(r"^port = '?(\d+)'?$", conf, re.MULTILINE)
        if not match:
            raise PostgresError(f"no port in {self.data_dir}/postgresql.auto.conf")
        return int(match.group(1))

    def dsn(self, database: str = DEFAULT_DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        status = self._run(["pg_ctl", "status", "-D", str(self.data_dir)], check=False)
        return status.returncode == 0

    def start(self, port: int | None = None) -> str:
        """Creates the cluster if needed, starts it if stopped; returns the DSN."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._init(port or free_port())
        if not self.is_running():
            log_file = self.data_dir / "server.log"
            self._run(
                [
                    "pg_ctl",
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(log_file),
                    "-w",
                    "-t",
                    "60",
                ],
                failure=f"PostgreSQL did not start; see {log_file}",
            )
            self._ensure_database()
        return self.dsn()

    def stop(self) -> None:
        if self.is_running():
            self._run(["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w"])

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Runs ``sql`` through psql and returns its unaligned output."""
        result = self._run(
            [
                "psql",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(database),
                "-c",
                sql,
            ],
            failure="psql failed",
        )
        return result.stdout.strip()

    def _init(self, port: int) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            os.chown(self.data_dir, self._run_as.pw_uid, self._run_as.pw_gid)
            reachable = self._run(["test", "-w", str(self.data_dir)], check=False)
            if reachable.returncode != 0:
                raise PostgresError(
                    f"{self.data_dir} is not reachable by the '{self._run_as.pw_name}' user "
                    "that runs PostgreSQL under root; choose a data directory whose parents "
                    "it can enter (e.g. under /tmp)"
                )
        self._run(
            [
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ],
            failure="initdb failed",
        )
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.data_dir),
        }
        if self.preload:
            settings["shared_preload_libraries"] = ",".join(self.preload)
        if not self.durable:  # throwaway test clusters: skip the disk flushes
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        settings |= self.settings
        conf = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        with (self.data_dir / "postgresql.auto.conf").open("a") as auto_conf:
            auto_conf.write(conf)

    def _ensure_database(self) -> None:
        available = self.psql("SELECT count(*) FROM pg_available_extensions WHERE name = 'cube'")
        if available != "1":
            raise PostgresError(
                f"the PostgreSQL 'cube' extension is missing from {self.bindir.parent}; "
                f"{INSTALL_HINT}"
            )
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DEFAULT_DATABASE}'"  # noqa: S608
        exists = self.psql(query)
        if exists != "1":
            self.psql(f"CREATE DATABASE {DEFAULT_DATABASE}")
        # Only those missing: a Citus worker refuses even a CREATE EXTENSION IF NOT EXISTS.
        present = self.psql("SELECT extname FROM pg_extension", DEFAULT_DATABASE).split()
        for extension in [*self.preload, "cube"]:
            if extension not in present:
                self.psql(f"CREATE EXTENSION {extension}", DEFAULT_DATABASE)

    def _run(
        self, argv: list[str], *, check: bool = True, failure: str = ""
    ) -> subprocess.CompletedProcess[str]:
        binary = self.bindir / argv[0]
        command = [str(binary) if binary.exists() else argv[0], *argv[1:]]
        user = self._run_as
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            cwd="/",
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise PostgresError(f"{failure or argv[0] + ' failed'}: {' / '.join(detail)}")
        return result


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Manage the local PostgreSQL cluster.")
    parser.add_argument("action", choices=["start", "stop", "status", "dsn"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("IMAGESEARCH_PGDATA", DEFAULT_DATA_DIR)),
    )
    parser.add_argument("--port", type=int, default=None, help="port for a new cluster")
    options = parser.parse_args(argv)
    cluster = LocalPostgres(options.data_dir)
    act(options.action, cluster, start=lambda: cluster.start(options.port))


class Cluster(Protocol):
    """What ``act`` manages: a LocalPostgres, or a LocalCitus of several."""

    data_dir: Path

    def stop(self) -> None: ...

    def is_running(self) -> bool: ...

    def dsn(self) -> str: ...


def act(action: str, cluster: Cluster, *, start: Callable[[], str]) -> None:
    """Does a command line's ``action`` (start, stop, status, dsn) to ``cluster``: what
    it prints, and its exit status (3: status found it stopped)."""
    try:
        if action == "start":
            print(start())
        elif action == "stop":
            cluster.stop()
        elif action == "status":
            running = cluster.is_running()
            print(f"{'running' if running else 'stopped'}: {cluster.data_dir}")
            sys.exit(0 if running else 3)
        else:
            print(cluster.dsn())
    except PostgresError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
