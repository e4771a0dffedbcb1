"""TLS and mTLS credentials from PEM files, re-read when the files change on disk.

cert-manager renews a certificate by rewriting its Secret, which the kubelet swaps
into the pod's volume; a server that read its files once would keep serving the
old certificate until it expires. Servers use gRPC's dynamic credentials, whose
fetcher runs on every new connection and costs a few ``stat`` calls when nothing
changed. Channels have no such hook in grpcio, so ``ReloadingChannel`` checks the
files before each call and opens a new channel when they change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from service_core.settings import ServerSettings

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int], ...]


def stamp(paths: Sequence[Path]) -> Stamp:
    """What changes when any of ``paths`` is rewritten or swapped for another file."""
    found = []
    for path in paths:
        info = os.stat(path)  # follows the symlinks a Secret volume is made of
        found.append((info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(found)


class ServerTlsFiles:
    """A server's certificate, key and optional client CA bundle, as gRPC credentials.

    With a client CA bundle the server requires a client certificate signed by
    one of those CAs (mTLS); without one it serves plain TLS.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.paths = [cert, key] + ([client_ca] if client_ca else [])
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._stamp = stamp(self.paths)
        self._initial = self._read()

    def _read(self) -> Any:  # grpc.ServerCertificateConfiguration (untyped in grpc-stubs)
        try:
            pair = (self._key.read_bytes(), self._cert.read_bytes())
            roots = self._client_ca.read_bytes() if self._client_ca else None
        except OSError as error:
            raise ValueError(f"cannot read TLS file: {error}") from error
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def fetch(self) -> Any:
        """gRPC's per-connection hook: a new configuration, or None for 'unchanged'."""
        try:
            now = stamp(self.paths)
            if now == self._stamp:
                return None
            config = self._read()
        except (OSError, ValueError) as error:
            # Halfway through a rotation a file may be missing: keep the old pair.
            log.warning("TLS files unreadable, keeping the current ones: %s", error)
            return None
        self._stamp = now
        log.info("TLS files changed, new connections use them", extra={"cert": str(self._cert)})
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self.fetch,
            require_client_authentication=self._client_ca is not None,
        )


class ClientTlsFiles:
    """A channel's CA bundle and, for mTLS, its own certificate and key."""

    def __init__(self, ca: Path, cert: Path | None = None, key: Path | None = None) -> None:
        if (cert is None) != (key is None):
            raise ValueError("a client certificate needs both its cert and key files")
        self.ca, self.cert, self.key = ca, cert, key
        self.paths = [ca] + ([cert, key] if cert and key else [])

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


class ReloadingChannel:
    """An aio channel that is rebuilt when its TLS files change.

    The old channel is closed with a grace period, so calls already on it finish.
    ``tls`` None gives a plaintext channel that never changes.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: ClientTlsFiles | None,
        options: Sequence[tuple[str, Any]] = (),
        server_name: str = "",
        close_grace_s: float = 30.0,
        # grpc.aio client interceptors (grpc-stubs leave their common base untyped).
        interceptors: Sequence[Any] = (),
    ) -> None:
        self.address = address
        self._tls = tls
        self._options = list(options)
        self._interceptors = list(interceptors)  # outermost first
        if server_name:  # the name the certificate is for, when the address is an IP
            self._options.append(("grpc.ssl_target_name_override", server_name))
        self._grace = close_grace_s
        self._closing: set[asyncio.Task[None]] = set()
        self._stamp = stamp(tls.paths) if tls else ()
        self.channel = self._open()

    def _open(self) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(
                self.address, options=self._options, interceptors=self._interceptors
            )
        return grpc.aio.secure_channel(
            self.address,
            self._tls.credentials(),
            options=self._options,
            interceptors=self._interceptors,
        )

    def current(self) -> grpc.aio.Channel:
        """The channel to make the next call on, reopened first if the files changed."""
        if self._tls is None:
            return self.channel
        try:
            now = stamp(self._tls.paths)
            if now != self._stamp:
                fresh = self._open()
                self._stamp = now
                old, self.channel = self.channel, fresh
                task = asyncio.get_running_loop().create_task(old.close(self._grace))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                log.info("client TLS files changed, reconnecting", extra={"to": self.address})
        except (OSError, ValueError) as error:
            log.warning("client TLS files unreadable, keeping the current ones: %s", error)
        return self.channel

    async def close(self) -> None:
        await self.channel.close(None)
        await asyncio.gather(*self._closing, return_exceptions=True)


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials, or None for plaintext (no certificate set)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    files = ServerTlsFiles(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )
    return files.credentials()


def channel_credentials(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    token: str | None = None,
    tls: bool = False,
) -> grpc.ChannelCredentials | None:
    """A client's credentials: None for plaintext, else TLS (mTLS with a cert) and a token.

    TLS is on when ``tls`` or any file or a token is given; without ``ca_file`` the
    system's CAs verify the server. The token is sent as ``authorization: Bearer``
    on every call, which gRPC only does over TLS, so that it never travels in clear.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both its cert and key files")
    if not (tls or ca_file or cert_file or token):
        return None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes() if ca_file else None,
        private_key=key_file.read_bytes() if key_file else None,
        certificate_chain=cert_file.read_bytes() if cert_file else None,
    )
    if token:
        call = grpc.access_token_call_credentials(token)
        credentials = grpc.composite_channel_credentials(credentials, call)
    return credentials
