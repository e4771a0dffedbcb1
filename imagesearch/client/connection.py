"""How a client reaches the search service: address, TLS, token, deadlines and retries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import grpc

DEFAULT_TARGET = "127.0.0.1:50052"
# The services' default max_message_bytes: big photos go up, big pages come back.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# The deadline of a call that is given none of its own.
DEFAULT_TIMEOUT_S = 30.0


def default_service_config() -> dict[str, Any]:
    """The gRPC service config shipped with the client (service_config.json).

    It retries the calls that are safe to repeat (Search, GetImage, ListCollections,
    GetCollectionStats, Ingest: an upsert by key, DeleteImages) on UNAVAILABLE and
    RESOURCE_EXHAUSTED with exponential backoff; the server's RetryInfo reaches gRPC
    as grpc-retry-pushback-ms, so a retry waits as long as the server asked, and an
    error the server marks as not worth retrying is not retried.
    """
    text = resources.files(__package__).joinpath("service_config.json").read_text("utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


@dataclass(frozen=True)
class Tls:
    """TLS to the service: a CA bundle to verify it by (the system's when None), a client
    certificate and key for mTLS, and the name its certificate carries when that is not
    the address's host."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both its cert and key files")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


@dataclass(frozen=True)
class Connection:
    """Everything about the channel a client opens.

    ``token`` is sent as ``authorization: Bearer`` on every call; gRPC sends call
    credentials only over TLS, so a token turns TLS on (the system's CAs verify the
    server unless ``tls`` names a bundle) and never travels in clear.
    ``service_config`` replaces the shipped retry policy (default_service_config());
    ``retries=False`` turns retries off.
    """

    target: str = DEFAULT_TARGET
    tls: Tls | None = None
    token: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_message_bytes: int = MAX_MESSAGE_BYTES
    service_config: dict[str, Any] | None = None
    retries: bool = True

    def credentials(self) -> grpc.ChannelCredentials | None:
        """None for plaintext, else TLS with the token as call credentials."""
        if self.tls is None and not self.token:
            return None
        credentials = (self.tls or Tls()).credentials()
        if self.token:
            call = grpc.access_token_call_credentials(self.token)
            credentials = grpc.composite_channel_credentials(credentials, call)
        return credentials

    def options(self) -> list[tuple[str, Any]]:
        config = self.service_config or default_service_config()
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.service_config", json.dumps(config)),
            ("grpc.enable_retries", int(self.retries)),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def aio_channel(self) -> grpc.aio.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options())
        return grpc.aio.secure_channel(self.target, credentials, options=self.options())
