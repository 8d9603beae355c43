"""Shared helpers: input checks, devices, weights as (reordered) torch CSR tensors."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from libpysal.weights import W
from scipy.sparse.csgraph import reverse_cuthill_mckee


def as_2d_values(values, n: int | None = None) -> np.ndarray:
    """``values`` as float64 ``[n, F]`` (a 1-D input becomes one column)."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"values must be [n] or [n, F], got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"values has {y.shape[0]} rows but the weights have {n} observations")
    if not np.all(np.isfinite(y)):
        raise ValueError("values contain NaN or inf; expected finite numbers")
    return y


def weights_csr(w: W) -> sp.csr_matrix:
    """The weights as float64 CSR in ``w.id_order`` (the current transform applied)."""
    if not isinstance(w, W):
        raise ValueError(f"w must be a libpysal.weights.W, got {type(w).__name__}")
    return sp.csr_matrix(w.sparse, dtype=np.float64)


def locality_order(A: sp.csr_matrix) -> np.ndarray:
    """Bandwidth-reducing order (reverse Cuthill-McKee) so neighbours sit close in memory."""
    return np.asarray(reverse_cuthill_mckee(sp.csr_matrix(A + A.T), symmetric_mode=True))


def torch_csr(A: sp.csr_matrix, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """scipy CSR -> torch sparse CSR on ``device``."""
    A = sp.csr_matrix(A)
    A.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(A.indptr.astype(np.int64)),
            torch.from_numpy(A.indices.astype(np.int64)),
            torch.from_numpy(A.data).to(dtype),
            size=A.shape,
        ).to(device)


def fold_counts(larger: np.ndarray, permutations: int) -> np.ndarray:
    """esda's folding rule: count the smaller tail (``min(larger, P - larger)``)."""
    larger = np.asarray(larger)
    return np.where(permutations - larger < larger, permutations - larger, larger)


def count_at_least(sims: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``#{b: sims[b, f] >= values[r, f]}`` as float64 ``[R, F]`` for ``sims [P, F]`` and ``values [R, F]``: one sort
    per column, then a binary search per value (``R * F * log P`` instead of ``R * P * F`` comparisons). NaN where
    the column's ``sims`` or the value is NaN (a constant feature)."""
    sims, values = np.asarray(sims, dtype=np.float64), np.asarray(values, dtype=np.float64)
    P, F = sims.shape
    out = np.full(values.shape, np.nan)
    ordered = np.sort(sims, axis=0)  # NaN columns sort their NaNs last
    for f in np.flatnonzero(~np.isnan(ordered).any(0)):
        ok = ~np.isnan(values[:, f])
        out[ok, f] = P - np.searchsorted(ordered[:, f], values[ok, f], side="left")
    return out
