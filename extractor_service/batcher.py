"""Dynamic batching: concurrent requests share one model run, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from service_core.errors import DeadlineExceeded, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

Tensor = npt.NDArray[np.float32]


class Admission:
    """Counts images accepted but not yet answered, so queued work stays bounded.

    Unary calls are refused at once when the work would not fit (the caller
    retries with backoff); streams wait for room, which is their backpressure.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self._freed = asyncio.Event()

    def try_admit(self, count: int) -> None:
        if self.in_flight + count > self.capacity:
            raise ResourceExhausted(
                f"the extractor is busy: {self.in_flight} images in progress, room for "
                f"{self.capacity}; retry with backoff",
                reason="QUEUE_FULL",
                metadata={"limit": str(self.capacity)},
            )
        self.in_flight += count

    async def admit(self, count: int) -> None:
        while self.in_flight + count > self.capacity:
            self._freed.clear()
            await self._freed.wait()
        self.in_flight += count

    def release(self, count: int) -> None:
        self.in_flight -= count
        self._freed.set()  # every waiter re-checks whether it now fits


@dataclass
class _Pending:
    tensor: Tensor
    future: asyncio.Future[Tensor]
    deadline: float | None  # loop.time() after which the caller no longer waits
    trace: Context | None = None  # the caller's trace context, when tracing is on
    queued_ns: int = 0  # when it was queued (time.time_ns()), when tracing is on


class Batcher:
    """Groups single-image tensors into batches and runs them on one worker thread.

    A batch starts with the first waiting image and takes whatever else arrives
    within ``max_wait_s``, up to ``max_batch_size``. Images whose caller has gone
    (cancelled, or past its deadline) are dropped before the run.

    With a ``tracer``, each image's trace gets a "batch wait" span (queued until its
    batch's run starts) and an "inference" span (the run, shared by the whole batch,
    so each trace shows it): recorded after the run, with their real times.
    """

    def __init__(
        self,
        run: Callable[[Tensor], Tensor],
        *,
        max_batch_size: int,
        max_wait_s: float,
        ran: Callable[[int, float], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._run = run
        # Told (images, seconds) after each model run that succeeded: the metrics.
        self._ran = ran
        self._tracer = tracer
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task[None] | None = None
        self.batches_run = 0

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(_shutting_down())
        self._executor.shutdown(wait=True)

    async def embed(self, tensor: Tensor, deadline: float | None = None) -> Tensor:
        """The model's output row for one preprocessed image."""
        future: asyncio.Future[Tensor] = asyncio.get_running_loop().create_future()
        pending = _Pending(tensor, future, deadline)
        if self._tracer is not None:
            from opentelemetry import context

            pending.trace, pending.queued_ns = context.get_current(), time.time_ns()
        self._queue.put_nowait(pending)
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            closes = loop.time() + self._max_wait_s
            while len(batch) < self._max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = closes - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = self._live(batch, loop.time())
            if live:
                await self._run_batch(live, loop)

    def _live(self, batch: list[_Pending], now: float) -> list[_Pending]:
        live = []
        for pending in batch:
            if pending.future.done():  # the caller was cancelled
                continue
            if pending.deadline is not None and now >= pending.deadline:
                late = DeadlineExceeded(
                    "the deadline passed while the image waited for the model",
                    reason="DEADLINE_EXCEEDED_IN_QUEUE",
                )
                self._trace([pending], "batch wait", time.time_ns(), error=late)
                pending.future.set_exception(late)
                continue
            live.append(pending)
        return live

    def _timed(self, batch: Tensor) -> tuple[Tensor, float]:
        """The model's outputs and the seconds the run took, on the worker thread."""
        started = time.perf_counter()
        outputs = self._run(batch)
        return outputs, time.perf_counter() - started

    async def _run_batch(self, live: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        stacked = np.stack([p.tensor for p in live])
        started_ns = time.time_ns() if self._tracer is not None else 0
        self._trace(live, "batch wait", started_ns)
        try:
            outputs, seconds = await loop.run_in_executor(self._executor, self._timed, stacked)
        except asyncio.CancelledError:
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(_shutting_down())
            raise
        except Exception as error:  # handed to every caller of the batch
            log.exception("model run failed", extra={"batch": len(live)})
            self._trace(live, "inference", time.time_ns(), start_ns=started_ns, error=error)
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self._trace(live, "inference", time.time_ns(), start_ns=started_ns)
        self.batches_run += 1
        if self._ran is not None:
            self._ran(len(live), seconds)
        for pending, row in zip(live, outputs, strict=True):
            if not pending.future.done():
                pending.future.set_result(row)

    def _trace(
        self,
        pendings: list[_Pending],
        name: str,
        end_ns: int,
        *,
        start_ns: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Records span ``name`` in each image's trace: from ``start_ns`` (else from when
        the image was queued) to ``end_ns``."""
        if self._tracer is None:
            return
        from opentelemetry.trace import Status, StatusCode

        attributes = {"imagesearch.batch_size": len(pendings)} if name == "inference" else {}
        for pending in pendings:
            span = self._tracer.start_span(
                name,
                context=pending.trace,
                start_time=pending.queued_ns if start_ns is None else start_ns,
                attributes=attributes,
            )
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end(end_time=end_ns)


def _shutting_down() -> Unavailable:
    return Unavailable("the extractor is shutting down", reason="SHUTTING_DOWN")
