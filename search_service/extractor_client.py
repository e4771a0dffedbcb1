"""The search service's client of ExtractorService: deadlines, retries, typed errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from imagesearch.client.errors import from_rpc_error, from_status
from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from search_service.domain import ModelKey, Vector
from service_core.access_log import RequestIdForwarder
from service_core.client_metrics import client_metrics_interceptors
from service_core.errors import (
    DeadlineExceeded,
    ServiceError,
    error_for,
)
from service_core.metrics import RpcMetrics
from service_core.tls import ClientTlsFiles, ReloadingChannel

# Embed has no side effects, so gRPC may retry it when the extractor is briefly
# unreachable or busy (a rolling update, a full queue).
# round_robin spreads calls over every extractor address the name resolves to (a
# headless Kubernetes Service lists each pod), instead of sticking to the first.
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "imagesearch.extractor.v1.ExtractorService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
                },
            }
        ],
    }
)


# Room left in a chunk's message for its framing (ids, field tags), over the image bytes.
_FRAMING_BYTES = 64 * 1024


@dataclass(frozen=True)
class Embedded:
    """One item's outcome: a vector, or the extractor's error for it (a google.rpc.Code,
    and the reason and retry delay of its google.rpc.Status when it sent one)."""

    vector: Vector | None
    error_code: int = 0
    error_message: str = ""
    error_reason: str | None = None
    retry_after: float | None = None

    def error(self, message: str, *, field: str) -> ServiceError:
        """The item's failure as our own error, about ``field`` of our caller's request.

        Retryable only where the extractor said so: its per-item RESOURCE_EXHAUSTED
        (an image over the pixel limit) is not cured by waiting.
        """
        code = next(
            (c for c in grpc.StatusCode if c.value[0] == self.error_code),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        return error_for(
            code,
            message,
            reason=self.error_reason,
            field=field,
            retry_after=self.retry_after,
            retryable=self.retry_after is not None,
        )


class ExtractorClient:
    """Embeds images through the extractor, in chunks the extractor accepts.

    A chunk holds at most the extractor's own ``max_request_images`` (asked once,
    by GetModelInfo) and at most a message's worth of bytes.
    """

    def __init__(
        self,
        address: str,
        *,
        max_message_bytes: int,
        keepalive_time_s: float = 30.0,
        keepalive_timeout_s: float = 10.0,
        tls: ClientTlsFiles | None = None,
        server_name: str = "",
        token: str | None = None,
        metrics: RpcMetrics | None = None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        """``interceptors``: more grpc.aio client interceptors (tracing's), outermost first."""
        self.address = address
        self._max_bytes = max_message_bytes
        self._chunk: int | None = None
        options: list[tuple[str, int | str]] = [
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # When an extractor ends a connection (its max_connection_age) the name is
            # resolved again, to find replicas added since; gRPC's default spaces
            # resolutions 30 s apart, which would leave new pods idle that long.
            ("grpc.dns_min_time_between_resolutions_ms", 1000),
        ]
        if keepalive_time_s:
            # A dead extractor pod (no RST, a partition) is found in seconds, not
            # at the first call's deadline; the servers permit pings this often.
            options += [
                ("grpc.keepalive_time_ms", round(keepalive_time_s * 1000)),
                ("grpc.keepalive_timeout_ms", round(keepalive_timeout_s * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        # The channel is reopened when its certificate is renewed on disk.
        self._channel = ReloadingChannel(
            address,
            tls=tls,
            server_name=server_name,
            options=options,
            interceptors=[
                *interceptors,
                *(client_metrics_interceptors(metrics) if metrics else ()),
                RequestIdForwarder(),  # the call's x-request-id goes on to the extractor
            ],
        )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub_channel = self._channel.channel
        self._stub = extractor_pb2_grpc.ExtractorServiceStub(self._stub_channel)

    async def close(self) -> None:
        await self._channel.close()

    def _current_stub(self) -> extractor_pb2_grpc.ExtractorServiceAsyncStub:
        channel = self._channel.current()
        if channel is not self._stub_channel:
            self._stub = extractor_pb2_grpc.ExtractorServiceStub(channel)
            self._stub_channel = channel
        return self._stub

    async def chunk_images(self, *, timeout_s: float) -> int:
        """Most images per Embed call, as the extractor reports it."""
        if self._chunk is None:
            try:
                info = await self._current_stub().GetModelInfo(
                    extractor_pb2.GetModelInfoRequest(), timeout=timeout_s, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as error:
                raise self._translate(error) from error
            self._chunk = max(1, info.max_request_images)
        return self._chunk

    def _chunks(
        self, images: Sequence[tuple[str, bytes]], most: int
    ) -> list[Sequence[tuple[str, bytes]]]:
        chunks: list[Sequence[tuple[str, bytes]]] = []
        start, size = 0, 0
        budget = max(1, self._max_bytes - _FRAMING_BYTES)
        for index, (item, data) in enumerate(images):
            cost = len(data) + len(item.encode())
            if index > start and (index - start >= most or size + cost > budget):
                chunks.append(images[start:index])
                start, size = index, 0
            size += cost
        chunks.append(images[start:])
        return chunks

    async def embed(
        self, images: Sequence[tuple[str, bytes]], *, timeout_s: float
    ) -> tuple[ModelKey, list[Embedded]]:
        """Embeds (id, bytes) pairs; per-item failures come back as Embedded.error."""
        assert images, "embed() needs at least one image"
        most = await self.chunk_images(timeout_s=timeout_s)
        model: ModelKey | None = None
        results: list[Embedded] = []
        for chunk in self._chunks(images, most):
            request = extractor_pb2.EmbedRequest(
                images=[extractor_pb2.Image(id=item, data=data) for item, data in chunk]
            )
            try:
                response = await self._current_stub().Embed(
                    request, timeout=timeout_s, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as error:
                raise self._translate(error) from error
            model = ModelKey(response.model.name, response.model.version, response.model.dimension)
            results += [self._outcome(r) for r in response.results]
        assert model is not None
        return model, results

    @staticmethod
    def _outcome(result: extractor_pb2.EmbedResult) -> Embedded:
        if result.WhichOneof("outcome") == "embedding":
            return Embedded(np.asarray(result.embedding.values, dtype=np.float32))
        if not result.HasField("rpc_status"):  # an extractor older than google.rpc details
            return Embedded(None, result.error.code, result.error.message)
        status = from_status(result.rpc_status)
        return Embedded(
            None, result.error.code, result.error.message, status.reason or None, status.retry_delay
        )

    def _translate(self, error: grpc.aio.AioRpcError) -> ServiceError:
        """The extractor's own status, so a caller can tell its fault from a busy peer."""
        code, details = error.code(), error.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(
                f"the extractor at {self.address} did not answer in time",
                reason="EXTRACTOR_DEADLINE_EXCEEDED",
            )
        # The google.rpc details, read as the project's client reads them.
        status = from_rpc_error(error)
        return error_for(
            code,
            f"the extractor at {self.address} answered {code.name}: {details}",
            reason=status.reason or None,
            metadata={"dependency": "extractor"},
            retry_after=status.retry_delay,
        )
