"""The search service's settings (environment prefix ``SEARCH_``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    extractor_tls_ca_file: Path | None = setting(
        None, "PEM CA bundle to verify the extractor by; set, the channel speaks TLS"
    )
    extractor_tls_cert_file: Path | None = setting(
        None, "this service's client certificate for the extractor (mTLS)"
    )
    extractor_tls_key_file: Path | None = setting(None, "private key of extractor_tls_cert_file")
    extractor_tls_server_name: str = setting(
        "", "host name the extractor's certificate must name, if not the address's"
    )
    extractor_token_file: Path | None = setting(
        None, "file holding the bearer token sent to the extractor"
    )
    pool_min_size: int = setting(1, "connections the pool keeps open")
    pool_max_size: int = setting(10, "most connections the pool opens")
    pool_close_timeout_s: float = setting(5.0, "seconds to wait for queries on shutdown")
    database_check_s: float = setting(
        2.0, "how often readiness asks the database; unanswered this long is NOT_SERVING"
    )
    extractor_timeout_s: float = setting(
        60.0, "longest wait for the extractor when the caller set no deadline"
    )
    max_ingest_items: int = setting(256, "most items in one Ingest request")
    max_metadata_bytes: int = setting(
        32 * 1024,
        "largest metadata object of one item, as JSON bytes; keeps a page of max_top_k "
        "hits within the message limit",
    )
    page_token_secret: str = setting(
        "",
        "key that signs page tokens; empty uses a random key kept in the database, "
        "shared by every replica",
    )
    max_collections: int = setting(1000, "most collections one database may hold")
    stream_batch_items: int = setting(64, "IngestStream items written per transaction")
    ingest_concurrency: int = setting(
        2, "IngestStream batches written at once, each on its own connection"
    )
    default_top_k: int = setting(10, "hits per page when a search asks for 0")
    max_top_k: int = setting(1000, "most hits per page")
    auto_fit_threshold: int = setting(
        1_000,
        "fit a projection (lower bounds for EXACT, lists for FAST) once a collection has "
        "this many images",
    )
    refit_growth: float = setting(
        4.0, "refit in the background each time a collection grows this many times; 0: never"
    )
    projection_dimensions: int = setting(99, "PCA dimensions of the cube (1-99)")
    projection_sample: int = setting(50_000, "vectors sampled to fit a projection")
    fit_memory_bytes: int = setting(
        1 << 30, "most memory a fit's sample may take; larger models sample fewer rows"
    )
    default_probes: int = setting(32, "FAST: candidate lists probed when a search asks for 0")
    default_candidates: int = setting(
        100, "FAST: candidates re-ranked exactly when a search asks for 0"
    )
    rerank_parallelism: int = setting(
        4, "FAST: connections one search reads its candidates' vectors over at once"
    )
    metrics_refresh_s: float = setting(
        30.0,
        "how often the per-collection metrics (images, projection state) are read from the "
        "database, in the background; at least 20 times the read's own duration",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.extractor_tls_cert_file is None) != (self.extractor_tls_key_file is None):
            raise ValueError("need both extractor_tls_cert_file and extractor_tls_key_file")
        if self.extractor_tls_cert_file is not None and self.extractor_tls_ca_file is None:
            raise ValueError("a client certificate for the extractor needs extractor_tls_ca_file")
        if not 1 <= self.projection_dimensions <= 99:
            raise ValueError(
                f"projection_dimensions must be 1..99 (cube holds 100: the coordinates and "
                f"the residual's norm), got {self.projection_dimensions}"
            )
        if self.refit_growth != 0 and not self.refit_growth > 1:
            raise ValueError(f"refit_growth must be 0 (never) or above 1, got {self.refit_growth}")
        if min(self.ingest_concurrency, self.stream_batch_items, self.rerank_parallelism) < 1:
            raise ValueError(
                f"need ingest_concurrency, stream_batch_items and rerank_parallelism >= 1, got "
                f"{self.ingest_concurrency}, {self.stream_batch_items} and "
                f"{self.rerank_parallelism}"
            )
        if self.max_metadata_bytes < 2:
            raise ValueError(f"max_metadata_bytes must be >= 2, got {self.max_metadata_bytes}")
        if self.metrics_refresh_s <= 0:
            raise ValueError(f"metrics_refresh_s must be > 0, got {self.metrics_refresh_s}")
        if self.database_check_s <= 0:
            raise ValueError(f"database_check_s must be > 0, got {self.database_check_s}")
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise ValueError("need 1 <= default_top_k <= max_top_k")
        if not 0 <= self.pool_min_size <= self.pool_max_size or self.pool_max_size < 1:
            raise ValueError(
                f"need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1, "
                f"got {self.pool_min_size} and {self.pool_max_size}"
            )
