"""Reduced precision on the CPU: int8 variants against fp32, speed and embedding quality, one run.

    python -m benchmarks.bench_precision [--models vgg16,efficientnet-lite0] [--variants a,b]

For each model (VGG16 with random weights of the right shapes, EfficientNet-Lite0 with its
real weights) and precision, prints images/s at batch 1 and 8 (median over rounds), the
speed ratio to fp32 timed in the same rounds, the file size, the cosine of each embedding
to fp32's (min / median) over held-out photos the calibration never saw, and retrieval mAP
on those photos. Timing rounds interleave the models, so a neighbour's load on a shared
machine hits fp32 and int8 alike and the ratios stay fair even when the absolutes do not.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

from extractor_service.export import lite0, quantize, vgg16
from extractor_service.export.onnx_export import export_model
from extractor_service.runtime import OnnxModel

Array = npt.NDArray[np.float32]
MODELS = ("vgg16", "efficientnet-lite0")
# Each VGG16 variant costs ~30 s to quantize; there the per-tensor and percentile questions
# were already answered by Lite0, whose weights are real.
MODEL_VARIANTS = {
    "vgg16": ("qdq", "qdq-fp32-first-conv", "qdq-s8s8", "qdq-fp32-gemm"),
    # Lite0 has no Gemm: qdq-fp32-gemm would be qdq again.
    "efficientnet-lite0": tuple(v for v in quantize.VARIANTS if v != "qdq-fp32-gemm"),
}


@dataclass
class Candidate:
    label: str
    model: OnnxModel
    size_mb: float
    prepare_s: float
    batch1: list[float]
    batch8: list[float]


def export(name: str, out: Path) -> None:
    source = vgg16.random_vgg16(0) if name == "vgg16" else lite0.lite0()
    export_model(source, out)


def held_out() -> tuple[dict[str, bytes], list[int]]:
    """Photos the calibration never saw, and a group id per augmented image for mAP."""
    photos = {
        name: data
        for name, data in quantize.sample_photos(include_held_out=True).items()
        if name in quantize.HELD_OUT
    }
    per_photo = len(list(quantize.augmentations(next(iter(photos.values())))))
    groups = [g for g in range(len(photos)) for _ in range(per_photo)]
    return photos, groups


def normalised(vectors: Array) -> Array:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: Array = vectors / np.maximum(norms, 1e-12)
    return out


def mean_average_precision(vectors: Array, groups: list[int]) -> float:
    """Each image queries the others; relevant: the other augmentations of its photo."""
    unit = normalised(vectors)
    labels = np.asarray(groups)
    precisions = []
    for query in range(len(unit)):
        distances = np.linalg.norm(unit - unit[query], axis=1)
        order = [i for i in np.argsort(distances, kind="stable") if i != query]
        relevant = labels[order] == labels[query]
        hits = np.cumsum(relevant)
        ranks = np.arange(1, len(order) + 1)
        precisions.append(float((hits / ranks)[relevant].mean()))
    return float(np.mean(precisions))


def time_round(candidate: Candidate, inputs: Array, repeats: int) -> None:
    """Eight images at batch 1, then the same eight as one batch of 8, each repeats times."""
    started = time.perf_counter()
    for _ in range(repeats):
        for i in range(8):
            candidate.model.run(inputs[i : i + 1])
    candidate.batch1.append(8 * repeats / (time.perf_counter() - started))
    started = time.perf_counter()
    for _ in range(repeats):
        candidate.model.run(inputs[:8])
    candidate.batch8.append(8 * repeats / (time.perf_counter() - started))


def bench_model(name: str, variants: list[str], work: Path, rounds: int) -> None:
    fp32_dir = work / name / "fp32"
    started = time.perf_counter()
    export(name, fp32_dir)
    fp32 = OnnxModel.load(fp32_dir)
    candidates = [
        Candidate(
            "fp32",
            fp32,
            (fp32_dir / "model.onnx").stat().st_size / 1e6,
            time.perf_counter() - started,
            [],
            [],
        )
    ]
    # Calibration ranges depend on the method, not on how they are turned into int8.
    caches = work / name / "calibration"
    caches.mkdir()
    for variant_name in variants:
        variant = quantize.VARIANTS[variant_name]
        out = work / name / variant_name
        started = time.perf_counter()
        # The percentile calibrator prints its progress; the table is what this prints.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize.quantize_model(
                fp32_dir,
                out,
                variant=variant,
                calibration_cache=caches / f"{variant.calibrate_method.name}.json",
            )
        candidates.append(
            Candidate(
                f"int8 {variant_name}",
                OnnxModel.load(out),
                (out / "model.onnx").stat().st_size / 1e6,
                time.perf_counter() - started,
                [],
                [],
            )
        )
    photos, groups = held_out()
    config = fp32.manifest.preprocess_config()
    inputs = np.stack(quantize.calibration_inputs(photos, config))
    reference = normalised(fp32.run(inputs))
    for candidate in candidates:
        candidate.model.run(inputs[:8])  # warm-up: lazy initialisation, page faults
    # Rounds of at least ~0.5 s of fp32 work, so one scheduler hiccup is a small part of one.
    started = time.perf_counter()
    fp32.run(inputs[:8])
    repeats = max(1, round(0.5 / (time.perf_counter() - started)))
    for i in range(rounds):
        # A different model goes first each round: none always follows the slowest.
        for candidate in candidates[i % len(candidates) :] + candidates[: i % len(candidates)]:
            time_round(candidate, inputs, repeats)
    weights = "random weights" if name == "vgg16" else "real weights"
    print(
        f"\n{name} ({weights}); {len(inputs)} held-out images from {len(photos)} photos "
        f"({', '.join(sorted(photos))}); median of {rounds} interleaved rounds of "
        f"{repeats} x 8 images per batch size"
    )
    print(
        f"  {'precision':<26}{'b1 img/s':>9}{'x fp32':>8}{'b8 img/s':>10}{'x fp32':>8}"
        f"{'MB':>8}{'cos min':>9}{'cos med':>9}{'mAP':>7}{'prep s':>8}"
    )
    base1, base8 = statistics.median(candidates[0].batch1), statistics.median(candidates[0].batch8)
    for candidate in candidates:
        rate1, rate8 = statistics.median(candidate.batch1), statistics.median(candidate.batch8)
        vectors = candidate.model.run(inputs)
        cosine = (normalised(vectors) * reference).sum(axis=1)
        print(
            f"  {candidate.label:<26}{rate1:9.2f}{rate1 / base1:7.2f}x{rate8:10.2f}"
            f"{rate8 / base8:7.2f}x{candidate.size_mb:8.1f}{cosine.min():9.4f}"
            f"{np.median(cosine):9.4f}{mean_average_precision(vectors, groups):7.3f}"
            f"{candidate.prepare_s:8.0f}"
        )
    print("  prep s: seconds to export (fp32) or to quantize, calibration included the first time")
    for variant_name in variants:
        print(f"  {variant_name}: {quantize.VARIANTS[variant_name].describe()}")


def cpu_description() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    wanted = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "avx512_fp16")
    return f"{model or platform.processor()}; {' '.join(f for f in wanted if f in flags)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", help="comma-separated; default: a list per model")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(
        f"CPU: {cpu_description()}; {os.cpu_count()} CPUs, onnxruntime {onnxruntime.__version__}"
        f"; load average {os.getloadavg()[0]:.1f} at start"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as work:
        for name in args.models.split(","):
            variants = args.variants.split(",") if args.variants else MODEL_VARIANTS[name]
            bench_model(name, list(variants), Path(work), args.rounds)
    print(
        f"\n{time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} at end "
        "(a shared machine: compare the ratios, which come from the same rounds)"
    )


if __name__ == "__main__":
    main()
