"""The search service's client of ExtractorService: deadlines, retries, typed errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from search_service.domain import ModelKey, Vector
from service_core.errors import DeadlineExceeded, ResourceExhausted, ServiceError, Unavailable
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


@dataclass(frozen=True)
class Embedded:
    """One item's outcome: a vector, or the extractor's error for it (a google.rpc.Code)."""

    vector: Vector | None
    error_code: int = 0
    error_message: str = ""


class ExtractorClient:
    """Embeds images through the extractor, in chunks the extractor accepts."""

    def __init__(
        self,
        address: str,
        *,
        max_message_bytes: int,
        chunk: int = 32,
        tls: ClientTlsFiles | None = None,
        server_name: str = "",
        token: str | None = None,
    ) -> None:
        self.address = address
        self._chunk = chunk
        # The channel is reopened when its certificate is renewed on disk.
        self._channel = ReloadingChannel(
            address,
            tls=tls,
            server_name=server_name,
            options=[
                ("grpc.service_config", _SERVICE_CONFIG),
                ("grpc.enable_retries", 1),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
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

    async def embed(
        self, images: Sequence[tuple[str, bytes]], *, timeout_s: float
    ) -> tuple[ModelKey, list[Embedded]]:
        """Embeds (id, bytes) pairs; per-item failures come back as Embedded.error."""
        model: ModelKey | None = None
        results: list[Embedded] = []
        for start in range(0, len(images), self._chunk):
            request = extractor_pb2.EmbedRequest(
                images=[
                    extractor_pb2.Image(id=item, data=data)
                    for item, data in images[start : start + self._chunk]
                ]
            )
            try:
                response = await self._current_stub().Embed(
                    request, timeout=timeout_s, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as error:
                raise self._translate(error) from error
            model = ModelKey(response.model.name, response.model.version, response.model.dimension)
            results += [self._outcome(r) for r in response.results]
        assert model is not None, "embed() needs at least one image"
        return model, results

    @staticmethod
    def _outcome(result: extractor_pb2.EmbedResult) -> Embedded:
        if result.WhichOneof("outcome") == "embedding":
            return Embedded(np.asarray(result.embedding.values, dtype=np.float32))
        return Embedded(None, result.error.code, result.error.message)

    def _translate(self, error: grpc.aio.AioRpcError) -> ServiceError:
        code, details = error.code(), error.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"the extractor at {self.address} did not answer in time")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(f"the extractor at {self.address} is busy: {details}")
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"the extractor at {self.address} is unavailable: {details}")
        return Unavailable(f"the extractor at {self.address} failed ({code.name}): {details}")
