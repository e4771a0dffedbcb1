"""The search service's settings (environment prefix ``SEARCH_``)."""

from __future__ import annotations

from dataclasses import dataclass

from service_core.config import setting
from service_core.settings import ServerSettings

ENV_PREFIX = "SEARCH_"


@dataclass(frozen=True, kw_only=True)
class SearchSettings(ServerSettings):
    """Where the database and the extractor are, and the pool's size."""

    database_url: str = setting(
        "postgresql://postgres@127.0.0.1:5432/imagesearch", "PostgreSQL DSN (libpq URL form)"
    )
    extractor_address: str = setting("127.0.0.1:50051", "host:port of the extractor service")
    pool_min_size: int = setting(1, "connections the pool keeps open")
    pool_max_size: int = setting(10, "most connections the pool opens")
    pool_close_timeout_s: float = setting(5.0, "seconds to wait for queries on shutdown")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.pool_min_size <= self.pool_max_size or self.pool_max_size < 1:
            raise ValueError(
                f"need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1, "
                f"got {self.pool_min_size} and {self.pool_max_size}"
            )
