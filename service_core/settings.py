"""Settings every gRPC server of the project shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service_core.config import setting


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Where and how a server listens; each service's settings extend this."""

    host: str = setting("127.0.0.1", "address to listen on ('0.0.0.0' in containers)")
    port: int = setting(0, "gRPC port; 0 picks a free one and logs it")
    metrics_port: int = setting(-1, "Prometheus /metrics HTTP port; 0 picks one, -1 disables")
    health_port: int = setting(
        -1, "plaintext port serving only gRPC health (probes, when port speaks TLS); -1: none"
    )
    grace_period_s: float = setting(
        10.0, "seconds in-flight calls get to finish on SIGTERM; keep below the pod's"
    )
    max_message_bytes: int = setting(
        64 * 1024 * 1024, "largest request or response message in bytes"
    )
    max_calls_in_flight: int = setting(
        32, "calls served at once; more get RESOURCE_EXHAUSTED at once (0: no bound)"
    )
    max_request_bytes_in_flight: int = setting(
        128 * 1024 * 1024,
        "request bytes the calls in flight may hold; beyond, RESOURCE_EXHAUSTED (0: no bound)",
    )
    max_connection_age_s: float = setting(
        60.0,
        "a client connection is closed (GOAWAY) after this long so that clients "
        "re-resolve and reach new replicas (0: never)",
    )
    max_connection_age_grace_s: float = setting(
        10.0, "seconds a connection past its age gets to finish its calls"
    )
    keepalive_time_s: float = setting(
        30.0, "ping an idle connection after this long, to find dead peers (0: never)"
    )
    keepalive_timeout_s: float = setting(10.0, "a ping unanswered this long closes the connection")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting("json", "'json' (one object a line) or 'text'")
    access_log_sample_rate: float = setting(
        1.0, "share of successful calls the access log records (0..1); failures always"
    )
    channelz_port: int = setting(
        -1, "plaintext admin port serving gRPC channelz (live connections); 0 picks one, -1: off"
    )
    tls_cert_file: Path | None = setting(
        None, "PEM certificate chain to serve TLS with (with tls_key_file); re-read on change"
    )
    tls_key_file: Path | None = setting(None, "PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = setting(
        None, "PEM CA bundle: require client certificates signed by it (mTLS)"
    )
    auth_file: Path | None = setting(
        None, "callers file (token hashes, certificate identities, roles); unset: no auth"
    )
    reflection: str = setting("open", "server reflection: 'open', 'off', or a least role")
    rate_limit_per_s: float = setting(0.0, "requests a second one caller may make (0: no limit)")
    rate_limit_burst: int = setting(20, "requests one caller may make at once above the rate")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be -1..65535, got {self.metrics_port}")
        if not -1 <= self.health_port <= 65535:
            raise ValueError(f"health_port must be -1..65535, got {self.health_port}")
        if not -1 <= self.channelz_port <= 65535:
            raise ValueError(f"channelz_port must be -1..65535, got {self.channelz_port}")
        if not 0 <= self.access_log_sample_rate <= 1:
            raise ValueError(
                f"access_log_sample_rate must be 0..1, got {self.access_log_sample_rate}"
            )
        if self.grace_period_s < 0:
            raise ValueError(f"grace_period_s must be >= 0, got {self.grace_period_s}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.max_request_bytes_in_flight and (
            self.max_request_bytes_in_flight < self.max_message_bytes
        ):
            raise ValueError(
                f"max_request_bytes_in_flight ({self.max_request_bytes_in_flight}) must be 0 or "
                f">= max_message_bytes ({self.max_message_bytes}): a largest request could "
                "never be served"
            )
        timings = {
            "max_calls_in_flight": self.max_calls_in_flight,
            "max_connection_age_s": self.max_connection_age_s,
            "max_connection_age_grace_s": self.max_connection_age_grace_s,
            "keepalive_time_s": self.keepalive_time_s,
            "keepalive_timeout_s": self.keepalive_timeout_s,
        }
        for name, value in timings.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be 'json' or 'text', got {self.log_format!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        if self.reflection not in ("open", "off", "reader", "writer", "admin"):
            raise ValueError(
                f"reflection must be open, off, reader, writer or admin, got {self.reflection!r}"
            )
        if self.reflection in ("reader", "writer", "admin") and self.auth_file is None:
            raise ValueError(f"reflection={self.reflection!r} (a role) needs auth_file")
        if self.rate_limit_per_s < 0 or self.rate_limit_burst < 1:
            raise ValueError("need rate_limit_per_s >= 0 and rate_limit_burst >= 1")
