"""Prometheus request metrics, one registry per server, served over HTTP."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

# Latency buckets from 1 ms to 60 s: a search answers in milliseconds, a batch of
# VGG16 embeddings on a CPU in seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _labels(method: str) -> tuple[str, str]:
    """Splits '/pkg.Service/Method' into its service and method names."""
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "", method)
    return service, name


class Metrics:
    """The counters and histograms of one server (names as in go-grpc-prometheus)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["grpc_service", "grpc_method"]
        self._started = Counter(
            "grpc_server_started_total", "RPCs started.", labels, registry=self.registry
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed, by status code.",
            [*labels, "grpc_code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end.",
            labels,
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def started(self, method: str) -> None:
        self._started.labels(*_labels(method)).inc()

    def handled(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        service, name = _labels(method)
        self._handled.labels(service, name, code.name).inc()
        self._latency.labels(service, name).observe(seconds)


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
