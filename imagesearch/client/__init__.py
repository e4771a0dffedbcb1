"""A typed Python client of the search service (hand-written; the rest of the package is
generated). See docs/client.md.

    from imagesearch.client import Connection, Item, SearchClient

    with SearchClient(Connection("127.0.0.1:50052"), collection="photos") as client:
        for result in client.ingest_stream(Item(p.name, image=p.read_bytes()) for p in paths):
            if result.error:
                print(result.key, result.error.reason, result.error.field_path)
        page = client.search(b"...jpeg bytes...", top_k=5)
"""

from imagesearch.client.aio import AsyncSearchClient
from imagesearch.client.connection import Connection, Tls, default_service_config
from imagesearch.client.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SearchError,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
    from_status,
)
from imagesearch.client.sync import SearchClient
from imagesearch.client.types import (
    CREATED,
    EXACT,
    FAILED,
    FAST,
    UNCHANGED,
    UPDATED,
    Item,
    ItemResult,
    Model,
)

__all__ = [
    "CREATED",
    "EXACT",
    "FAILED",
    "FAST",
    "UNCHANGED",
    "UPDATED",
    "AlreadyExists",
    "AsyncSearchClient",
    "Cancelled",
    "Connection",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "Item",
    "ItemResult",
    "Model",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SearchClient",
    "SearchError",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "default_service_config",
    "from_rpc_error",
    "from_status",
]
