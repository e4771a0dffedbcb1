"""PCA projection to a cube-sized subspace plus k-means lists for IVF-style FAST search."""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# PostgreSQL's cube type refuses more than 100 dimensions (CUBE_MAX_DIM).
MAX_DIMENSIONS = 100
# A lower-bound cube holds the d projected coordinates and one more, the residual's norm.
MAX_BOUNDED_DIMENSIONS = MAX_DIMENSIONS - 1
# 65536 lists would leave ~15 rows per list at 1M rows, far past the useful end; the bound
# only keeps a corrupt or mistaken request from allocating absurd centroid tables.
MAX_LISTS = 65536
# Lists per sqrt(count). The IVF prototype measured in issue 4 (1M rows, 4,000 lists =
# 4 * sqrt(N), 32 probes, 100-200 candidates) met the recall and latency targets, and
# 4..16 * sqrt(N) is the usual IVF guidance. At 4 * sqrt(N) a list holds sqrt(N) / 4 rows
# (250 at 1M), so a probe is a short btree range read and probing 32 lists touches under
# 1% of the table, while ranking 4,000 centroids per query stays well under a millisecond.
LISTS_PER_SQRT_COUNT = 4.0

Float32Array = npt.NDArray[np.float32]
Int32Array = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.floating]

_MAGIC = b"ISPJ"
_FORMAT_VERSION = 1
# magic, format version, flags (reserved, must be 0), D, d, lists.
_HEADER = struct.Struct("<4sHHIII")
_CRC = struct.Struct("<I")
# Bytes per block when streaming the sample or the vectors to project (float64 copies
# included): enough rows for BLAS to run at full speed, few enough to keep memory flat at
# any dimension (4096 rows at 2048-D, 512 at 16,384-D).
_BLOCK_BYTES = 64 << 20


def _block_rows(dim: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * dim))


# Bytes of the (rows x lists) float32 score matrix per assign() block: the memory bound for
# n = 1M x 4000 lists; blocks of ~1000+ rows keep the product at full BLAS speed.
_ASSIGN_BLOCK_BYTES = 16 << 20
# Up to this input dimension the D x D covariance is small (32 MiB at 2048) and its full
# eigendecomposition exact and quick; above it the fit never forms a D x D matrix and
# takes the top axes from a randomized SVD of the sample instead (O(sample x D) memory).
_FULL_EIGH_MAX_DIM = 2048
# Power iterations of the randomized SVD: each multiplies the gap between wanted and
# unwanted singular values; four are plenty for the decaying spectra of CNN features.
_POWER_ITERATIONS = 4
# Orthonormality slack for components read back from float32 storage.
_ORTHONORMAL_ATOL = 1e-4


@dataclass(frozen=True, eq=False, repr=False)
class Projection:
    """A fitted projection: ``(x - mean) @ components.T`` then the nearest of ``centroids``.

    The components are orthonormal rows and nothing is whitened, so the projection is a
    rotation followed by dropping axes: for any x and y, the projected distance is a lower
    bound of the full Euclidean distance, ``|P(x) - P(y)| <= |x - y|``. Whitening would
    rescale axes and break that bound (and overweight the noisy low-variance axes).
    Arrays are copied to C-contiguous float32 and made read-only, so an instance is
    immutable and safe to share between concurrent requests.
    """

    mean: Float32Array
    components: Float32Array
    centroids: Float32Array
    # float64 copies for nearest_lists, made once: converting per query cost ~2 ms.
    _centroids64: npt.NDArray[np.float64] = field(init=False)
    _centroid_norms: npt.NDArray[np.float64] = field(init=False)
    # The components made orthonormal to float64 precision (their float32 copies are so
    # only to ~1e-7): the lower bound rests on exact orthonormality.
    _basis64: npt.NDArray[np.float64] = field(init=False)
    _mean64: npt.NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        mean = _frozen_float32(self.mean, "mean")
        components = _frozen_float32(self.components, "components")
        centroids = _frozen_float32(self.centroids, "centroids")
        if mean.ndim != 1 or mean.shape[0] < 1:
            raise ValueError(f"mean must have shape (D,) with D >= 1, got {mean.shape}")
        if components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise ValueError(
                f"components must have shape (d, {mean.shape[0]}), got {components.shape}"
            )
        if not 1 <= components.shape[0] <= min(MAX_DIMENSIONS, mean.shape[0]):
            raise ValueError(
                f"components must have 1..{min(MAX_DIMENSIONS, mean.shape[0])} rows, "
                f"got {components.shape[0]}"
            )
        if centroids.ndim != 2 or centroids.shape[1] != components.shape[0]:
            raise ValueError(
                f"centroids must have shape (lists, {components.shape[0]}), got {centroids.shape}"
            )
        if not 1 <= centroids.shape[0] <= MAX_LISTS:
            raise ValueError(f"centroids must have 1..{MAX_LISTS} rows, got {centroids.shape[0]}")
        for name, array in (("mean", mean), ("components", components), ("centroids", centroids)):
            if not np.isfinite(array).all():
                raise ValueError(f"{name} contains NaN or infinity")
        # The lower-bound guarantee rests on orthonormal rows; check rather than trust.
        gram = components.astype(np.float64) @ components.T.astype(np.float64)
        if not np.allclose(gram, np.eye(gram.shape[0]), rtol=0.0, atol=_ORTHONORMAL_ATOL):
            raise ValueError("components rows are not orthonormal")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "components", components)
        object.__setattr__(self, "centroids", centroids)
        centroids64 = centroids.astype(np.float64)
        centroids64.flags.writeable = False
        norms = np.einsum("ij,ij->i", centroids64, centroids64)
        norms.flags.writeable = False
        object.__setattr__(self, "_centroids64", centroids64)
        object.__setattr__(self, "_centroid_norms", norms)
        # QR keeps the span and, up to signs fixed below, the axes themselves.
        q, r = np.linalg.qr(components.T.astype(np.float64))
        basis = (q * np.where(np.diag(r) < 0, -1.0, 1.0)).T
        basis.flags.writeable = False
        mean64 = mean.astype(np.float64)
        mean64.flags.writeable = False
        object.__setattr__(self, "_basis64", basis)
        object.__setattr__(self, "_mean64", mean64)

    def __repr__(self) -> str:
        # Shapes only: the arrays run to megabytes and this ends up in logs.
        return (
            f"Projection(input_dimension={self.input_dimension}, "
            f"dimensions={self.dimensions}, lists={self.lists})"
        )

    @property
    def dimensions(self) -> int:
        """d: the projected (cube) dimension."""
        return int(self.components.shape[0])

    @property
    def lists(self) -> int:
        """How many k-means lists (centroids) the IVF layout has."""
        return int(self.centroids.shape[0])

    @property
    def input_dimension(self) -> int:
        """D: the dimension of the full embeddings this projection accepts."""
        return int(self.mean.shape[0])

    def project(self, vectors: FloatArray) -> Float32Array:
        """Project ``(n, D)`` vectors to ``(n, d)`` float32; a ``(D,)`` vector gives ``(d,)``."""
        rows, single = self._input_rows(vectors, "vectors")
        out = np.empty((rows.shape[0], self.dimensions), dtype=np.float32)
        components_t = self.components.T
        # Centre before the product (not mean @ components.T afterwards): subtracting two
        # O(1) projections would cancel away float32 precision on small projected values.
        step = _block_rows(self.input_dimension)
        for start in range(0, rows.shape[0], step):
            block = np.asarray(rows[start : start + step], dtype=np.float32) - self.mean
            np.matmul(block, components_t, out=out[start : start + step])
        # Any NaN or infinity in the input reaches the output (inf * 0 is NaN), so checking
        # the d-wide output is as strict as checking the D-wide input, and cheaper.
        if not np.isfinite(out).all():
            raise ValueError("vectors contain NaN or infinity (or overflow float32)")
        return out[0] if single else out

    def bounds(self, units: FloatArray) -> npt.NDArray[np.float64]:
        """Lower-bound coordinates ``(n, d + 1)`` of ``(n, D)`` unit vectors (float64).

        The first d are the projection of the centred vector x' = x - mean onto the
        orthonormal axes P; the last is the norm of what the projection leaves out,
        |r(x)| with r(x) = x' - P.T P x'. For any x and y, Pythagoras and the reverse
        triangle inequality give

            |x - y|^2 = |P x' - P y'|^2 + |r(x) - r(y)|^2
                     >= |P x' - P y'|^2 + (|r(x)| - |r(y)|)^2,

        so the Euclidean (cube) distance between two rows is never above the true one,
        up to float64 rounding (about 1e-15 on unit vectors). ``|r|^2 = |x'|^2 - |Px'|^2``
        costs one product instead of two; both terms are O(1), so the cancellation costs
        at most a few ulps there.
        """
        rows, single = self._input_rows(units, "units")
        out = np.empty((rows.shape[0], self.dimensions + 1), dtype=np.float64)
        basis_t = self._basis64.T
        step = _block_rows(self.input_dimension)
        for start in range(0, rows.shape[0], step):
            centred = np.asarray(rows[start : start + step], dtype=np.float64)
            centred = centred - self._mean64
            coordinates = out[start : start + step, :-1]
            np.matmul(centred, basis_t, out=coordinates)
            kept = np.einsum("ij,ij->i", coordinates, coordinates)
            total = np.einsum("ij,ij->i", centred, centred)
            out[start : start + step, -1] = np.sqrt(np.maximum(total - kept, 0.0))
        if not np.isfinite(out).all():
            raise ValueError("units contain NaN or infinity")
        return out[0] if single else out

    def _input_rows(self, vectors: FloatArray, name: str) -> tuple[FloatArray, bool]:
        """``(n, D)`` real rows, and whether the caller passed one ``(D,)`` vector."""
        array = np.asarray(vectors)
        single = array.ndim == 1
        rows = array.reshape(1, -1) if single else array
        if rows.ndim != 2 or rows.shape[1] != self.input_dimension:
            raise ValueError(
                f"{name} must have shape (n, {self.input_dimension}) or "
                f"({self.input_dimension},), got {array.shape}"
            )
        _require_real(rows, name)
        return rows, single

    def assign(self, projected: FloatArray) -> Int32Array:
        """The nearest centroid's id for each of ``(n, d)`` projected vectors, as int32."""
        rows = self._projected_rows(projected, "projected")
        labels, _ = _nearest_centroids(rows, self.centroids, with_distances=False)
        return labels

    def nearest_lists(self, projected_query: FloatArray, probes: int) -> Int32Array:
        """The ids of the ``probes`` lists whose centroids are nearest the query, nearest first.

        ``probes`` above ``lists`` is clamped (probing every list is how a caller asks
        for the candidate stage's full recall); ties are broken by the lower id.
        """
        query = np.asarray(projected_query)
        if query.shape != (self.dimensions,):
            raise ValueError(
                f"projected_query must have shape ({self.dimensions},), got {query.shape}"
            )
        _require_real(query, "projected_query")
        if not np.isfinite(query).all():
            raise ValueError("projected_query contains NaN or infinity")
        if isinstance(probes, bool) or not isinstance(probes, int | np.integer) or probes < 1:
            raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
        probes = min(int(probes), self.lists)
        # float64 so near ties keep their true order (float32 rounding could swap lists
        # that assign() and the SQL side would rank the other way round). |q|^2 is
        # constant per query, so it is left out of the ranking.
        query64 = query.astype(np.float64)
        distances = self._centroid_norms - 2.0 * (self._centroids64 @ query64)
        if probes < self.lists:
            candidates = np.argpartition(distances, probes - 1)[:probes]
            # argpartition's pick among ties at the boundary is arbitrary; take every list
            # tied with the cut-off so the lower ids win deterministically.
            cutoff = distances[candidates].max()
            candidates = np.flatnonzero(distances <= cutoff)
        else:
            candidates = np.arange(self.lists)
        order = np.lexsort((candidates, distances[candidates]))[:probes]
        return candidates[order].astype(np.int32)

    def to_bytes(self) -> bytes:
        """Serialise: fixed little-endian header, float32 arrays, CRC-32 of all before it."""
        header = _HEADER.pack(
            _MAGIC, _FORMAT_VERSION, 0, self.input_dimension, self.dimensions, self.lists
        )
        body = b"".join(
            np.ascontiguousarray(array, dtype="<f4").tobytes()
            for array in (self.mean, self.components, self.centroids)
        )
        payload = header + body
        return payload + _CRC.pack(zlib.crc32(payload))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Projection:
        """Parse ``to_bytes`` output; ValueError on anything truncated, corrupt or unknown."""
        view = memoryview(data).cast("B")
        if len(view) < _HEADER.size + _CRC.size:
            raise ValueError(f"projection data truncated: {len(view)} bytes")
        magic, version, flags, dim_in, dim_out, lists = _HEADER.unpack_from(view)
        if magic != _MAGIC:
            raise ValueError("not a serialised projection (bad magic)")
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported projection format version {version}")
        if flags != 0:
            raise ValueError(f"unsupported projection flags {flags:#x}")
        # Bound the sizes before computing lengths from them, so garbage cannot make us
        # allocate or slice absurd amounts.
        if not (1 <= dim_out <= MAX_DIMENSIONS and dim_out <= dim_in and 1 <= lists <= MAX_LISTS):
            raise ValueError(f"implausible projection shape D={dim_in}, d={dim_out}, lists={lists}")
        floats = dim_in + dim_out * dim_in + lists * dim_out
        expected = _HEADER.size + 4 * floats + _CRC.size
        if len(view) != expected:
            raise ValueError(f"projection data is {len(view)} bytes, header implies {expected}")
        (crc,) = _CRC.unpack_from(view, expected - _CRC.size)
        if zlib.crc32(view[: expected - _CRC.size]) != crc:
            raise ValueError("projection data corrupt (CRC mismatch)")
        values = np.frombuffer(view, dtype="<f4", count=floats, offset=_HEADER.size)
        mean = values[:dim_in]
        components = values[dim_in : dim_in + dim_out * dim_in].reshape(dim_out, dim_in)
        centroids = values[dim_in + dim_out * dim_in :].reshape(lists, dim_out)
        return cls(mean=mean, components=components, centroids=centroids)

    def _projected_rows(self, projected: FloatArray, name: str) -> Float32Array:
        rows = np.asarray(projected)
        if rows.ndim != 2 or rows.shape[1] != self.dimensions:
            raise ValueError(f"{name} must have shape (n, {self.dimensions}), got {rows.shape}")
        _require_real(rows, name)
        rows32 = np.ascontiguousarray(rows, dtype=np.float32)
        if not np.isfinite(rows32).all():
            raise ValueError(f"{name} contains NaN or infinity")
        return rows32


def default_lists(count: int) -> int:
    """Lists for a collection of ``count`` vectors: 4 * sqrt(count) in [1, 65536], <= count."""
    if count < 1:
        return 1
    return max(1, min(MAX_LISTS, count, round(LISTS_PER_SQRT_COUNT * math.sqrt(count))))


def fit_projection(
    sample: FloatArray, *, dimensions: int, lists: int, seed: int = 0, iterations: int = 20
) -> Projection:
    """Fit PCA to ``dimensions`` axes on ``sample`` and ``lists`` k-means lists on its projection.

    Deterministic for a given sample and seed. For large ``lists`` the k-means wants more
    points than the PCA does (~40 per list); ``fit_pca`` + ``fit_lists`` let the caller fit
    the lists on a bigger, already-projected sample.
    """
    rows = _sample_rows(sample)
    _check_lists(lists, rows.shape[0])
    mean, components = fit_pca(rows, dimensions=dimensions)
    shell = Projection(
        mean=mean, components=components, centroids=np.zeros((1, dimensions), dtype=np.float32)
    )
    centroids = fit_lists(shell.project(rows), lists=lists, seed=seed, iterations=iterations)
    return Projection(mean=shell.mean, components=shell.components, centroids=centroids)


def fit_pca(sample: FloatArray, *, dimensions: int) -> tuple[Float32Array, Float32Array]:
    """The sample mean ``(D,)`` and its top ``dimensions`` principal axes ``(d, D)``.

    Up to D = 2048 the covariance is accumulated over row blocks (float32 products within
    a block, a float64 sum across blocks) and fully eigendecomposed: exact, and D x D is
    small there. Above it nothing D x D is formed: a randomized SVD of the centred sample
    (Halko, Martinsson and Tropp, with power iterations) finds the top axes with memory
    O(sample x D), which is what lets 16,384-D models fit at all.
    Axes are sign-normalised (largest-magnitude coordinate positive) so that a refit on
    similar data does not flip axes arbitrarily.
    """
    rows = _sample_rows(sample)
    count, dim = rows.shape
    limit = min(MAX_DIMENSIONS, dim, count)
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int | np.integer)
        or not 1 <= dimensions <= limit
    ):
        raise ValueError(
            f"dimensions must be an integer in 1..{limit} (min of {MAX_DIMENSIONS}, "
            f"input dimension {dim}, sample size {count}), got {dimensions!r}"
        )
    step = _block_rows(dim)
    mean = np.zeros(dim, dtype=np.float64)
    for start in range(0, count, step):
        block = np.asarray(rows[start : start + step], dtype=np.float64)
        if not np.isfinite(block).all():
            raise ValueError("sample contains NaN or infinity")
        mean += block.sum(axis=0)
    mean /= count
    mean32 = mean.astype(np.float32)
    k = int(dimensions)
    if dim <= _FULL_EIGH_MAX_DIM:
        covariance = np.zeros((dim, dim), dtype=np.float64)
        for start in range(0, count, step):
            centred = np.asarray(rows[start : start + step], dtype=np.float32) - mean32
            covariance += centred.T @ centred
        _, all_vectors = np.linalg.eigh(covariance)
        axes = all_vectors[:, ::-1][:, :k]
    else:
        axes = _randomized_axes(rows, mean32, k)
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    return mean32, (axes * signs).T.astype(np.float32)


def _randomized_axes(rows: FloatArray, mean: Float32Array, k: int) -> npt.NDArray[np.float64]:
    """Columns: the top k right singular vectors of ``rows - mean``, by randomized SVD.

    The centred sample is never materialised: ``(X - 1 m) W = X W - 1 (m W)``, in row
    blocks, so memory stays at the sample plus a few ``(n or D) x (2k + 16)`` matrices.
    """
    count, dim = rows.shape
    step = _block_rows(dim)
    width = min(dim, count, 2 * k + 16)
    # Fixed seed: the starting block only affects accuracy within the iterations, and a
    # fixed one keeps fits reproducible independently of the caller's k-means seed.
    basis = np.random.default_rng(0).standard_normal((dim, width))

    def times(right: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(X - 1 m) @ right, n x width."""
        right32 = right.astype(np.float32)
        out = np.empty((count, right.shape[1]), dtype=np.float64)
        for start in range(0, count, step):
            block = np.asarray(rows[start : start + step], dtype=np.float32)
            out[start : start + step] = block @ right32
        result: npt.NDArray[np.float64] = out - (mean.astype(np.float64) @ right)[None, :]
        return result

    def transposed_times(left: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(X - 1 m).T @ left, D x width, accumulated in float64 across blocks."""
        out = np.zeros((dim, left.shape[1]), dtype=np.float64)
        for start in range(0, count, step):
            block = np.asarray(rows[start : start + step], dtype=np.float32)
            out += block.T @ left[start : start + step].astype(np.float32)
        result: npt.NDArray[np.float64] = out - np.outer(mean, left.sum(axis=0))
        return result

    sketch = _orthonormalise(times(basis))
    for _ in range(_POWER_ITERATIONS):
        sketch = _orthonormalise(times(_orthonormalise(transposed_times(sketch))))
    # B = Q.T (X - 1 m) is width x D; its right singular vectors are the axes.
    small = transposed_times(sketch).T
    _, _, right = np.linalg.svd(small, full_matrices=False)
    axes: npt.NDArray[np.float64] = right[:k].T
    return axes


def fit_lists(
    projected: FloatArray, *, lists: int, seed: int = 0, iterations: int = 20
) -> Float32Array:
    """k-means centroids ``(lists, d)`` over projected vectors: seeded random init + Lloyd.

    Init picks ``lists`` distinct sample rows at random (FAISS's default for IVF training):
    k-means++ is sequential, O(lists) passes over the sample, which at 4,000 lists costs
    more than all the Lloyd iterations, and for IVF the Lloyd steps matter more than the
    init. A list left empty is re-seeded with the sample point farthest from its centroid,
    which splits the worst-fitting cluster instead of leaving a dead list.
    """
    rows = np.asarray(projected)
    if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] < 1:
        raise ValueError(
            f"projected sample must have shape (n, d) with n, d >= 1, got {rows.shape}"
        )
    _require_real(rows, "projected sample")
    data = np.ascontiguousarray(rows, dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueError("projected sample contains NaN or infinity")
    _check_lists(lists, data.shape[0])
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if lists == 1:
        # The single centroid is the mean whatever the init; skip the iterations.
        mean: Float32Array = data.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        return mean
    count = data.shape[0]
    rng = np.random.default_rng(seed)
    centroids = data[np.sort(rng.choice(count, size=lists, replace=False))].copy()
    previous: Int32Array | None = None
    for _ in range(iterations):
        labels, distances = _nearest_centroids(data, centroids, with_distances=True)
        if previous is not None and np.array_equal(labels, previous):
            break
        previous = labels
        counts = np.bincount(labels, minlength=lists)
        filled = counts > 0
        # Segment sums over the rows sorted by list: np.add.at is ~50x slower here.
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[filled]
        sums = np.add.reduceat(data[order], starts, axis=0, dtype=np.float64)
        centroids[filled] = (sums / counts[filled, None]).astype(np.float32)
        empty = np.flatnonzero(~filled)
        if empty.size:
            # Farthest first; stable so equal distances resolve by row order (determinism).
            farthest = np.argsort(-distances, kind="stable")[: empty.size]
            centroids[empty] = data[farthest]
    return centroids


def _orthonormalise(columns: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """An orthonormal basis of the columns' span, by Cholesky QR applied twice.

    Only matrix products and a small Cholesky: LAPACK's Householder QR on a tall D x ~2d
    block was measured 15x slower than that under CPU contention on two cores (threads
    waiting on each other), while this stays at BLAS speed. Two passes restore
    orthogonality to machine precision for the condition numbers seen here (about
    lambda_1 / lambda_block); a singular Gram matrix (rank-deficient data) falls back to QR.
    """
    basis = columns
    try:
        for _ in range(2):
            factor = np.linalg.cholesky(basis.T @ basis)
            basis = np.linalg.solve(factor, basis.T).T
    except np.linalg.LinAlgError:
        basis = np.linalg.qr(columns)[0]
    if not np.isfinite(basis).all():
        basis = np.linalg.qr(columns)[0]
    result: npt.NDArray[np.float64] = basis
    return result


def _nearest_centroids(
    rows: Float32Array, centroids: Float32Array, *, with_distances: bool
) -> tuple[Int32Array, npt.NDArray[np.float32]]:
    """Nearest centroid per row, in blocks bounded by _ASSIGN_BLOCK_BYTES.

    Uses |x - c|^2 = |x|^2 - 2 x.c + |c|^2 so the work is one matrix product per block;
    |x|^2 is constant per row, so the argmin needs only -2 x.c + |c|^2, and folding |c|^2
    into the product (an extra column of ones on x) saves a full pass over each block.
    """
    count, dim = rows.shape
    lists = centroids.shape[0]
    weights = np.empty((dim + 1, lists), dtype=np.float32)
    weights[:dim] = -2.0 * centroids.T
    weights[dim] = np.einsum("ij,ij->i", centroids, centroids, dtype=np.float64)
    labels = np.empty(count, dtype=np.int32)
    distances = np.empty(count if with_distances else 0, dtype=np.float32)
    step = max(1, min(count, _ASSIGN_BLOCK_BYTES // (4 * lists)))
    augmented = np.ones((step, dim + 1), dtype=np.float32)
    scores = np.empty((step, lists), dtype=np.float32)
    for start in range(0, count, step):
        stop = min(start + step, count)
        size = stop - start
        augmented[:size, :dim] = rows[start:stop]
        block_scores = scores[:size]
        np.matmul(augmented[:size], weights, out=block_scores)
        block_labels = block_scores.argmin(axis=1)
        labels[start:stop] = block_labels
        if with_distances:
            best = block_scores[np.arange(size), block_labels]
            norms = np.einsum("ij,ij->i", rows[start:stop], rows[start:stop])
            distances[start:stop] = np.maximum(best + norms, 0.0)
    return labels, distances


def _sample_rows(sample: FloatArray) -> FloatArray:
    rows = np.asarray(sample)
    if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] < 1:
        raise ValueError(f"sample must have shape (n, D) with n, D >= 1, got {rows.shape}")
    _require_real(rows, "sample")
    return rows


def _check_lists(lists: int, count: int) -> None:
    if isinstance(lists, bool) or not isinstance(lists, int | np.integer):
        raise ValueError(f"lists must be an integer, got {lists!r}")
    if not 1 <= lists <= min(count, MAX_LISTS):
        raise ValueError(
            f"lists must be in 1..{min(count, MAX_LISTS)} (at most the sample size {count} "
            f"and {MAX_LISTS}), got {lists}"
        )


def _require_real(array: np.ndarray, name: str) -> None:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")


def _frozen_float32(array: FloatArray, name: str) -> Float32Array:
    source = np.asarray(array)
    _require_real(source, name)
    copy = np.array(source, dtype=np.float32, order="C", copy=True)
    copy.flags.writeable = False
    return copy


@dataclass(frozen=True)
class ProjectionVersion:
    """One stored version of a collection's projection, read as its cubes were written.

    A bounded version's cubes are ``Projection.bounds`` (d + 1 coordinates, lower bounds
    of the true distance); an unbounded one (fitted under schema 0001) holds the d
    projected coordinates alone, which order FAST's candidates but bound nothing.
    """

    version: int
    projection: Projection
    bounded: bool

    def cubes(self, units: FloatArray) -> npt.NDArray[np.float64]:
        """The cube coordinates of unit vectors, ``(n, d [+ 1])``, or of one vector."""
        if self.bounded:
            return self.projection.bounds(units)
        projected: npt.NDArray[np.float64] = self.projection.project(units).astype(np.float64)
        return projected

    def entries(self, units: FloatArray) -> tuple[Int32Array, npt.NDArray[np.float64]]:
        """Each unit vector's list and cube in this version (what image_lists holds)."""
        cubes = self.cubes(units)
        return self.lists(cubes), cubes

    def lists(self, cubes: FloatArray) -> Int32Array:
        """The list of each row of ``cubes``."""
        rows = np.asarray(cubes)[:, : self.projection.dimensions]
        return self.projection.assign(rows.astype(np.float32))

    def nearest_lists(self, cube: FloatArray, probes: int) -> Int32Array:
        """The ``probes`` lists nearest one query's cube, nearest first."""
        coordinates = np.asarray(cube)[: self.projection.dimensions].astype(np.float32)
        return self.projection.nearest_lists(coordinates, probes)
