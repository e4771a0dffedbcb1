"""Prometheus metrics, one registry per server: gRPC calls, the process, served over HTTP.

The gRPC metrics carry go-grpc-prometheus's names and labels, so that the standard
gRPC dashboards and alerts match them. py-grpc-prometheus, the Python port, has
interceptors for the synchronous server only (its asyncio support, issue #13, is
open), so the few lines that count calls are written here, for grpc.aio.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Literal, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

# Latency buckets from 1 ms to 60 s: a search answers in milliseconds, a batch of
# VGG16 embeddings on a CPU in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# go-grpc-prometheus's grpc_type values: whether the request, the response, or both stream.
RpcType = Literal["unary", "client_stream", "server_stream", "bidi_stream"]
Side = Literal["server", "client"]
_T = TypeVar("_T")


def rpc_type(*, request_streams: bool, response_streams: bool) -> RpcType:
    if request_streams:
        return "bidi_stream" if response_streams else "client_stream"
    return "server_stream" if response_streams else "unary"


def _names(method: str) -> tuple[str, str]:
    """Splits '/pkg.Service/Method' into its service and method names."""
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "", method)
    return service, name


class MethodMetrics:
    """One method's label children, looked up once: a call costs a few increments."""

    def __init__(self, rpcs: RpcMetrics, labels: tuple[str, str, str]) -> None:
        self._handled = rpcs.handled_total
        self._labels = labels
        self._codes: dict[grpc.StatusCode, Counter] = {}
        self.started_total = rpcs.started_total.labels(*labels)
        self.handling_seconds = rpcs.handling_seconds.labels(*labels)
        self.received_total = rpcs.received_total.labels(*labels)
        self.sent_total = rpcs.sent_total.labels(*labels)

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._handled.labels(*self._labels, code.name)
        child.inc()
        self.handling_seconds.observe(seconds)

    async def counted(self, messages: AsyncIterator[_T], counter: Counter) -> AsyncIterator[_T]:
        """``messages``, each counted by ``counter`` as it passes."""
        async for message in messages:
            counter.inc()
            yield message


class RpcMetrics:
    """The five go-grpc-prometheus metrics of one side (server or client) of calls."""

    def __init__(self, side: Side, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        peer = "client" if side == "server" else "server"
        self.started_total = Counter(
            f"grpc_{side}_started_total", f"RPCs started on the {side}.", labels, registry=registry
        )
        self.handled_total = Counter(
            f"grpc_{side}_handled_total",
            f"RPCs completed on the {side}, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.handling_seconds = Histogram(
            f"grpc_{side}_handling_seconds",
            f"Seconds from the start of an RPC to its end, on the {side}.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.received_total = Counter(
            f"grpc_{side}_msg_received_total",
            f"Messages the {side} received from the {peer}.",
            labels,
            registry=registry,
        )
        self.sent_total = Counter(
            f"grpc_{side}_msg_sent_total",
            f"Messages the {side} sent to the {peer}.",
            labels,
            registry=registry,
        )
        self._methods: dict[tuple[str, RpcType], MethodMetrics] = {}

    def method(self, method: str, kind: RpcType) -> MethodMetrics:
        """The metrics of ``method`` ('/pkg.Service/Method'), a call of shape ``kind``."""
        found = self._methods.get((method, kind))
        if found is None:
            found = self._methods[(method, kind)] = MethodMetrics(self, (kind, *_names(method)))
        return found


class Metrics:
    """One server's registry: its gRPC calls, the process and the Python runtime.

    Each server gets a registry of its own (tests run several in one process), so the
    process and runtime collectors, which prometheus_client puts on its global registry,
    are registered on this one too.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.server = RpcMetrics("server", self.registry)
        self._client: RpcMetrics | None = None

    @property
    def client(self) -> RpcMetrics:
        """The client side's metrics, registered when a client first asks for them."""
        if self._client is None:
            self._client = RpcMetrics("client", self.registry)
        return self._client


class MetricsEndpoint:
    """The /metrics HTTP server (a daemon thread, as prometheus_client runs it)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
