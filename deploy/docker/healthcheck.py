"""Container health check: exit 0 when the server on this host's port reports SERVING."""

# Used by the images' HEALTHCHECK (docker, compose), where no shell tool may be
# relied on: `python healthcheck.py EXTRACTOR_PORT` reads the gRPC port from that
# environment variable and asks grpc.health.v1 for the whole server (service "").
# Kubernetes does not need it: its probes speak gRPC health natively.

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def check(port_variable: str, environ: Mapping[str, str]) -> tuple[bool, str]:
    """Whether the local server is SERVING, and a line saying why not."""
    port = environ.get(port_variable, "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return False, f"{port_variable}={port!r}: set it to the server's fixed gRPC port"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            return False, f"port {port}: {error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, f"port {port}: {status}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: healthcheck.py PORT_VARIABLE (e.g. EXTRACTOR_PORT)", file=sys.stderr)
        return 1
    healthy, reason = check(argv[1], os.environ)
    if not healthy:
        print(f"unhealthy: {reason}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
