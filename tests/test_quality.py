"""Retrieval quality: through the API, a labeled set ranks as well as numpy ranks its vectors."""

from __future__ import annotations

import gzip
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from devenv import photos as samples
from devenv.stack import Stack, address
from evaluation import fashion, photos
from evaluation.api import FAST, Api
from evaluation.metrics import (
    average_precision,
    overlap_at,
    precision_at,
    recall_at,
    score,
)
from evaluation.ranking import rank, unit_rows
from imagesearch.client import AsyncSearchClient, Connection

# API and numpy compute the same distances in different float order: they may differ in
# the last bits, which only matters for exactly tied distances.
TIE_TOLERANCE = 1e-6
COLLECTION = "quality"
Item = tuple[str, str, bytes]  # key, label, image file


def labeled_set() -> list[Item]:
    """4 Fashion-MNIST classes x 8 images; else real photos, each with 3 edited copies."""
    if fashion.available():
        sample = fashion.load(per_class=8, classes=4)
        return [
            (key, label, sample.png(i))
            for i, (key, label) in enumerate(zip(sample.keys, sample.labels, strict=True))
        ]
    originals = samples.originals()
    if len(originals) < 4:
        pytest.skip(
            "needs Fashion-MNIST (apt-get install dataset-fashion-mnist) or sample photos "
            "(scikit-image, or apt-get install darknet)"
        )
    edits = ["re-encoded (JPEG q90)", "flipped left-right", "centre crop 80%", "JPEG q30"]
    items = []
    for name in sorted(originals)[:8]:
        picture = samples.decode(originals[name])
        items += [(f"{name}/{edit}", name, photos.TRANSFORMS[edit](picture)) for edit in edits]
    return items


@pytest.fixture
async def api(database_url: str, lite0_model_dir: Path) -> AsyncIterator[Api]:
    """A real Lite0 extractor and a search service using it, on port 0."""
    async with Stack() as stack:
        extractor = await stack.extractor(lite0_model_dir)
        search = await stack.search(database_url, extractor_address=address(extractor))
        async with AsyncSearchClient(Connection(address(search))) as client:
            yield Api(client, stack.extractor_stub(extractor))


async def test_api_ranks_as_well_as_numpy_on_the_same_vectors(api: Api) -> None:
    items = labeled_set()
    keys = [key for key, _, _ in items]
    labels = {key: label for key, label, _ in items}
    await api.fresh_collection(COLLECTION)
    await api.ingest(COLLECTION, [(key, data, {"label": label}) for key, label, data in items])
    stored = await api.stored_embeddings(COLLECTION, keys)
    # The stored vectors are what the extractor makes of the same bytes.
    direct = await api.embed([data for _, _, data in items[:4]])
    np.testing.assert_allclose(stored[:4], direct, rtol=0, atol=1e-6)

    depth = len(keys) - 1
    exact = await api.leave_one_out(COLLECTION, keys, top_k=depth)
    through_api = score(exact.rankings, labels).overall
    offline = score(rank(unit_rows(stored), keys, depth=depth), labels).overall
    assert through_api.queries == offline.queries == len(keys)
    for metric in ("map", "p1", "p10", "r10"):
        assert getattr(through_api, metric) >= getattr(offline, metric) - TIE_TOLERANCE, metric
    # Meaningful, not just equal: far above a ranking that knows nothing (mAP ~ 1/classes).
    chance = 1 / len(set(labels.values()))
    assert offline.map > 1.5 * chance

    # FAST probing every list with every image a candidate re-ranks everything exactly.
    lists = await api.refit(COLLECTION, dimensions=8, lists=4)
    fast = await api.leave_one_out(
        COLLECTION, keys, top_k=depth, mode=FAST, probes=lists, candidates=len(keys)
    )
    assert score(fast.rankings, labels).overall.map >= offline.map - TIE_TOLERANCE


def test_metrics_on_a_hand_computed_ranking() -> None:
    ranking = [True, False, True, False]  # relevant at ranks 1 and 3, 3 relevant in all
    assert average_precision(ranking, 3) == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert average_precision([False, True], 1) == pytest.approx(0.5)
    assert average_precision([False, False], 2) == 0.0
    assert precision_at(ranking, 1) == 1.0
    assert precision_at(ranking, 2) == 0.5
    assert precision_at(ranking, 10) == pytest.approx(0.2)  # short ranking: misses count
    assert recall_at(ranking, 1, 3) == pytest.approx(1 / 3)
    assert recall_at(ranking, 10, 3) == pytest.approx(2 / 3)
    assert overlap_at(["a", "b", "x"], ["b", "c", "a"], 2) == 0.5


def test_score_averages_per_query_and_per_class() -> None:
    labels = {"a": "cat", "b": "cat", "c": "dog", "d": "dog", "e": "dog"}
    rankings = {
        "a": ["b", "c", "d", "e"],  # AP 1
        "b": ["c", "a", "d", "e"],  # AP 1/2
        "c": ["d", "a", "e", "b"],  # (1/1 + 2/3) / 2 = 5/6
        "d": ["a", "b", "c", "e"],  # (1/3 + 2/4) / 2 = 5/12
        "e": ["c", "d", "a", "b"],  # AP 1
    }
    found = score(rankings, labels)
    assert found.by_class["cat"].map == pytest.approx((1 + 1 / 2) / 2)
    assert found.by_class["dog"].map == pytest.approx((5 / 6 + 5 / 12 + 1) / 3)
    assert found.overall.map == pytest.approx((1 + 1 / 2 + 5 / 6 + 5 / 12 + 1) / 5)
    assert found.overall.p1 == pytest.approx(3 / 5)
    assert found.by_class["dog"].r10 == 1.0
    assert found.overall.queries == 5


def test_rank_leaves_the_query_out_and_breaks_ties_by_key() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.1]])
    keys = ["q", "tie-b", "tie-a", "near"]
    ranked = rank(vectors, keys, depth=3)
    assert ranked["q"] == ["near", "tie-a", "tie-b"]
    assert ranked["tie-b"] == ["tie-a", "near", "q"]


def test_read_idx_parses_the_header_and_checks_the_size(tmp_path: Path) -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8)
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, 2, 3, 4) + pixels.tobytes()))
    np.testing.assert_array_equal(fashion.read_idx(path, 0x803), pixels.reshape(2, 3, 4))
    path.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, 2, 3, 5) + pixels.tobytes()))
    with pytest.raises(ValueError, match="header implies"):
        fashion.read_idx(path, 0x803)
