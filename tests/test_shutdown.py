"""A real server process stops gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

GRACE_S = 3.0


async def start_process(*argv: str) -> tuple[asyncio.subprocess.Process, int]:
    """Starts ``python -m <argv>`` and returns it with the port its log announces."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        "--grace-period-s",
        str(GRACE_S),
        "--log-format",
        "json",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while line := await process.stderr.readline():
            entry = json.loads(line)
            if entry["msg"] == "listening":
                return process, int(entry["address"].rsplit(":", 1)[1])
    pytest.fail(f"{argv[1]} exited with {await process.wait()} before listening")


@pytest.mark.parametrize("service", ["search_service", "extractor_service"])
async def test_sigterm_flips_health_then_exits_zero_within_grace(
    service: str, database_url: str, lite0_model_dir: Path
) -> None:
    argv = ["-m", service]
    if service == "search_service":
        argv += ["--database-url", database_url]
    else:
        argv += ["--model-dir", str(lite0_model_dir)]
    process, port = await start_process(*argv)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")
            )
            statuses = aiter(watch)
            async with asyncio.timeout(30):
                while (await anext(statuses)).status != health_pb2.HealthCheckResponse.SERVING:
                    pass
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            async with asyncio.timeout(GRACE_S):
                update = await anext(statuses)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # Ctrl-C reaches a whole process group, and supervisors forward SIGTERM too:
            # a second signal during the drain must not kill the process.
            process.send_signal(signal.SIGINT)
            await asyncio.sleep(0.3)
            assert process.returncode is None
            watch.cancel()  # the watch was the last call in flight
        async with asyncio.timeout(GRACE_S + 2):
            status = await process.wait()
        assert status == 0
        assert time.monotonic() - signalled < GRACE_S + 2
    except BaseException:
        if process.returncode is None:
            process.kill()
        assert process.stderr is not None
        print((await process.stderr.read()).decode()[-4000:])  # shown with the failure
        raise
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
