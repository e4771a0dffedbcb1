"""The images' HEALTHCHECK script against a real server of the project's gRPC bootstrap."""

from __future__ import annotations

import asyncio
import sys

from service_core.server import create_server
from service_core.settings import ServerSettings
from tests.deploy.conftest import DEPLOY

SCRIPT = DEPLOY / "docker" / "healthcheck.py"


async def healthcheck(environ: dict[str, str], *args: str) -> tuple[int, str]:
    """Runs the script as the image does; its exit status and what it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_healthy_only_while_the_server_says_serving() -> None:
    server = await create_server(ServerSettings(port=0), [])
    environ = {"EXTRACTOR_PORT": str(server.port)}
    try:
        # A server that is up but not ready (model loading) is not healthy.
        status, output = await healthcheck(environ, "EXTRACTOR_PORT")
        assert (status, output.strip()) == (1, f"unhealthy: port {server.port}: NOT_SERVING")
        await server.set_serving(True)
        assert await healthcheck(environ, "EXTRACTOR_PORT") == (0, "")
    finally:
        await server.stop(0)
    status, output = await healthcheck(environ, "EXTRACTOR_PORT")
    assert status == 1
    assert "UNAVAILABLE" in output


async def test_a_missing_or_dynamic_port_is_unhealthy() -> None:
    status, output = await healthcheck({}, "SEARCH_PORT")
    assert status == 1
    assert "SEARCH_PORT=''" in output
    status, output = await healthcheck({"SEARCH_PORT": "0"}, "SEARCH_PORT")
    assert status == 1
    assert "fixed gRPC port" in output
    status, output = await healthcheck({})
    assert status == 1
    assert "usage" in output
