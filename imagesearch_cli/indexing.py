"""``imagesearch index DIR``: upload a folder's images, resumably, with a summary."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from imagesearch.client import Item, ItemResult, NotFound
from imagesearch.client.connection import MAX_MESSAGE_BYTES
from imagesearch.search.v1 import search_pb2
from imagesearch_cli import files
from imagesearch_cli.client import CALL_TIMEOUT_S, Client, CliError
from imagesearch_cli.progress import Progress

# A file this large would not fit in one message and would end the whole stream.
MAX_FILE_BYTES = MAX_MESSAGE_BYTES - 1024 * 1024
Todo = tuple[files.ImageFile, dict[str, Any]]


@dataclass
class Tally:
    """What happened to each image."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("created", "updated", "unchanged", "failed"), 0)
    )
    failures: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, key: str, message: str) -> None:
        self.counts["failed"] += 1
        self.failures.append((key, message))

    def record(self, result: ItemResult) -> None:
        if result.error is not None:
            self.fail(result.key, f"{result.error.code.name}: {result.error.message}")
        else:
            name = search_pb2.IngestStatus.Name(result.status)
            self.counts[name.removeprefix("INGEST_STATUS_").lower()] += 1


def run(client: Client, folder: Path, *, metadata_file: Path | None, check: bool) -> int:
    found = files.scan(folder)
    mapping = files.load_mapping(metadata_file) if metadata_file else {}
    tally = Tally()
    todo: list[Todo] = []
    for image in found.images:
        if image.size > MAX_FILE_BYTES:
            tally.fail(image.key, f"{image.size} bytes; at most {MAX_FILE_BYTES} fit a message")
            continue
        if not image.key.isprintable():
            # Keys are UTF-8 strings: a name in another encoding decodes to surrogates,
            # which are not printable and cannot be sent.
            tally.fail(ascii(image.key), "the file name is not printable UTF-8; rename it")
            continue
        try:
            todo.append((image, files.metadata_for(image, mapping)))
        except CliError as error:
            tally.fail(image.key, str(error))
    stored = _ensure_collection(client)
    started = time.monotonic()
    progress = Progress(len(found.images), "indexing")
    progress.advance(len(tally.failures))
    sent = [0]
    try:
        if check and stored:
            todo = _not_stored(client, todo, tally, progress)
        _upload(client, todo, tally, progress, sent)
    except KeyboardInterrupt:
        raise CliError("interrupted; run the same command again to resume") from None
    finally:
        progress.close()
    elapsed = max(time.monotonic() - started, 1e-6)
    counts = tally.counts
    print(
        f"{len(found.images)} images in {elapsed:.1f} s ({len(found.images) / elapsed:.1f} "
        f"images/s); uploaded {sent[0] / 1e6:.1f} MB ({sent[0] / 1e6 / elapsed:.1f} MB/s)"
    )
    print(", ".join(f"{name} {count}" for name, count in counts.items()))
    if found.skipped:
        print(f"skipped {len(found.skipped)} non-image files")
    if tally.failures:
        print("failures:")
        for key, message in tally.failures:
            print(f"  {key}: {message}")
    return 1 if tally.failures else 0


def _ensure_collection(client: Client) -> int:
    """The collection's image count; creates it first, so indexing a new one is one step."""
    try:
        return client.api.collection_stats(timeout=CALL_TIMEOUT_S).image_count
    except NotFound as error:
        if error.reason != "COLLECTION_NOT_FOUND":
            raise
    client.api.create_collection(client.collection, timeout=CALL_TIMEOUT_S)
    print(f"created collection {client.collection!r}")
    return 0


def _not_stored(
    client: Client, todo: Sequence[Todo], tally: Tally, progress: Progress
) -> list[Todo]:
    """The images whose bytes or metadata differ from what is stored.

    The server would answer UNCHANGED for the others too, but only after receiving
    every byte again; asking for each key's hash first makes a re-run upload nothing.
    (Skipped for an empty collection, where every answer would be NOT_FOUND.)
    """
    stored = client.api.get_images([image.key for image, _ in todo], timeout=CALL_TIMEOUT_S)
    remaining: list[Todo] = []
    for image, metadata in todo:
        record = stored.get(image.key)
        if (
            record is not None
            and record.content_sha256 == files.sha256_of(image.path)
            and json_format.MessageToDict(record.metadata) == metadata
        ):
            tally.counts["unchanged"] += 1
            progress.advance()
        else:
            remaining.append((image, metadata))
    return remaining


def _upload(
    client: Client, todo: Sequence[Todo], tally: Tally, progress: Progress, sent: list[int]
) -> None:
    unreadable: list[tuple[str, str]] = []

    def items() -> Iterator[Item]:
        # The client reads this on a thread, no faster than the server answers, so
        # only a window of the folder is in memory at once.
        for image, metadata in todo:
            try:
                data = image.path.read_bytes()
            except OSError as error:
                unreadable.append((image.key, f"cannot read {image.path}: {error.strerror}"))
                continue
            sent[0] += len(data)
            yield Item(image.key, image=data, metadata=metadata or None)

    if todo:
        # One image per message: images are large, so messages are few anyway.
        for result in client.api.ingest_stream(items(), batch_items=1, window=8):
            tally.record(result)
            progress.advance()
    for key, message in unreadable:
        tally.fail(key, message)
        progress.advance()
