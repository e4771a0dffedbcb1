"""The search service process: its server, its database pool, their life cycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import asyncpg

from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from search_service import sql
from search_service.db import init_connection
from search_service.extractor_client import ExtractorClient
from search_service.ingest import Ingester
from search_service.metrics import CollectionCollector, PoolCollector, SearchMetrics
from search_service.ranking import Ranker
from search_service.refit import AutoFit, Refitter
from search_service.schema import migrate
from search_service.servicer import Backend, SearchServicer
from search_service.settings import SearchSettings
from search_service.store import Store
from service_core.auth import Role
from service_core.server import App, Service
from service_core.tls import ClientTlsFiles
from service_core.tracing import Tracing

log = logging.getLogger(__name__)

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name

# The least role each RPC needs when --auth-file is set; an RPC not listed needs admin.
ROLES = {
    "Search": Role.READER,
    "GetImage": Role.READER,
    "ListCollections": Role.READER,
    "GetCollectionStats": Role.READER,
    "Ingest": Role.WRITER,
    "IngestStream": Role.WRITER,
    "DeleteImages": Role.WRITER,
    "CreateCollection": Role.ADMIN,
    "DeleteCollection": Role.ADMIN,
    "RefitProjection": Role.ADMIN,
}


class SearchApp(App):
    """Serves SearchService once its PostgreSQL pool is open and the schema current."""

    settings: SearchSettings

    def __init__(self, settings: SearchSettings, tracing: Tracing | None = None) -> None:
        super().__init__(settings, tracing)
        self.servicer = SearchServicer(settings)
        self.pool: asyncpg.Pool | None = None
        self.backend: Backend | None = None
        self._watch: asyncio.Task[None] | None = None
        registry = self.metrics.registry
        self.search_metrics = SearchMetrics(registry)
        registry.register(PoolCollector(lambda: self.pool, settings.pool_max_size))
        self.collection_metrics = CollectionCollector()
        registry.register(self.collection_metrics)
        self._refresh: asyncio.Task[None] | None = None
        self._uninstrument: Callable[[], None] | None = None

    def services(self) -> Sequence[Service]:
        return [
            Service(
                SERVICE_NAME,
                lambda server: search_pb2_grpc.add_SearchServiceServicer_to_server(
                    self.servicer, server
                ),
                ROLES,
            )
        ]

    async def become_ready(self) -> None:
        settings = self.settings
        # Before the pool opens: every query of this process becomes a span of its call.
        self._uninstrument = self.tracing.instrument_asyncpg()
        # The database may come up after us (a pod starting beside its database):
        # keep trying, NOT_SERVING meanwhile, rather than crash-looping.
        delay = 0.5
        while self.pool is None:
            try:
                self.pool = await asyncpg.create_pool(
                    settings.database_url,
                    min_size=settings.pool_min_size,
                    max_size=settings.pool_max_size,
                    init=init_connection,
                )
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("database not reachable, retrying: %s", error, extra={"in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        async with self.pool.acquire() as connection:
            await migrate(connection)
            stored_key: bytes = await connection.fetchval(sql.SIGNING_KEY)
            distributed: bool = await connection.fetchval(sql.DISTRIBUTED)
        page_token_key = settings.page_token_secret.encode() or stored_key
        store = Store(self.pool, distributed=distributed)
        refitter = Refitter(
            store,
            dimensions=settings.projection_dimensions,
            sample=settings.projection_sample,
            memory_bytes=settings.fit_memory_bytes,
        )
        autofit = AutoFit(
            store, refitter, threshold=settings.auto_fit_threshold, growth=settings.refit_growth
        )
        tls = None
        if settings.extractor_tls_ca_file is not None:
            tls = ClientTlsFiles(
                settings.extractor_tls_ca_file,
                settings.extractor_tls_cert_file,
                settings.extractor_tls_key_file,
            )
        token = None
        if settings.extractor_token_file is not None:
            token = settings.extractor_token_file.read_text(encoding="utf-8").strip()
        extractor = ExtractorClient(
            settings.extractor_address,
            max_message_bytes=settings.max_message_bytes,
            keepalive_time_s=settings.keepalive_time_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            tls=tls,
            server_name=settings.extractor_tls_server_name,
            token=token,
            metrics=self.metrics.client,
            interceptors=self.tracing.client_interceptors(),
        )
        ranker = Ranker(
            store,
            parallelism=min(settings.rerank_parallelism, settings.pool_max_size),
            seed_probes=settings.default_probes,
            metrics=self.search_metrics,
        )
        self.backend = Backend(
            store=store,
            extractor=extractor,
            refitter=refitter,
            ranker=ranker,
            ingester=Ingester(
                store,
                extractor,
                written=autofit.notice,
                max_metadata_bytes=settings.max_metadata_bytes,
                metrics=self.search_metrics,
            ),
            autofit=autofit,
            page_token_key=page_token_key,
        )
        self.servicer.serve(self.backend)
        # A collection may be due a fit already: grown while no replica ran, or fitted
        # before lower bounds (schema 0001).
        await autofit.check_all()
        self._watch = asyncio.create_task(self._watch_database())
        self._refresh = asyncio.create_task(
            self.collection_metrics.keep_fresh(store.summaries, settings.metrics_refresh_s)
        )

    async def _watch_database(self) -> None:
        """Readiness follows the database: NOT_SERVING while it does not answer.

        Only readiness: the liveness service stays SERVING, so an outage takes the
        pod out of rotation instead of restarting it (a restart cannot help). The check
        has a connection of its own: one borrowed from the pool can wait on the pool's
        own reconnection past any timeout.
        """
        interval = self.settings.database_check_s
        reachable = True
        connection: asyncpg.Connection[asyncpg.Record] | None = None
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    if connection is None or connection.is_closed():
                        connection = await asyncpg.connect(
                            self.settings.database_url, timeout=interval
                        )
                    with self.tracing.untraced():  # a ping every few seconds is no trace
                        await connection.fetchval(sql.PING, timeout=interval)
                    answered = True
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    answered = False
                    if connection is not None:
                        connection.terminate()
                        connection = None
                if answered != reachable and self.server is not None:
                    reachable = answered
                    level = logging.INFO if answered else logging.WARNING
                    log.log(level, "database %s", "reachable" if answered else "unreachable")
                    await self.server.set_serving(answered)
        finally:
            if connection is not None:
                connection.terminate()

    async def close(self) -> None:
        for task in (self._watch, self._refresh):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.backend is not None:
            await self.backend.autofit.close()
            await self.backend.extractor.close()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), self.settings.pool_close_timeout_s)
            except TimeoutError:
                self.pool.terminate()
        if self._uninstrument is not None:
            self._uninstrument()
            self._uninstrument = None
