"""Offline transforms of embeddings: PCA to d dimensions, whitening, L2 before and after."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evaluation.ranking import Floats, unit_rows

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Variant:
    """One way of turning embeddings into the vectors that are ranked."""

    dims: int | None  # None: the full vector
    l2_before: bool
    whiten: bool = False
    l2_after: bool = False

    @property
    def name(self) -> str:
        if self.dims is None:
            return "full, L2" if self.l2_before else "full, raw"
        steps = ["L2"] if self.l2_before else []
        steps.append("PCA+whiten" if self.whiten else "PCA")
        if self.l2_after:
            steps.append("L2")
        return " > ".join(steps)


def sweep(dims: tuple[int, ...]) -> list[Variant]:
    """Full vectors (raw and L2), then every PCA combination at each of ``dims``."""
    variants = [Variant(None, l2_before=False), Variant(None, l2_before=True)]
    for d in dims:
        for l2_before in (True, False):
            for whiten in (False, True):
                for l2_after in (False, True):
                    variants.append(Variant(d, l2_before, whiten, l2_after))
    return variants


class Transformer:
    """Fits PCA once per input normalisation (top max(dims) axes) and applies variants."""

    def __init__(self, vectors: Floats, max_dims: int) -> None:
        self._raw = np.asarray(vectors, dtype=np.float64)
        self._max_dims = min(max_dims, *self._raw.shape)
        self._fits: dict[bool, tuple[Matrix, Matrix, Matrix]] = {}

    def apply(self, variant: Variant) -> Matrix:
        inputs = unit_rows(self._raw) if variant.l2_before else self._raw
        if variant.dims is None:
            return inputs
        mean, axes, variances = self._fit(variant.l2_before, inputs)
        d = min(variant.dims, axes.shape[0])
        projected: Matrix = (inputs - mean) @ axes[:d].T
        if variant.whiten:
            # Unit variance per axis; the floor keeps a degenerate axis from exploding.
            projected = projected / np.sqrt(np.maximum(variances[:d], 1e-12))
        return unit_rows(projected) if variant.l2_after else projected

    def _fit(self, l2_before: bool, inputs: Matrix) -> tuple[Matrix, Matrix, Matrix]:
        if l2_before not in self._fits:
            self._fits[l2_before] = pca(inputs, self._max_dims)
        return self._fits[l2_before]


def pca(rows: Matrix, dims: int) -> tuple[Matrix, Matrix, Matrix]:
    """Mean, top ``dims`` principal axes (rows) and their variances, by eigh of the covariance."""
    mean = rows.mean(axis=0)
    centred = rows - mean
    covariance = centred.T @ centred / rows.shape[0]
    values, vectors = np.linalg.eigh(covariance)
    top = np.argsort(values)[::-1][:dims]
    return mean, vectors[:, top].T.copy(), values[top]
