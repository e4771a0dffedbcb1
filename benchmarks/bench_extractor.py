"""Extractor throughput: raw ONNX Runtime vs torch eager vs the gRPC service, one run.

    python -m benchmarks.bench_extractor [--model vgg16|efficientnet-lite0] [--quick]

Prints images/s and latency percentiles for batch 1, 8 and 32; the achieved GFLOP/s
against this machine's fp32 matmul peak; the service's throughput under concurrent
clients as a share of raw ONNX Runtime at batch 32; and the serving process's peak RSS.
VGG16 uses random weights of the right shapes (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import torch

from devenv import photos
from extractor_service.export import lite0, vgg16
from extractor_service.export.onnx_export import export_model
from extractor_service.runtime import OnnxModel
from imagesearch.extractor.v1 import extractor_pb2, extractor_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
GFLOP_PER_IMAGE = {"vgg16": 30.9, "efficientnet-lite0": 0.8}  # 2 x MACs at 224x224


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    call()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def matmul_peak() -> float:
    a = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)
    seconds = statistics.median(timed(lambda: a @ a, 5))
    return 2 * 4096**3 / seconds / 1e9


def report(label: str, batch: int, samples: list[float], gflop: float, peak: float) -> float:
    p50, p95 = percentiles(samples)
    rate = batch / p50
    print(
        f"  {label:<12} batch {batch:>2}: {rate:7.2f} images/s   "
        f"latency p50 {p50 * 1000:8.1f} ms  p95 {p95 * 1000:8.1f} ms   "
        f"{rate * gflop:6.1f} GFLOP/s ({rate * gflop / peak:4.0%} of peak)"
    )
    return rate


def peak_rss(pid: int) -> int:
    """A process's peak resident set size in KiB (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


async def service_throughput(
    model_dir: Path, batch: int, clients: int, seconds: float
) -> tuple[float, int]:
    """Images/s the service sustains with ``clients`` callers sending ``batch`` images each."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extractor_service", "--model-dir", str(model_dir),
        "--log-format", "json", "--max-batch-size", str(batch),
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert process.stderr is not None
    while line := await process.stderr.readline():
        entry = json.loads(line)
        if entry["msg"] == "serving":
            port = entry["port"]
            break
    # Camera-like input: JPEGs of real photos, decoded by the service as in production.
    names = ("chelsea", "coffee", "astronaut", "rocket")
    data = [photos.encode(photos.photo(n).convert("RGB"), "JPEG") for n in names]
    request = extractor_pb2.EmbedRequest(
        images=[extractor_pb2.Image(id=str(i), data=data[i % len(data)]) for i in range(batch)]
    )
    done = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = extractor_pb2_grpc.ExtractorServiceStub(channel)
        await stub.Embed(request)  # warm-up

        async def client(until: float) -> None:
            nonlocal done
            while time.perf_counter() < until:
                response = await stub.Embed(request)
                done += sum(r.HasField("embedding") for r in response.results)

        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    peak_rss_kb = peak_rss(process.pid)
    process.send_signal(signal.SIGTERM)
    await process.wait()
    return done / elapsed, peak_rss_kb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["vgg16", "efficientnet-lite0"], default="vgg16")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    options = parser.parse_args()
    repeats = {1: 5, 8: 3, 32: 2} if options.quick else {1: 10, 8: 5, 32: 3}

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}")
    peak = matmul_peak()
    print(f"fp32 matmul peak (numpy 4096x4096): {peak:.0f} GFLOP/s")

    source = vgg16.random_vgg16(0) if options.model == "vgg16" else lite0.lite0()
    gflop = GFLOP_PER_IMAGE[options.model]
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch) / options.model
        export_model(source, model_dir)
        model = OnnxModel.load(model_dir)
        print(f"\n{options.model} to {model.manifest.layer}, {model.manifest.dimension}-D, "
              f"ONNX Runtime providers {model.providers}")  # fmt: skip
        rng = np.random.default_rng(0)
        raw_rates = {}
        for batch, count in repeats.items():
            inputs = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
            raw_rates[batch] = report(
                "onnxruntime",
                batch,
                timed(functools.partial(model.run, inputs), count),
                gflop,
                peak,
            )
            tensor = torch.from_numpy(inputs)

            def eager(x: torch.Tensor = tensor) -> None:
                with torch.inference_mode():
                    source.module(x)

            eager_rate = report("torch eager", batch, timed(eager, count), gflop, peak)
            print(f"  {'':<12} onnxruntime / torch eager = {raw_rates[batch] / eager_rate:.2f}x")

        batch = 32
        for clients in (1, 2, 4):
            seconds = 10 if options.quick else 20
            rate, rss_kb = asyncio.run(service_throughput(model_dir, batch, clients, seconds))
            print(
                f"  gRPC service batch {batch}, {clients} client(s): {rate:7.2f} images/s "
                f"= {rate / raw_rates[batch]:.0%} of raw onnxruntime; "
                f"peak RSS {rss_kb / 1024:.0f} MiB"
            )


if __name__ == "__main__":
    main()
