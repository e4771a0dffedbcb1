"""Client channels for the security tests: plaintext, TLS, mTLS, with or without a token."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.security.certs import Issued


def tls_channel(
    port: int,
    ca_bundle: bytes,
    client: Issued | None = None,
    *,
    host: str = "localhost",
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_bundle,
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(f"{host}:{port}", credentials)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The status a health check over ``channel`` ends with (OK if it answers)."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK
