"""The PCA projection and k-means lists behind FAST search, on real computations."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import numpy.typing as npt
import pytest

from devenv.synthetic import cnn_like_vectors, iter_cnn_like_vectors
from search_service import projection
from search_service.projection import Projection, default_lists, fit_projection


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return cnn_like_vectors(4000, 256, clusters=100, seed=1)


@pytest.fixture(scope="module")
def fitted(corpus: np.ndarray) -> Projection:
    return fit_projection(corpus, dimensions=24, lists=50, seed=3)


def _pairwise(a: np.ndarray) -> np.ndarray:
    a64 = a.astype(np.float64)
    squared = (a64**2).sum(1)[:, None] - 2 * a64 @ a64.T + (a64**2).sum(1)[None]
    distances: np.ndarray = np.sqrt(np.maximum(squared, 0.0))
    return distances


def _reference_axes(sample: np.ndarray, k: int) -> np.ndarray:
    centred = sample.astype(np.float64) - sample.astype(np.float64).mean(0)
    axes: np.ndarray = np.linalg.svd(centred, full_matrices=False)[2][:k]
    return axes


def _spectrum_sample(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    # Power-law variances in a random orientation, plus an offset mean.
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    scales = (np.arange(dim) + 1.0) ** -0.7
    sample: np.ndarray = (rng.standard_normal((count, dim)) * scales) @ rotation.T + 3.0
    return sample


def _zeros(*shape: int) -> npt.NDArray[np.float32]:
    return np.zeros(shape, dtype=np.float32)


def _identity(dim: int, centroids: npt.NDArray[np.float32]) -> Projection:
    """A projection that keeps coordinates as they are: tests lists in isolation."""
    return Projection(_zeros(dim), np.eye(dim, dtype=np.float32), centroids)


@pytest.mark.parametrize("route", ["eigh", "randomized"])
def test_principal_subspace_matches_full_svd(route, monkeypatch):
    rng = np.random.default_rng(7)
    sample = _spectrum_sample(rng, 1000, 200).astype(np.float32)
    # The randomized route normally starts above D = 2048; lower the cut-over so a small
    # case exercises it against the same reference.
    monkeypatch.setattr(projection, "_FULL_EIGH_MAX_DIM", 0 if route != "eigh" else 10**6)
    mean, components = projection.fit_pca(sample, dimensions=16)
    reference = _reference_axes(sample, 16)
    np.testing.assert_allclose(mean, sample.astype(np.float64).mean(0), atol=1e-5)
    np.testing.assert_allclose(components @ components.T, np.eye(16), atol=1e-5)
    # Cosines of the principal angles between the two 16-D subspaces, and per axis.
    cosines = np.linalg.svd(components.astype(np.float64) @ reference.T, compute_uv=False)
    assert cosines.min() > 0.9999
    per_axis = np.abs(np.einsum("ij,ij->i", components.astype(np.float64), reference))
    assert per_axis.min() > 0.999


def test_randomized_svd_agrees_with_eigh_on_cnn_like_data(monkeypatch):
    sample = cnn_like_vectors(3000, 512, clusters=200, seed=2)
    monkeypatch.setattr(projection, "_FULL_EIGH_MAX_DIM", 0)
    _, randomized = projection.fit_pca(sample, dimensions=40)
    monkeypatch.setattr(projection, "_FULL_EIGH_MAX_DIM", 10**6)
    _, full = projection.fit_pca(sample, dimensions=40)
    cosines = np.linalg.svd(randomized.astype(np.float64) @ full.T, compute_uv=False)
    assert cosines.min() > 0.9999


def test_randomized_fit_never_forms_a_d_by_d_matrix(monkeypatch):
    """Above the cut-over, memory is O(sample x D): no D x D array is ever allocated."""
    dim = 3000
    sample = cnn_like_vectors(400, dim, clusters=20, seed=4)
    monkeypatch.setattr(projection, "_FULL_EIGH_MAX_DIM", 2048)

    tracemalloc.start()
    _, components = projection.fit_pca(sample, dimensions=20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(components @ components.T, np.eye(20), atol=1e-5)
    # A float64 D x D would be 72 MB; the sample itself is 4.8 MB.
    assert peak < 8 * dim * dim / 4, peak


def test_rank_deficient_sample_still_gives_orthonormal_axes():
    rng = np.random.default_rng(0)
    sample = (rng.standard_normal((30, 3)) @ rng.standard_normal((3, 40))).astype(np.float32)
    fitted = fit_projection(sample, dimensions=10, lists=4)
    np.testing.assert_allclose(fitted.components @ fitted.components.T, np.eye(10), atol=1e-5)


def test_pca_preserves_distances_better_than_a_random_subspace(corpus, fitted):
    rng = np.random.default_rng(0)
    pick = corpus[rng.choice(len(corpus), 600, replace=False)]
    full = _pairwise(pick)
    random_axes = np.linalg.qr(rng.standard_normal((corpus.shape[1], fitted.dimensions)))[0].T
    random_projection = Projection(fitted.mean, random_axes, fitted.centroids)
    mask = ~np.eye(len(pick), dtype=bool)

    def distortion(p: Projection) -> float:
        return float(np.mean(1.0 - _pairwise(p.project(pick))[mask] / full[mask]))

    def neighbour_overlap(p: Projection) -> float:
        near = _pairwise(p.project(pick)) + np.diag(np.full(len(pick), np.inf))
        truth = full + np.diag(np.full(len(pick), np.inf))
        a, b = np.argsort(near, 1)[:, :10], np.argsort(truth, 1)[:, :10]
        return float(np.mean([len(np.intersect1d(x, y)) / 10 for x, y in zip(a, b, strict=True)]))

    pca_loss, random_loss = distortion(fitted), distortion(random_projection)
    # 24 of 256 axes: PCA keeps most of each distance, a random subspace ~sqrt(24/256).
    assert pca_loss < 0.25 < 0.5 < random_loss
    pca_overlap, random_overlap = neighbour_overlap(fitted), neighbour_overlap(random_projection)
    print(f"distance loss PCA {pca_loss:.3f} random {random_loss:.3f}; ", end="")
    print(f"10-NN overlap PCA {pca_overlap:.3f} random {random_overlap:.3f}")
    assert pca_overlap > random_overlap + 0.1


def test_projected_distance_is_a_lower_bound(corpus, fitted):
    rng = np.random.default_rng(1)
    # Sample rows (centred by the projection's mean) and arbitrary unrelated vectors: the
    # bound needs only orthonormal rows, not centred data.
    others = rng.standard_normal((200, corpus.shape[1])).astype(np.float32) * 3
    for points in (corpus[:300], others):
        full = _pairwise(points)
        projected = _pairwise(fitted.project(points))
        assert (projected <= full + 1e-5).all()


def test_project_shapes_and_dtype(corpus, fitted):
    out = fitted.project(corpus[:5].astype(np.float64))
    assert out.dtype == np.float32
    assert out.shape == (5, fitted.dimensions)
    np.testing.assert_allclose(fitted.project(corpus[3]), out[3], atol=1e-6)
    expected = (corpus[:5].astype(np.float64) - fitted.mean) @ fitted.components.T.astype(
        np.float64
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_round_trip_is_exact(fitted):
    data = fitted.to_bytes()
    back = Projection.from_bytes(data)
    for name in ("mean", "components", "centroids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fitted, name))
    assert back.to_bytes() == data
    assert Projection.from_bytes(bytearray(data)).to_bytes() == data
    assert (back.dimensions, back.lists, back.input_dimension) == (24, 50, 256)
    # Compact: a header, float32 payload and a checksum, nothing else.
    assert len(data) == 24 + 4 * (256 + 24 * 256 + 50 * 24)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


CORRUPTIONS = {
    "empty": lambda data: b"",
    "truncated header": lambda data: data[:10],
    "truncated body": lambda data: data[:-100],
    "one byte short": lambda data: data[:-1],
    "trailing byte": lambda data: data + b"\x00",
    "bit flip": lambda data: data[:500] + bytes([data[500] ^ 1]) + data[501:],
    "bad magic": lambda data: b"XXXX" + data[4:],
    "bad version": lambda data: data[:4] + struct.pack("<H", 99) + data[6:],
    "bad flags": lambda data: _with_crc(data[:6] + struct.pack("<H", 1) + data[8:-4]),
    "implausible shape": lambda data: (
        struct.pack("<4sHHIII", b"ISPJ", 1, 0, 2**31, 100, 2**31) + bytes(8)
    ),
    "shape disagrees with length": lambda data: _with_crc(
        data[:16] + struct.pack("<I", 23) + data[20:-4]
    ),
    "nan with valid crc": lambda data: _with_crc(
        data[:24] + struct.pack("<f", float("nan")) + data[28:-4]
    ),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_bytes_are_rejected(fitted, corruption):
    data = fitted.to_bytes()
    with pytest.raises(ValueError, match=r"projection|NaN|magic|truncated"):
        Projection.from_bytes(corruption(data))


def test_assign_equals_brute_force():
    rng = np.random.default_rng(5)
    centroids = rng.standard_normal((1000, 16)).astype(np.float32)
    model = _identity(16, centroids)
    # More rows than one block (16 MiB / (4 B x 1000 lists) = 4194 rows) so blocks are tested.
    points = rng.standard_normal((9000, 16)).astype(np.float32)
    labels = model.assign(points)
    assert labels.dtype == np.int32
    assert labels.shape == (9000,)
    distances = _pairwise_to(points, centroids)
    brute = distances.argmin(1)
    ordered = np.sort(distances, axis=1)
    clear = ordered[:, 1] - ordered[:, 0] > 1e-4
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(labels[clear], brute[clear])
    # Where the best two are nearly tied, either is acceptable.
    chosen = distances[np.arange(len(points)), labels]
    np.testing.assert_allclose(chosen, ordered[:, 0], atol=1e-4)


def test_nearest_lists_order(fitted, corpus):
    query = fitted.project(corpus[17])
    distances = ((fitted.centroids.astype(np.float64) - query) ** 2).sum(1)
    expected = np.argsort(distances, kind="stable")
    for probes in (1, 5, 50):
        lists = fitted.nearest_lists(query, probes)
        assert lists.dtype == np.int32
        np.testing.assert_array_equal(lists, expected[:probes])
    assert fitted.nearest_lists(query, 1)[0] == fitted.assign(query[None])[0]
    # More probes than lists: all of them, nearest first.
    np.testing.assert_array_equal(fitted.nearest_lists(query, 10_000), expected)


def test_nearest_lists_breaks_ties_by_lower_id():
    centroids = np.array([[2, 0], [1, 0], [-1, 0], [0, 1], [5, 5]], dtype=np.float32)
    model = _identity(2, centroids)
    np.testing.assert_array_equal(model.nearest_lists(np.zeros(2), 2), [1, 2])
    np.testing.assert_array_equal(model.nearest_lists(np.zeros(2), 4), [1, 2, 3, 0])


def test_fit_is_deterministic_for_a_seed(corpus):
    one = fit_projection(corpus[:2000], dimensions=8, lists=20, seed=11)
    two = fit_projection(corpus[:2000], dimensions=8, lists=20, seed=11)
    other = fit_projection(corpus[:2000], dimensions=8, lists=20, seed=12)
    assert one.to_bytes() == two.to_bytes()
    np.testing.assert_array_equal(one.components, other.components)
    assert not np.array_equal(one.centroids, other.centroids)


def test_kmeans_lowers_quantisation_error_and_fills_lists(corpus, fitted):
    projected = fitted.project(corpus)

    def error(centroids: np.ndarray) -> float:
        labels = Projection(fitted.mean, fitted.components, centroids).assign(projected)
        return float(((projected - centroids[labels]) ** 2).sum(1).mean())

    counts = np.bincount(fitted.assign(projected), minlength=fitted.lists)
    assert (counts > 0).all()
    untrained = projection.fit_lists(projected, lists=50, seed=3, iterations=0)
    assert error(fitted.centroids) < 0.9 * error(untrained)


def test_empty_lists_are_reseeded_from_far_points():
    rng = np.random.default_rng(2)
    # 90 copies of one point and 10 distinct ones: a random init of 11 lists mostly picks
    # copies, so the duplicated centroids' lists go empty after the first assignment.
    distinct = rng.standard_normal((10, 4)) * 10
    sample = np.vstack([np.zeros((90, 4)), distinct]).astype(np.float32)
    centroids = projection.fit_lists(sample, lists=11, seed=0)
    assert np.isfinite(centroids).all()
    model = _identity(4, centroids)
    assert np.bincount(model.assign(sample), minlength=11).min() > 0


def test_single_list(corpus):
    model = fit_projection(corpus[:500], dimensions=4, lists=1)
    assert model.lists == 1
    np.testing.assert_allclose(model.centroids[0], model.project(corpus[:500]).mean(0), atol=1e-5)
    assert (model.assign(model.project(corpus[:50])) == 0).all()
    np.testing.assert_array_equal(model.nearest_lists(model.project(corpus[0]), 3), [0])


@pytest.mark.parametrize(
    ("dimensions", "lists", "message"),
    [
        (0, 2, "dimensions must be an integer in 1..50"),
        (101, 2, "dimensions"),
        (51, 2, "sample size 50"),
        (2.0, 2, "dimensions"),
        (4, 0, "lists must be in 1..50"),
        (4, 51, "at most the sample size 50"),
    ],
)
def test_invalid_fit_sizes_are_rejected(corpus, dimensions, lists, message):
    with pytest.raises(ValueError, match=message):
        fit_projection(corpus[:50], dimensions=dimensions, lists=lists)


def test_invalid_arguments_are_rejected(corpus, fitted):
    small = corpus[:50]
    with pytest.raises(ValueError, match="dimensions"):
        fit_projection(small[:, :3], dimensions=4, lists=2)
    poisoned = small.copy()
    poisoned[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_projection(poisoned, dimensions=4, lists=2)
    poisoned[7, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        fit_projection(poisoned, dimensions=4, lists=2)
    for shape in [(50,), (2, 3, 4), (0, 8)]:
        with pytest.raises(ValueError, match="shape"):
            fit_projection(np.ones(shape), dimensions=1, lists=1)
    with pytest.raises(ValueError, match="real"):
        fit_projection(small.astype(np.complex64), dimensions=1, lists=1)
    with pytest.raises(ValueError, match=r"shape \(n, 256\)"):
        fitted.project(corpus[:3, :100])
    with pytest.raises(ValueError, match="NaN"):
        fitted.project(np.full(256, np.nan))
    with pytest.raises(ValueError, match=r"shape \(n, 24\)"):
        fitted.assign(np.zeros((3, 23)))
    with pytest.raises(ValueError, match=r"shape \(24,\)"):
        fitted.nearest_lists(np.zeros((1, 24)), 3)
    with pytest.raises(ValueError, match="probes"):
        fitted.nearest_lists(np.zeros(24), 0)
    with pytest.raises(ValueError, match="orthonormal"):
        Projection(_zeros(3), np.ones((2, 3), np.float32), _zeros(1, 2))
    with pytest.raises(ValueError, match="centroids"):
        Projection(_zeros(3), np.eye(3, dtype=np.float32)[:2], _zeros(1, 3))


def test_projection_is_immutable_and_reprs_compactly(fitted):
    with pytest.raises(ValueError, match="read-only"):
        fitted.components[0, 0] = 1.0
    assert repr(fitted) == "Projection(input_dimension=256, dimensions=24, lists=50)"


def test_default_lists():
    assert [default_lists(n) for n in (0, 1, 2, 10, 100)] == [1, 1, 2, 10, 40]
    assert default_lists(20_000) == 566
    assert default_lists(1_000_000) == 4000
    assert default_lists(10**12) == 65536
    sizes = [default_lists(n) for n in range(1, 5000, 7)]
    assert sizes == sorted(sizes)


def test_synthetic_vectors_are_cnn_like():
    vectors = cnn_like_vectors(5000, 256, clusters=50)
    assert vectors.dtype == np.float32
    assert (vectors >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert 0.3 < (vectors == 0).mean() < 0.7
    centred = vectors.astype(np.float64) - vectors.mean(0)
    variances = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    share = np.cumsum(variances) / variances.sum()
    # Decaying spectrum: a few axes carry much of the variance but the tail is long.
    assert 0.2 < share[7] < share[63] < 0.9
    # Deterministic and independent of the batch size; offsets continue the same stream.
    chunks = list(iter_cnn_like_vectors(5000, 256, clusters=50, batch=1234))
    assert [len(c) for c in chunks] == [1234, 1234, 1234, 1234, 64]
    np.testing.assert_array_equal(np.concatenate(chunks), vectors)
    np.testing.assert_array_equal(
        cnn_like_vectors(100, 256, clusters=50, start=4950)[:50], vectors[4950:]
    )


def test_ivf_recall_grows_with_probes_and_reaches_target():
    count, dim, queries, k, candidates = 20_000, 512, 200, 10, 100
    base = cnn_like_vectors(count, dim)
    probe_set = cnn_like_vectors(queries, dim, start=count)  # held out, same distribution
    model = fit_projection(base, dimensions=64, lists=default_lists(count), seed=0)
    projected = model.project(base)
    labels = model.assign(projected)
    order = np.argsort(labels, kind="stable")  # rows "stored in list order"
    bounds = np.searchsorted(labels[order], np.arange(model.lists + 1))
    truth = np.argsort(_pairwise_to(probe_set, base), axis=1)[:, :k]
    projected_queries = model.project(probe_set)

    recalls = {}
    for probes in (1, 4, 16, 64):
        hits = 0
        for i in range(queries):
            lists = model.nearest_lists(projected_queries[i], probes)
            rows = np.concatenate([order[bounds[j] : bounds[j + 1]] for j in lists])
            near = ((projected[rows] - projected_queries[i]) ** 2).sum(1)
            shortlist = rows[np.argsort(near, kind="stable")[:candidates]]
            exact = ((base[shortlist] - probe_set[i]) ** 2).sum(1)
            top = shortlist[np.argsort(exact, kind="stable")[:k]]
            hits += len(np.intersect1d(top, truth[i]))
        recalls[probes] = hits / (queries * k)
    print(f"IVF recall@10, {model.lists} lists, d=64, C={candidates}: {recalls}")
    values = list(recalls.values())
    assert values == sorted(values)
    assert recalls[1] < 0.9
    assert recalls[16] >= 0.95


def _pairwise_to(queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    q, b = queries.astype(np.float64), base.astype(np.float64)
    squared: np.ndarray = (q**2).sum(1)[:, None] - 2 * q @ b.T + (b**2).sum(1)[None]
    return squared
