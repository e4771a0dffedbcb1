"""Starts the system: both servers in this process for tests, or as subprocesses.

In process (the tests): ``Stack`` starts an ExtractorApp and SearchApps on port 0,
hands out channels and stubs to them, and stops everything newest first.

As subprocesses (``make run``, the evaluation, the benchmarks): ``spawn`` runs
``python -m extractor_service`` or ``python -m search_service`` with its settings as
environment variables, ``wait_serving`` waits for a server's health service to say
SERVING, and ``stop_all`` drains the children.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extractor_service.app import ExtractorApp
from extractor_service.settings import ENV_PREFIX as EXTRACTOR_PREFIX
from extractor_service.settings import ExtractorSettings
from imagesearch.extractor.v1 import extractor_pb2_grpc
from imagesearch.search.v1 import search_pb2_grpc
from search_service.app import SearchApp
from search_service.settings import ENV_PREFIX as SEARCH_PREFIX
from search_service.settings import SearchSettings
from service_core.server import App
from service_core.tracing import Tracing

if TYPE_CHECKING:
    SearchStub: TypeAlias = search_pb2_grpc.SearchServiceAsyncStub
    ExtractorStub: TypeAlias = extractor_pb2_grpc.ExtractorServiceAsyncStub
else:  # the async stub types exist in the generated .pyi only
    SearchStub = ExtractorStub = Any

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
# Tests and throwaway stacks stop at once; nothing is in flight when they stop.
_QUICK: dict[str, Any] = {"grace_period_s": 0}
Service = Literal["extractor", "search"]
_PREFIXES: dict[Service, str] = {"extractor": EXTRACTOR_PREFIX, "search": SEARCH_PREFIX}
_App = TypeVar("_App", bound=App)
ChannelOption = tuple[str, Any]


def address(app: App) -> str:
    """host:port of a started app's gRPC server."""
    if app.server is None:
        raise RuntimeError(f"{type(app).__name__} is not started")
    return f"127.0.0.1:{app.server.port}"


class Stack:
    """Servers started in this process, with the channels opened to them.

    ``close()`` (or leaving ``async with``) closes the channels, then stops the apps
    in the reverse order of their start: the search services before the extractor
    they call. Every app reports its spans to ``tracing`` (off unless given); the
    stack does not shut it down.
    """

    def __init__(self, tracing: Tracing | None = None) -> None:
        self._tracing = tracing or Tracing()
        self._apps: list[App] = []
        self._channels: list[grpc.aio.Channel] = []

    async def extractor(
        self, model_dir: Path, *, ready: bool = True, **overrides: Any
    ) -> ExtractorApp:
        """An ExtractorApp serving ``model_dir`` on a free port; ``overrides`` are settings."""
        settings = ExtractorSettings(**{"model_dir": model_dir, **_QUICK, **overrides})
        app = ExtractorApp(settings, self._tracing)
        return await self._start(app, ready)

    async def search(self, database_url: str, *, ready: bool = True, **overrides: Any) -> SearchApp:
        """A SearchApp on ``database_url`` on a free port; ``overrides`` are settings
        (``extractor_address=address(extractor)`` wires it to an extractor)."""
        settings = SearchSettings(**{"database_url": database_url, **_QUICK, **overrides})
        app = SearchApp(settings, self._tracing)
        return await self._start(app, ready)

    def channel(self, target: App | str, options: Sequence[ChannelOption] = ()) -> grpc.aio.Channel:
        """A channel to an app of this stack (or an address), closed with the stack."""
        where = target if isinstance(target, str) else address(target)
        channel = grpc.aio.insecure_channel(where, options=list(options))
        self._channels.append(channel)
        return channel

    def search_stub(
        self, target: SearchApp | str, options: Sequence[ChannelOption] = ()
    ) -> SearchStub:
        return search_pb2_grpc.SearchServiceStub(self.channel(target, options))

    def extractor_stub(
        self, target: ExtractorApp | str, options: Sequence[ChannelOption] = ()
    ) -> ExtractorStub:
        return extractor_pb2_grpc.ExtractorServiceStub(self.channel(target, options))

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close(None)
        apps, self._apps = self._apps, []
        for app in reversed(apps):
            await app.stop()

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start(self, app: _App, ready: bool) -> _App:
        await app.start()
        self._apps.append(app)  # stopped with the stack even if it never becomes ready
        if ready:
            await app.wait_ready()
        return app


# -- subprocesses -----------------------------------------------------------------------


def spawn(
    service: Service,
    settings: Mapping[str, object],
    *,
    log: IO[bytes] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m <service>_service`` with ``settings`` as its environment variables
    (``{"port": 50051}`` sets EXTRACTOR_PORT); output to ``log``, else inherited."""
    prefix = _PREFIXES[service]
    env = os.environ | {f"{prefix}{name.upper()}": str(value) for name, value in settings.items()}
    return subprocess.Popen(
        [sys.executable, "-m", f"{service}_service"], env=env, stdout=log, stderr=log, cwd=cwd
    )


async def wait_serving(
    target: str | grpc.aio.Channel,
    process: subprocess.Popen[bytes] | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Returns once the server at ``target`` (an address or a channel) reports SERVING on
    its health service; fails early when ``process``, the server, exits meanwhile."""
    if isinstance(target, str):
        async with grpc.aio.insecure_channel(target) as channel:
            await _wait_serving(channel, target, process, timeout_s)
    else:
        await _wait_serving(target, "the server", process, timeout_s)


async def _wait_serving(
    channel: grpc.aio.Channel,
    name: str,
    process: subprocess.Popen[bytes] | None,
    timeout_s: float,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{_describe(process)} exited with {process.returncode}")
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass  # not listening yet
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{name} did not report SERVING within {timeout_s:.0f} s")


def stop_all(
    children: Iterable[subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """SIGTERM to every child still running, then waits for each; kills what outlasts
    ``timeout_s``. The services drain in-flight calls on SIGTERM."""
    children = list(children)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _describe(process: subprocess.Popen[bytes]) -> str:
    args = process.args
    return " ".join(map(str, args[1:])) if isinstance(args, list) else str(args)
