"""``imagesearch search``: the nearest images in meaning, as a table, a page or a sheet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagesearch.search.v1 import search_pb2
from imagesearch_cli.client import CALL_TIMEOUT_S, Client, CliError
from imagesearch_cli.gallery import Shown, resolve
from imagesearch_cli.htmlpage import write_html
from imagesearch_cli.sheet import write_sheet

MODES = {
    "auto": search_pb2.SEARCH_MODE_UNSPECIFIED,
    "exact": search_pb2.SEARCH_MODE_EXACT,
    "fast": search_pb2.SEARCH_MODE_FAST,
}


def run(
    client: Client,
    *,
    image: Path | None,
    key: str | None,
    top_k: int,
    mode: str,
    metadata_filter: str | None,
    root: Path,
    html: Path | None,
    png: Path | None,
) -> int:
    asked: bytes | str
    if image is not None:
        try:
            asked = image.read_bytes()
        except OSError as error:
            raise CliError(f"cannot read {image}: {error.strerror}") from error
        label = image.name
        query = Shown(image, f"query: {label}")
    else:
        assert key is not None  # argparse requires one of the two
        asked = label = key
        query = Shown(resolve(root, key), f"query: {key}", ("(stored key)",))
    response = client.api.search(
        asked,
        top_k=top_k,
        mode=MODES[mode],
        filter=_json_object(metadata_filter) if metadata_filter else None,
        timeout=CALL_TIMEOUT_S,
    )
    hits = response.hits

    width = max((len(hit.key) for hit in hits), default=3)
    print(f"{'rank':>4}  {'key':<{width}}  {'distance':>8}  {'similarity':>10}")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.key:<{width}}  {hit.distance:>8.4f}  {hit.similarity:>10.4f}")
    if not hits:
        print(f"no hits in collection {client.collection_name!r}")

    shown = [
        Shown(
            resolve(root, hit.key),
            f"{hit.rank}. {hit.key}",
            (f"distance {hit.distance:.4f}", f"similarity {hit.similarity:.4f}"),
        )
        for hit in hits
    ]
    mode_name = search_pb2.SearchMode.Name(response.mode).removeprefix("SEARCH_MODE_")
    heading = f"{label}: the {len(hits)} nearest in {client.collection_name!r} ({mode_name})"
    for out, write in ((html, write_html), (png, write_sheet)):
        if out is not None:
            write(out, query, shown, heading=heading)
            print(f"wrote {out}")
    return 0


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise CliError(f"--filter: not JSON: {error}") from error
    if not isinstance(value, dict):
        raise CliError('--filter: must be a JSON object, e.g. {"album": "pets"}')
    return value
