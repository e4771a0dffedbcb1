"""ExtractorService: image bytes in, embeddings out, one result per item."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from extractor_service.batcher import Admission, Batcher, Tensor
from extractor_service.metrics import ExtractorMetrics
from extractor_service.preprocess import PixelBudget, PreprocessConfig, preprocess
from extractor_service.runtime import OnnxModel
from extractor_service.settings import ExtractorSettings
from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from service_core.errors import InvalidArgument, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Engine:
    """What serving needs once the model is loaded."""

    model: OnnxModel
    batcher: Batcher
    preprocess: PreprocessConfig
    decode_pool: Executor

    @property
    def ref(self) -> extractor_pb2.ModelRef:
        manifest = self.model.manifest
        return extractor_pb2.ModelRef(
            name=manifest.name, version=manifest.version, dimension=manifest.dimension
        )


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


class ExtractorServicer(extractor_pb2_grpc.ExtractorServiceServicer):
    """Decodes on a thread pool, embeds through the batcher, never on the event loop."""

    def __init__(
        self,
        settings: ExtractorSettings,
        registry: CollectorRegistry | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self._settings = settings
        self._tracer = tracer  # None: tracing is off
        self._admission = Admission(settings.max_queue_images)
        self.metrics = ExtractorMetrics(
            registry or CollectorRegistry(), queue_depth=lambda: self._admission.in_flight
        )
        self.engine: Engine | None = None  # set once the model is loaded

    def _ready(self) -> Engine:
        if self.engine is None:
            raise Unavailable("the model is still loading; retry shortly", reason="MODEL_LOADING")
        return self.engine

    async def Embed(  # noqa: N802 - the RPC's name
        self, request: extractor_pb2.EmbedRequest, context: Context
    ) -> extractor_pb2.EmbedResponse:
        engine = self._ready()
        count, most = len(request.images), self._settings.max_request_images
        if count == 0:
            raise InvalidArgument(
                "images: at least one image is required", reason="NO_IMAGES", field="images"
            )
        if count > most:
            raise InvalidArgument(
                f"images: {count} images in one request, at most {most}",
                reason="TOO_MANY_IMAGES",
                field="images",
                metadata={"count": str(count), "limit": str(most)},
            )
        try:
            self._admission.try_admit(count)
        except ResourceExhausted:
            self.metrics.images["rejected"].inc(count)
            raise
        try:
            deadline = _deadline(context)
            budget = PixelBudget(self._settings.max_request_pixels)
            results = await asyncio.gather(
                *(
                    self._embed_one(
                        engine,
                        image,
                        f"images[{index}]",
                        index,
                        request.normalize,
                        deadline,
                        budget,
                    )
                    for index, image in enumerate(request.images)
                )
            )
        finally:
            self._admission.release(count)
        return extractor_pb2.EmbedResponse(results=results, model=engine.ref)

    async def EmbedStream(  # noqa: N802 - the RPC's name
        self,
        request_iterator: AsyncIterator[extractor_pb2.EmbedStreamRequest],
        context: Context,
    ) -> AsyncIterator[extractor_pb2.EmbedStreamResponse]:
        engine = self._ready()
        deadline = _deadline(context)
        # Results leave in request order; up to a batch's worth of items is in
        # progress at once, and reading stops (backpressure) while that is full.
        window: asyncio.Queue[asyncio.Task[extractor_pb2.EmbedResult] | None] = asyncio.Queue(
            maxsize=self._settings.max_batch_size
        )

        async def read() -> None:
            index = 0
            async for request in request_iterator:
                await self._admission.admit(1)
                task = asyncio.create_task(
                    self._embed_one(
                        engine, request.image, "image", index, request.normalize, deadline
                    )
                )
                task.add_done_callback(lambda _: self._admission.release(1))
                await window.put(task)
                index += 1
            await window.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                next_item = asyncio.create_task(window.get())
                await asyncio.wait({next_item, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not next_item.done() and (failure := reader.exception()):
                    next_item.cancel()  # the client's stream broke: end the call with it
                    raise failure
                task = await next_item
                if task is None:
                    break
                yield extractor_pb2.EmbedStreamResponse(result=await task, model=engine.ref)
        finally:
            reader.cancel()
            while not window.empty():
                if (leftover := window.get_nowait()) is not None:
                    leftover.cancel()

    async def GetModelInfo(  # noqa: N802 - the RPC's name
        self, request: extractor_pb2.GetModelInfoRequest, context: Context
    ) -> extractor_pb2.GetModelInfoResponse:
        engine = self._ready()
        manifest = engine.model.manifest
        return extractor_pb2.GetModelInfoResponse(
            model=extractor_pb2.ModelInfo(
                ref=engine.ref,
                layer=manifest.layer,
                input_size=manifest.input_size,
                resize_size=manifest.resize_size,
                mean=manifest.mean,
                std=manifest.std,
                precision=manifest.precision,
                onnx_sha256=manifest.onnx_sha256,
                weights_source=manifest.weights_source,
            ),
            execution_providers=engine.model.providers,
            max_request_images=self._settings.max_request_images,
            max_batch_size=self._settings.max_batch_size,
            max_image_pixels=self._settings.max_image_pixels,
        )

    async def _embed_one(
        self,
        engine: Engine,
        image: extractor_pb2.Image,
        at: str,
        index: int,
        normalize: bool,
        deadline: float | None,
        budget: PixelBudget | None = None,
    ) -> extractor_pb2.EmbedResult:
        item = image.id or f"#{index}"
        loop = asyncio.get_running_loop()
        images = self.metrics.images
        decode = functools.partial(
            _timed, self.metrics.preprocess_seconds, image.data, engine.preprocess, item, budget
        )
        try:
            if self._tracer is None:
                tensor: Tensor = await loop.run_in_executor(engine.decode_pool, decode)
            else:
                size = len(image.data)
                attributes: dict[str, str | int] = {
                    "imagesearch.item": item,
                    "imagesearch.image_bytes": size,
                }
                with self._tracer.start_as_current_span("decode", attributes=attributes):
                    tensor = await loop.run_in_executor(engine.decode_pool, decode)
        except (InvalidArgument, ResourceExhausted) as error:
            images["invalid" if isinstance(error, InvalidArgument) else "rejected"].inc()
            # The ItemError older callers read, and beside it the same failure as a
            # google.rpc.Status naming the field (``at``: where the image sits in the
            # request) and the item.
            error.field = f"{at}.data"
            error.metadata.setdefault("id", item)
            failure = extractor_pb2.ItemError(code=error.code.value[0], message=error.message)
            return extractor_pb2.EmbedResult(id=item, error=failure, rpc_status=error.status())
        try:
            vector = await engine.batcher.embed(tensor, deadline)
        except Exception:
            images["error"].inc()
            raise
        images["ok"].inc()
        if normalize:
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return extractor_pb2.EmbedResult(
            id=item, embedding=extractor_pb2.Embedding(values=vector.tolist())
        )


def _timed(
    seconds: Histogram,
    data: bytes,
    config: PreprocessConfig,
    item: str,
    budget: PixelBudget | None,
) -> Tensor:
    """``preprocess`` on a decode thread, its time observed (failures included)."""
    with seconds.time():
        return preprocess(data, config, item=item, budget=budget)
