"""The search service process: its server, its database pool, their life cycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from imagesearch.search.v1 import search_pb2, search_pb2_grpc
from search_service.settings import SearchSettings
from service_core.server import App, Service

log = logging.getLogger(__name__)

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name


class SearchApp(App):
    """Serves SearchService once its PostgreSQL pool is open."""

    settings: SearchSettings

    def __init__(self, settings: SearchSettings) -> None:
        super().__init__(settings)
        self.pool: asyncpg.Pool | None = None

    def services(self) -> Sequence[Service]:
        servicer = search_pb2_grpc.SearchServiceServicer()  # type: ignore[abstract]
        return [
            Service(
                SERVICE_NAME,
                lambda server: search_pb2_grpc.add_SearchServiceServicer_to_server(
                    servicer, server
                ),
            )
        ]

    async def become_ready(self) -> None:
        # The database may come up after us (a pod starting beside its database):
        # keep trying, NOT_SERVING meanwhile, rather than crash-looping.
        delay = 0.5
        while True:
            try:
                self.pool = await asyncpg.create_pool(
                    self.settings.database_url,
                    min_size=self.settings.pool_min_size,
                    max_size=self.settings.pool_max_size,
                )
                return
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("database not reachable, retrying: %s", error, extra={"in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def close(self) -> None:
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), self.settings.pool_close_timeout_s)
            except TimeoutError:
                self.pool.terminate()
