"""The system under test: PostgreSQL and both services as subprocesses, or given addresses."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devenv.postgres import LocalPostgres, free_port

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
            "extractor_service",
            tag,
            {
                "EXTRACTOR_PORT": str(extractor_port),
                "EXTRACTOR_MODEL_DIR": str(model_dir),
                "EXTRACTOR_GRACE_PERIOD_S": "0",
                "EXTRACTOR_LOG_LEVEL": "WARNING",
            },
        )
        self._spawn(
            "search_service",
            tag,
            {
                "SEARCH_PORT": str(search_port),
                "SEARCH_DATABASE_URL": self.dsn,
                "SEARCH_EXTRACTOR_ADDRESS": extractor,
                # Projections come only from the evaluation's RefitProjection calls.
                "SEARCH_AUTO_FIT_THRESHOLD": str(10**9),
                "SEARCH_GRACE_PERIOD_S": "0",
                "SEARCH_LOG_LEVEL": "WARNING",
            },
        )
        await asyncio.gather(wait_serving(extractor), wait_serving(search))
        for child in self._children:
            if child.poll() is not None:
                raise RuntimeError(f"a service exited with {child.returncode}; see {self._log_dir}")
        return search, extractor

    def stop_services(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children.clear()

    def close(self) -> None:
        self.stop_services()
        self._postgres.stop()
        shutil.rmtree(self._pg_root, ignore_errors=True)

    def _spawn(self, module: str, tag: str, env: dict[str, str]) -> None:
        log = (self._log_dir / f"{module}-{tag}.log").open("ab")
        child = subprocess.Popen(
            [sys.executable, "-m", module, "--log-format", "text"],
            env=os.environ | env,
            stdout=log,
            stderr=log,
        )
        log.close()  # the child holds its own copy
        self._children.append(child)


async def wait_serving(address: str, timeout_s: float = _START_TIMEOUT_S) -> None:
    """Returns once the server at ``address`` reports SERVING on its health service."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{address} did not report SERVING within {timeout_s:.0f} s")
