"""The extractor service process: its server, its model, their life cycle."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from extractor_service.batcher import Batcher
from extractor_service.runtime import OnnxModel, available_cpus
from extractor_service.servicer import Engine, ExtractorServicer
from extractor_service.settings import ExtractorSettings
from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc
from service_core.auth import Role
from service_core.server import App, Service
from service_core.tracing import Tracing

SERVICE_NAME = extractor_pb2.DESCRIPTOR.services_by_name["ExtractorService"].full_name

# With --auth-file set, any configured caller may embed (the search service, as a
# reader); callers that are not in the file get UNAUTHENTICATED.
ROLES = {"Embed": Role.READER, "EmbedStream": Role.READER, "GetModelInfo": Role.READER}


class ExtractorApp(App):
    """Serves ExtractorService once its model is loaded, checked and warmed up."""

    settings: ExtractorSettings

    def __init__(self, settings: ExtractorSettings, tracing: Tracing | None = None) -> None:
        super().__init__(settings, tracing)
        self.servicer = ExtractorServicer(
            settings, self.metrics.registry, tracer=self.tracing.tracer(__name__)
        )

    def services(self) -> Sequence[Service]:
        return [
            Service(
                SERVICE_NAME,
                lambda server: extractor_pb2_grpc.add_ExtractorServiceServicer_to_server(
                    self.servicer, server
                ),
                ROLES,
            )
        ]

    async def become_ready(self) -> None:
        settings = self.settings

        def load() -> OnnxModel:
            model = OnnxModel.load(
                settings.model_dir,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
            )
            model.warm_up()
            return model

        model = await asyncio.to_thread(load)
        manifest = model.manifest
        batcher = Batcher(
            model.run,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            ran=self.servicer.metrics.ran,
            tracer=self.tracing.tracer(__name__),
        )
        batcher.start()
        self.servicer.engine = Engine(
            model=model,
            batcher=batcher,
            preprocess=manifest.preprocess_config(max_pixels=settings.max_image_pixels),
            decode_pool=ThreadPoolExecutor(
                max_workers=settings.preprocess_workers or available_cpus(),
                thread_name_prefix="decode",
            ),
        )

    async def close(self) -> None:
        engine, self.servicer.engine = self.servicer.engine, None
        if engine is not None:
            await engine.batcher.close()
            engine.decode_pool.shutdown(wait=False, cancel_futures=True)
