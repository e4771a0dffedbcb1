"""The extractor service's settings (environment prefix ``EXTRACTOR_``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service_core.config import setting
from service_core.settings import ServerSettings

ENV_PREFIX = "EXTRACTOR_"


@dataclass(frozen=True, kw_only=True)
class ExtractorSettings(ServerSettings):
    """Which model to serve, on what hardware, with which limits."""

    model_dir: Path = setting(
        Path("models/default"), "exported model directory (model.onnx + manifest.json)"
    )
    providers: tuple[str, ...] = setting(
        (), "ONNX Runtime execution providers, best first; empty picks TensorRT, CUDA, CPU"
    )
    intra_op_threads: int = setting(0, "threads inside one operator; 0 uses every CPU")
    max_batch_size: int = setting(32, "most images run through the model at once")
    max_batch_wait_ms: float = setting(5.0, "how long a batch waits for more images")
    max_queue_images: int = setting(256, "images waiting beyond this get RESOURCE_EXHAUSTED")
    max_request_images: int = setting(64, "most images in one Embed request")
    max_image_pixels: int = setting(40_000_000, "largest decoded image, width x height")
    max_request_pixels: int = setting(
        160_000_000,
        "pixels one Embed request may decode (JPEGs count at their reduced decode size); "
        "images past it get RESOURCE_EXHAUSTED",
    )
    preprocess_workers: int = setting(0, "threads decoding images; 0 uses every CPU")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = {
            "max_batch_size": self.max_batch_size,
            "max_queue_images": self.max_queue_images,
            "max_request_images": self.max_request_images,
            "max_image_pixels": self.max_image_pixels,
            "max_request_pixels": self.max_request_pixels,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_request_images > self.max_queue_images:
            raise ValueError(
                f"max_request_images ({self.max_request_images}) must not exceed "
                f"max_queue_images ({self.max_queue_images}): such a request could never run"
            )
        if self.max_batch_wait_ms < 0 or self.intra_op_threads < 0 or self.preprocess_workers < 0:
            raise ValueError("max_batch_wait_ms, intra_op_threads, preprocess_workers must be >= 0")
