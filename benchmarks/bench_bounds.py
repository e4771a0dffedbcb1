"""EXACT's share of rows re-ranked, on real Lite0 features of Fashion-MNIST, by dimension."""

# Usage:
#   python -m benchmarks.bench_bounds [--images 10000] [--queries 200] [--dims 64,99]
#
# Lite0 (real ImageNet weights, exported here) embeds the Fashion-MNIST test split with the
# extractor's own preprocessing and ONNX Runtime session; a search service in this process
# stores the vectors (precomputed, through gRPC) in a throwaway cluster and fits its
# projection at each dimension; then EXACT searches by stored key (the key left out) and
# the ranker counts the rows it re-ranked. Each answer is checked against numpy, and FAST
# at the service's defaults is measured against it (recall@10).

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.machine import load_average
from devenv.postgres import LocalPostgres
from devenv.stack import Stack
from evaluation import fashion
from extractor_service.export import lite0
from extractor_service.export.onnx_export import export_model
from extractor_service.preprocess import preprocess
from extractor_service.runtime import OnnxModel
from imagesearch.search.v1 import search_pb2
from search_service.domain import Query
from search_service.ranking import Work
from search_service.vectors import unit, unit_rows

K = 10


def say(text: str = "") -> None:
    print(text, flush=True)


def embed(sample: fashion.Sample, work: Path) -> np.ndarray:
    export_model(lite0.lite0(), work / "lite0")
    model = OnnxModel.load(work / "lite0")
    manifest = model.manifest
    config = manifest.preprocess_config()
    out = []
    for start in range(0, len(sample.keys), 32):
        batch = [
            preprocess(sample.png(i), config, item=sample.keys[i])
            for i in range(start, min(start + 32, len(sample.keys)))
        ]
        out.append(model.run(np.stack(batch)))
    return np.concatenate(out).astype(np.float32)


def load_or_embed(sample: fashion.Sample, work: Path, cache: Path | None) -> np.ndarray:
    """The embeddings, from ``cache`` when it holds them (written there otherwise)."""
    if cache is not None and cache.is_file():
        vectors: np.ndarray = np.load(cache)
        return vectors
    vectors = embed(sample, work)
    if cache is not None:
        np.save(cache, vectors)
    return vectors


async def measure(vectors: np.ndarray, cluster: LocalPostgres, options: argparse.Namespace) -> None:
    model = search_pb2.Model(name="efficientnet-lite0", version="bench", dimension=1280)
    keys = [f"k{i:05d}" for i in range(len(vectors))]
    units = unit_rows(vectors)
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(vectors), size=options.queries, replace=False)
    for dims in options.dims:
        async with Stack() as stack:
            app = await stack.search(
                cluster.dsn(f"d{dims}"),
                extractor_address="127.0.0.1:1",
                auto_fit_threshold=10**9,
                projection_dimensions=dims,
                **({"default_candidates": options.candidates} if options.candidates else {}),
            )
            stub = stack.search_stub(app)
            for start in range(0, len(vectors), 250):
                items = [
                    search_pb2.IngestItem(
                        key=keys[i],
                        embedding=search_pb2.PrecomputedEmbedding(
                            vector=search_pb2.Vector(values=vectors[i].tolist()), model=model
                        ),
                    )
                    for i in range(start, min(start + 250, len(vectors)))
                ]
                await stub.Ingest(search_pb2.IngestRequest(items=items))
            began = time.perf_counter()
            await stub.RefitProjection(search_pb2.RefitProjectionRequest(dimensions=dims))
            fit_s = time.perf_counter() - began
            assert app.backend is not None
            collection = await app.backend.store.collection("")
            shares, same, recalled = [], 0, 0
            settings = app.settings
            version = collection.serving_version
            assert version is not None
            for i in chosen:
                work = Work()
                query = Query(vector=unit(vectors[i]), limit=K, exclude_key=keys[i])
                hits = await app.backend.ranker.exact(collection, query, work)
                fast = await app.backend.ranker.fast(
                    collection,
                    version,
                    query,
                    probes=settings.default_probes,
                    candidates=settings.default_candidates,
                )
                recalled += len({h.key for h in fast} & {h.key for h in hits})
                distances = np.linalg.norm(units - units[i], axis=1)
                distances[i] = np.inf
                order = np.lexsort((np.array(keys), distances))[:K]
                same += [h.key for h in hits] == [keys[j] for j in order]
                shares.append(work.reranked / len(vectors))
            share = np.array(shares)
            say(
                f"{dims:>3}-D + residual  fit {fit_s:5.1f} s  rows re-ranked per query: "
                f"median {np.median(share):.2%}, p90 {np.percentile(share, 90):.2%}, max "
                f"{share.max():.2%} of {len(vectors):,}  EXACT == numpy on {same}/{len(chosen)}; "
                f"FAST defaults ({settings.default_probes} probes, "
                f"{settings.default_candidates} candidates) R@{K} "
                f"{recalled / (K * len(chosen)):.3f}"
            )


def prepare(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o755)


async def main_async(options: argparse.Namespace) -> None:
    say(f"load average {load_average()} at start")
    per_class = options.images // len(fashion.CLASSES)
    sample = fashion.load(per_class=per_class)
    work: Path = options.data_dir
    prepare(work)
    cluster = LocalPostgres(work / "pg", durable=False)
    try:
        cluster.start()
        for dims in options.dims:
            cluster.psql(f"CREATE DATABASE d{dims}")
        began = time.perf_counter()
        vectors = load_or_embed(sample, work, options.vectors)
        say(
            f"Fashion-MNIST test split, {len(vectors):,} images ({per_class} per class), "
            f"Lite0 1280-D embedded in {time.perf_counter() - began:.0f} s; {options.queries} "
            f"queries by stored key, top {K}"
        )
        await measure(vectors, cluster, options)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    say(f"load average {load_average()} at end")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000, help="Fashion-MNIST images")
    parser.add_argument("--queries", type=int, default=200, help="EXACT queries per dimension")
    parser.add_argument("--dims", default="64,99", help="projection dimensions to measure")
    parser.add_argument(
        "--candidates", type=int, default=0, help="FAST's candidates (the service default)"
    )
    parser.add_argument(
        "--vectors", type=Path, default=None, help="an .npy file to keep the embeddings in"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "imagesearch-bounds"
    )
    options = parser.parse_args(argv)
    options.dims = [int(d) for d in options.dims.split(",") if d]
    return options


if __name__ == "__main__":
    asyncio.run(main_async(parse()))
