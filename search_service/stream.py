"""IngestStream's scheduling: items batched, written concurrently, answered in order."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagesearch.search.v1 import search_pb2
from service_core.errors import InvalidArgument

# Writes one batch of one collection's items; returns their results in order.
WriteBatch = Callable[
    [str, Sequence[search_pb2.IngestItem]],
    Coroutine[Any, Any, list[search_pb2.IngestResult]],
]


async def ingest_stream(
    request_iterator: AsyncIterator[search_pb2.IngestStreamRequest],
    write: WriteBatch,
    *,
    batch_items: int,
    concurrency: int,
) -> AsyncIterator[search_pb2.IngestStreamResponse]:
    """One response per request message, with its items' results, in stream order.

    Batches are written concurrently, each in its own transaction on its own connection,
    while results go back in stream order. A batch that shares a key with one in flight
    waits for it, so the stream's last write of a key wins.
    """
    in_flight: collections.deque[tuple[asyncio.Task[list[search_pb2.IngestResult]], _Batch]]
    in_flight = collections.deque()
    answer = search_pb2.IngestStreamResponse()  # the request message being answered

    async def completed() -> AsyncIterator[search_pb2.IngestStreamResponse]:
        nonlocal answer
        task, batch = in_flight.popleft()
        for result, last in zip(await task, batch.ends, strict=True):
            answer.results.append(result)
            if last:
                yield answer
                answer = search_pb2.IngestStreamResponse()

    batches = aiter(_batches(request_iterator, batch_items))
    arriving: asyncio.Future[_Batch] = asyncio.ensure_future(anext(batches))
    try:
        while True:
            # Answer each message as soon as its batches are in, even while the next
            # message has yet to come: a client may wait for an answer before sending.
            awaited: set[asyncio.Future[Any]] = {arriving}
            if in_flight:
                awaited.add(in_flight[0][0])
            await asyncio.wait(awaited, return_when=asyncio.FIRST_COMPLETED)
            while in_flight and in_flight[0][0].done():
                async for response in completed():
                    yield response
            if not arriving.done():
                continue
            try:
                batch = arriving.result()
            except StopAsyncIteration:
                break
            except InvalidArgument:
                # A malformed request message: answer the items before it, then fail.
                while in_flight:
                    async for response in completed():
                        yield response
                raise
            while in_flight and (
                len(in_flight) >= concurrency
                or any(batch.keys & earlier.keys for _, earlier in in_flight)
            ):
                async for response in completed():
                    yield response
            work = write(batch.collection, batch.items)
            in_flight.append((asyncio.create_task(work), batch))
            arriving = asyncio.ensure_future(anext(batches))
        while in_flight:
            async for response in completed():
                yield response
    finally:
        # The stream failed or the caller went away: later batches roll back.
        arriving.cancel()
        for task, _ in in_flight:
            task.cancel()
        await asyncio.gather(arriving, *(t for t, _ in in_flight), return_exceptions=True)


@dataclass
class _Batch:
    """Stream items written in one transaction; ``ends[i]``: item i closes its message."""

    collection: str
    items: list[search_pb2.IngestItem] = field(default_factory=list)
    ends: list[bool] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)


async def _batches(
    requests: AsyncIterator[search_pb2.IngestStreamRequest], size: int
) -> AsyncIterator[_Batch]:
    """Regroups a stream's items, in order, into batches of distinct keys of one collection.

    A batch closes when full, when the collection changes, when a key repeats, or
    when the client pauses, so a client that waits for each answer gets it.
    """
    queue: asyncio.Queue[search_pb2.IngestStreamRequest | None] = asyncio.Queue(maxsize=4)

    async def read() -> None:
        async for request in requests:
            await queue.put(request)
        await queue.put(None)

    reader = asyncio.create_task(read())
    # (collection, item, closes its message); an item of None stands for a message with
    # no items (its index in place of the collection), raised once the items before it
    # are batched.
    waiting: collections.deque[tuple[str, search_pb2.IngestItem | None, bool]]
    waiting = collections.deque()
    received = 0

    def unpack(request: search_pb2.IngestStreamRequest) -> None:
        nonlocal received
        if not request.items:
            waiting.append((str(received), None, True))
        received += 1
        last = len(request.items) - 1
        for i, item in enumerate(request.items):
            waiting.append((request.collection, item, i == last))

    try:
        ended = False
        while not ended:
            if not waiting:
                request = await _next(queue, reader)
                if request is None:
                    return
                unpack(request)
            if waiting[0][1] is None:
                raise InvalidArgument(
                    f"request message {waiting[0][0]}: items: send at least one",
                    reason="ITEM_COUNT_OUT_OF_RANGE",
                    field="items",
                    metadata={"message": waiting[0][0]},
                )
            batch = _Batch(waiting[0][0])
            while len(batch.items) < size:
                if not waiting:
                    if queue.empty():
                        await asyncio.sleep(0)  # let the reader add what has already arrived
                    if queue.empty():
                        break
                    request = queue.get_nowait()
                    if request is None:
                        ended = True
                        break
                    unpack(request)
                name, item, last = waiting[0]
                if item is None or name != batch.collection or item.key in batch.keys:
                    break
                waiting.popleft()
                batch.items.append(item)
                batch.ends.append(last)
                batch.keys.add(item.key)
            yield batch
    finally:
        reader.cancel()


async def _next(
    queue: asyncio.Queue[search_pb2.IngestStreamRequest | None], reader: asyncio.Task[None]
) -> search_pb2.IngestStreamRequest | None:
    """The next request, None at the end; raises what broke the client's stream."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if not getter.done() and reader.done() and (failure := reader.exception()):
        getter.cancel()
        raise failure
    return await getter
