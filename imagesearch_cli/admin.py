"""``imagesearch stats``, ``delete`` and ``refit``: the operator's commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from imagesearch.search.v1 import search_pb2
from imagesearch_cli.client import CALL_TIMEOUT_S, Client


def _model(model: search_pb2.Model) -> str:
    if not model.name:
        return "none yet (bound by the first image stored)"
    version = f" {model.version}" if model.version else ""
    return f"{model.name}{version}, {model.dimension}-D"


def _projection(projection: search_pb2.Projection) -> str:
    state = search_pb2.ProjectionState.Name(projection.state).removeprefix("PROJECTION_STATE_")
    if projection.state == search_pb2.PROJECTION_STATE_NONE:
        return "none: searches are EXACT (`imagesearch refit` fits one)"
    fitted = projection.fitted_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"v{projection.version} {state.lower()}: {projection.dimensions} dimensions, "
        f"{projection.lists} lists, fitted on {projection.fitted_on} images at {fitted}"
    )


def _describe(stats: search_pb2.CollectionStats) -> None:
    created = stats.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    for label, value in (
        ("collection", stats.name),
        ("images", str(stats.image_count)),
        ("model", _model(stats.model)),
        ("projection", _projection(stats.projection)),
        ("created", created),
    ):
        print(f"{label:<11} {value}")


def stats(client: Client, *, every: bool) -> int:
    if not every:
        _describe(client.api.collection_stats(timeout=CALL_TIMEOUT_S))
        return 0
    for index, collection in enumerate(client.api.list_collections(timeout=CALL_TIMEOUT_S)):
        if index:
            print()
        _describe(collection)
    return 0


def delete(client: Client, keys: Sequence[str]) -> int:
    response = client.api.delete_images(keys, timeout=CALL_TIMEOUT_S)
    print(f"deleted {response.deleted_count} from {client.collection_name!r}")
    if response.missing_keys:
        # Not an error for the service, and deleting is idempotent: a warning only.
        print(f"not found: {', '.join(response.missing_keys)}", file=sys.stderr)
    return 0


def refit(client: Client, *, dimensions: int, lists: int) -> int:
    # No deadline: fitting a large collection takes as long as it takes, and the old
    # projection serves meanwhile.
    projection = client.api.refit_projection(dimensions=dimensions, lists=lists)
    print(f"projection {_projection(projection)}")
    return 0
