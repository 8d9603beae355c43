"""Numba kernel of the layer tests' multivariate statistic: W's quadratic form on a few permuted columns.

For a permutation ``perm`` of the rows and ``U [n, m]`` (a few columns, e.g. principal components),
``sum_i U[perm[i]] . sum_{e in row i of W} w_e U[perm[col_e]]`` (``sum_k u_k,p' W u_k,p``, the summed
Moran numerator of the permuted columns). The rows of ``U`` stay in cache, so a permutation costs
``nnz(W) * m`` multiply-adds. Float64 sums in row order: the result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["permuted_forms"]


@njit(parallel=True, fastmath=False, cache=True)
def _forms_kernel(U, indptr, indices, data, perms, out):  # pragma: no cover - numba
    n = indptr.shape[0] - 1
    m = U.shape[1]
    for p in prange(perms.shape[0]):
        perm = perms[p]
        acc = 0.0
        lag = np.zeros(m, np.float64)
        for i in range(n):
            for j in range(m):
                lag[j] = 0.0
            for e in range(indptr[i], indptr[i + 1]):
                b = perm[indices[e]]
                wv = data[e]
                for j in range(m):
                    lag[j] += wv * U[b, j]
            a = perm[i]
            for j in range(m):
                acc += U[a, j] * lag[j]
        out[p] = acc


def permuted_forms(U: np.ndarray, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                   perms: np.ndarray) -> np.ndarray:
    """``[nb]`` float64: ``sum_ij w_ij U[perm(i)] . U[perm(j)]`` for each row ``perm`` of ``perms [nb, n]``
    (CSR ``indptr``/``indices``/``data`` of W, rows in the order of ``U [n, m]``)."""
    out = np.empty(perms.shape[0])
    _forms_kernel(np.ascontiguousarray(U, dtype=np.float64), indptr.astype(np.int64), indices.astype(np.int64),
                  data.astype(np.float64), np.ascontiguousarray(perms, dtype=np.int64), out)
    return out
