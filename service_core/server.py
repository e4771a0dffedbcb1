"""Builds a grpc.aio server with health, reflection, metrics, tracing and its interceptors."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_channelz.v1 import channelz
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service_core import reflection
from service_core.access_log import AccessLogInterceptor
from service_core.auth import Role, access_interceptors
from service_core.interceptor import ErrorInterceptor
from service_core.metrics import Metrics, MetricsEndpoint
from service_core.settings import ServerSettings
from service_core.shedding import Budget, SheddingInterceptor
from service_core.tls import server_credentials
from service_core.tracing import Tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """One gRPC service to mount: its full name and the generated add_*_to_server call."""

    name: str
    register: Callable[[grpc.aio.Server], None]
    # Method name (e.g. "Search") -> the least role that may call it; see auth.py.
    roles: Mapping[str, Role] = field(default_factory=dict)


# The health service name a liveness probe asks for: SERVING from the moment the
# server listens until it shuts down, whatever its dependencies do, so that a
# database outage takes pods out of rotation (readiness) without restarting them.
LIVENESS_SERVICE = "liveness"
_CHANNELZ_SERVICE = "grpc.channelz.v1.Channelz"


class PortInUse(RuntimeError):
    """The address to listen on is taken (or not this host's); start-up stops."""


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def connection_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Connection life-cycle options: recycling so clients re-resolve, and keepalive.

    gRPC clients re-resolve a name only when a connection drops, so without a
    maximum age new replicas behind a DNS name never get traffic. SO_REUSEPORT
    (gRPC's default) would let a second server share a port silently.
    """
    options = [
        ("grpc.so_reuseport", 0),
        # Clients may ping this often, even between calls, without being cut off
        # for "too many pings" (the default allows one per five minutes).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.max_connection_age_s:
        options += [
            ("grpc.max_connection_age_ms", _ms(settings.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace_s)),
        ]
    if settings.keepalive_time_s:
        options += [
            ("grpc.keepalive_time_ms", _ms(settings.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_s)),
        ]
    return options


class GrpcServer:
    """A started server. Health says NOT_SERVING until ``set_serving()``."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: Any,  # grpc_health.v1.health.aio.HealthServicer (untyped)
        service_names: Sequence[str],
        metrics: MetricsEndpoint | None,
        health_only: tuple[grpc.aio.Server, int] | None = None,
        channelz_only: tuple[grpc.aio.Server, int] | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self._health_only = health_only
        self.health_port = health_only[1] if health_only else None
        self._channelz_only = channelz_only
        self.channelz_port = channelz_only[1] if channelz_only else None
        self.metrics_port = metrics.port if metrics else None
        self._health = health_servicer
        self._names = service_names
        self._metrics = metrics

    async def set_serving(self, serving: bool = True) -> None:
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._names]:  # "" is the server as a whole
            await self._health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Health to NOT_SERVING, then lets in-flight calls finish for ``grace`` s."""
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self._health_only:
            await self._health_only[0].stop(0)
        if self._channelz_only:
            await self._channelz_only[0].stop(0)
        if self._metrics:
            await asyncio.to_thread(self._metrics.close)


async def create_server(
    settings: ServerSettings,
    services: Sequence[Service],
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> GrpcServer:
    """Builds, binds and starts a server for ``services``; it reports NOT_SERVING.

    ``metrics`` holds the registry /metrics serves, with whatever the services
    registered on it; without one the server gets a registry of its own. ``tracing``
    off (the default) installs no tracing interceptor at all.
    """
    metrics = metrics or Metrics()
    tracing = tracing or Tracing()
    limit = settings.max_message_bytes
    budget = Budget(
        max_calls=settings.max_calls_in_flight, max_bytes=settings.max_request_bytes_in_flight
    )
    shedding = SheddingInterceptor(budget, exempt=[health.SERVICE_NAME, *reflection.SERVICE_NAMES])
    server = grpc.aio.server(
        # Outermost first: the call's span, then its request id and access-log line, so
        # both cover every status the inner ones give. Callers are authenticated before
        # they count against the shedding budget.
        interceptors=[
            *tracing.server_interceptors(),
            AccessLogInterceptor(settings.access_log_sample_rate, traced=tracing.enabled),
            ErrorInterceptor(metrics.server),
            *access_interceptors(settings, services),
            shedding,
        ],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            *connection_options(settings),
        ],
    )
    for service in services:
        service.register(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.name for s in services]
    if settings.reflection != "off":
        reflection.enable_reflection([*names, health.SERVICE_NAME], server)
    credentials = server_credentials(settings)
    address = f"{settings.host}:{settings.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:  # grpc's "Failed to bind to address ..."
        raise PortInUse(
            f"cannot listen on {address}: port {settings.port} is already in use "
            f"(or {settings.host} is not an address of this host)"
        ) from error
    channelz_only = await _channelz_server(settings) if settings.channelz_port >= 0 else None
    endpoint = None
    if settings.metrics_port >= 0:
        endpoint = MetricsEndpoint(metrics.registry, settings.host, settings.metrics_port)
    await server.start()
    health_only = None
    if settings.health_port >= 0:
        # Kubelet gRPC probes speak plaintext only: with TLS on the main port they get a
        # port of their own that serves nothing but health.
        probes = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probes)
        bound = probes.add_insecure_port(f"{settings.host}:{settings.health_port}")
        await probes.start()
        health_only = (probes, bound)
    started = GrpcServer(server, port, health_servicer, names, endpoint, health_only, channelz_only)
    await started.set_serving(False)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "listening",
        extra={
            "address": f"{settings.host}:{port}",
            "metrics_port": started.metrics_port,
            "health_port": started.health_port,
            "channelz_port": started.channelz_port,
            "tracing": tracing.enabled,
            "tls": "mtls" if settings.tls_client_ca_file else "tls" if credentials else "off",
            "auth": settings.auth_file is not None,
        },
    )
    return started


async def _channelz_server(settings: ServerSettings) -> tuple[grpc.aio.Server, int]:
    """A plaintext admin server with channelz (and reflection, for grpcurl).

    Channelz tells of every channel and server of the process, peers' addresses
    included, and takes no credentials: it listens on the loopback address only,
    reached with ``kubectl port-forward``.
    """
    admin = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    channelz.add_channelz_servicer(admin)  # type: ignore[arg-type] # it takes aio servers too
    reflection.enable_reflection([_CHANNELZ_SERVICE], admin)
    try:
        bound = admin.add_insecure_port(f"127.0.0.1:{settings.channelz_port}")
    except RuntimeError as error:
        raise PortInUse(
            f"cannot listen on 127.0.0.1:{settings.channelz_port} for channelz: "
            "the port is already in use"
        ) from error
    await admin.start()
    return admin, bound


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def watch_signals() -> asyncio.Future[signal.Signals]:
    """A future that the first SIGTERM or SIGINT completes.

    The handlers stay installed until ``unwatch_signals()``: a second signal during
    the graceful drain (Ctrl-C reaches a whole process group, and a supervisor may
    forward SIGTERM as well) is logged instead of killing the process mid-drain.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if received.done():
            log.info("already shutting down", extra={"signal": sig.name})
        else:
            received.set_result(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    return received


def unwatch_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)


class App:
    """A service process: starts its server, becomes ready, stops in order.

    Subclasses build their server in ``start`` and override ``become_ready`` (load a
    model, open a pool) and ``close`` (release what ``become_ready`` took). Readiness
    work runs after the server listens, so health answers NOT_SERVING meanwhile.
    """

    def __init__(self, settings: ServerSettings, tracing: Tracing | None = None) -> None:
        self.settings = settings
        # Subclasses register their own metrics on this registry, which the server serves.
        self.metrics = Metrics()
        # Owned by whoever made it (the process's main, a test): never shut down here.
        self.tracing = tracing or Tracing()
        self.server: GrpcServer | None = None
        self.ready_task: asyncio.Task[None] | None = None

    def services(self) -> Sequence[Service]:
        raise NotImplementedError

    async def become_ready(self) -> None:
        """Acquires what the servicers need; the server turns SERVING after it."""

    async def close(self) -> None:
        """Releases what ``become_ready`` acquired, after the server has stopped."""

    async def start(self) -> GrpcServer:
        self.server = await create_server(
            self.settings, self.services(), metrics=self.metrics, tracing=self.tracing
        )
        self.ready_task = asyncio.create_task(self._ready())
        return self.server

    async def wait_ready(self) -> None:
        if self.ready_task:
            await asyncio.shield(self.ready_task)

    async def stop(self) -> None:
        """Health to NOT_SERVING, drain for the grace period, then release resources."""
        if self.ready_task and not self.ready_task.done():
            self.ready_task.cancel()
        if self.server:
            await self.server.stop(self.settings.grace_period_s)
        await self.close()

    async def _ready(self) -> None:
        await self.become_ready()
        assert self.server is not None
        await self.server.set_serving(True)
        log.info("serving", extra={"port": self.server.port})


async def run_until_signal(app: App) -> int:
    """Runs ``app`` until SIGTERM or SIGINT, then shuts it down gracefully.

    Returns the process exit status: 0 after a signal, 1 when the app could not
    become ready (the reason is logged).
    """
    stop_signal = watch_signals()
    try:
        try:
            await app.start()
        except PortInUse as error:
            log.error("%s", error)
            return 1
        assert app.ready_task is not None
        either: set[asyncio.Future[Any]] = {stop_signal, app.ready_task}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if app.ready_task.done() and (failure := app.ready_task.exception()):
            log.error("could not become ready: %s", failure)
            return 1
        received = await stop_signal
        log.info("shutting down", extra={"signal": received.name})
        return 0
    finally:
        await app.stop()
        log.info("stopped")
        unwatch_signals()
