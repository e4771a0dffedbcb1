"""The system under test: PostgreSQL and both services as subprocesses, or given addresses."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from devenv.postgres import LocalPostgres, free_port
from devenv.stack import Service, spawn, stop_all, wait_serving

_START_TIMEOUT_S = 180.0


def export_lite0(out: Path, log: IO[bytes]) -> Path:
    """EfficientNet-Lite0 with its real weights in ``out`` (kept when already current)."""
    command = [sys.executable, "-m", "extractor_service.export", "--model", "efficientnet-lite0"]
    result = subprocess.run([*command, "--out", str(out)], stdout=log, stderr=log, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"exporting EfficientNet-Lite0 failed; see {log.name}")
    return out


class LocalStack:
    """A throwaway PostgreSQL cluster, and one extractor + search service pair at a time."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        # Under /tmp and world-readable: as root, PostgreSQL runs as another user, which
        # must be able to enter the directory.
        self._pg_root = Path(tempfile.mkdtemp(prefix="imagesearch-eval-pg-"))
        self._pg_root.chmod(0o755)
        self._postgres = LocalPostgres(self._pg_root / "data", durable=False)
        self._children: list[subprocess.Popen[bytes]] = []
        self.dsn = ""

    def start_database(self) -> str:
        self.dsn = self._postgres.start()
        return self.dsn

    async def start_services(self, model_dir: Path, tag: str) -> tuple[str, str]:
        """Starts an extractor serving ``model_dir`` and a search service using it; returns
        (search address, extractor address) once both report SERVING."""
        self.stop_services()
        extractor_port, search_port = free_port(), free_port()
        extractor = f"127.0.0.1:{extractor_port}"
        search = f"127.0.0.1:{search_port}"
        self._spawn(
            "extractor",
            tag,
            {"port": extractor_port, "model_dir": model_dir, "log_level": "WARNING"},
        )
        self._spawn(
            "search",
            tag,
            {
                "port": search_port,
                "database_url": self.dsn,
                "extractor_address": extractor,
                # Projections come only from the evaluation's RefitProjection calls.
                "auto_fit_threshold": 10**9,
                "log_level": "WARNING",
            },
        )
        extractor_process, search_process = self._children[-2:]
        await asyncio.gather(
            wait_serving(extractor, extractor_process), wait_serving(search, search_process)
        )
        return search, extractor

    def stop_services(self) -> None:
        stop_all(self._children)
        self._children.clear()

    def close(self) -> None:
        self.stop_services()
        self._postgres.stop()
        shutil.rmtree(self._pg_root, ignore_errors=True)

    def _spawn(self, service: Service, tag: str, settings: dict[str, object]) -> None:
        quick: dict[str, object] = {"grace_period_s": 0, "log_format": "text"}
        with (self._log_dir / f"{service}_service-{tag}.log").open("ab") as log:
            # The child holds its own copy of the log file.
            self._children.append(spawn(service, quick | settings, log=log))
