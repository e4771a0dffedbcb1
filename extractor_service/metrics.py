"""The extractor's own metrics: its queue, its batches, preprocessing and inference times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service_core.metrics import LATENCY_BUCKETS

Outcome = Literal["ok", "invalid", "rejected", "error"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "invalid", "rejected", "error")

# Powers of two up to 256 (max_batch_size is 32 by default): whether batches fill.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Decoding one image: sub-millisecond for a thumbnail, a second for a 40 MP PNG.
_PREPROCESS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ExtractorMetrics:
    """Registered on the server's registry; every child is looked up once, here."""

    def __init__(self, registry: CollectorRegistry, *, queue_depth: Callable[[], float]) -> None:
        gauge = Gauge(
            "extractor_queue_depth",
            "Images admitted and not yet answered (decoding, waiting for a batch, in the model).",
            registry=registry,
        )
        # Read at scrape time: the admission count is the truth, nothing to keep in step.
        gauge.set_function(queue_depth)
        self.batch_size = Histogram(
            "extractor_batch_size",
            "Images per model run.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.preprocess_seconds = Histogram(
            "extractor_preprocess_seconds",
            "Seconds decoding and preprocessing one image, on a decode thread.",
            buckets=_PREPROCESS_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "extractor_inference_seconds",
            "Seconds of one model run (one batch).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        images = Counter(
            "extractor_images",
            "Images answered, by outcome: ok (embedded), invalid (not a decodable image), "
            "rejected (over a limit: queue or pixels), error (the model run failed, the "
            "deadline passed, the service stopped).",
            ["outcome"],
            registry=registry,
        )
        self.images: dict[Outcome, Counter] = {o: images.labels(o) for o in OUTCOMES}

    def ran(self, batch: int, seconds: float) -> None:
        """A model run of ``batch`` images finished in ``seconds``."""
        self.batch_size.observe(batch)
        self.inference_seconds.observe(seconds)
