"""The ``"fused"`` CPU engine of the global permutation test: one numba kernel per batch of replicates.

For replicate ``p`` (a permutation ``perm`` of the rows) and column ``f`` of the standardised values
``z`` (rows in locality order), the kernel computes

- ``cross[p, f] = sum_i z[perm[i], f] * lag_i``, ``lag_i = sum_{j in N(i)} w_ij z[perm[j], f]``
  (``z_p' W z_p``, Moran's numerator), and
- ``sq[p, f] = sum_i rc_i z[perm[i], f]^2`` (``rc``: row + column sums of W; Geary needs it),

without materialising the permuted matrix: columns go in tiles of :data:`TILE` (a contiguous
``[n, TILE]`` block, 64-byte aligned, so a tile of a few MiB stays in cache while many
replicates gather their rows from it) and each job of the parallel loop is one (tile, replicate)
pair. Consecutive jobs share a tile, so a thread's jobs reuse it. ``lag`` lives on the stack (in
registers once the ``TILE``-wide loops are unrolled); when every row's weights are equal (KNN and
contiguity weights in any transform) the neighbours are summed first and scaled once
(``lag_i = w_i * sum_j z[perm[j], f]``), which halves the arithmetic.

Determinism: every ``(p, f)`` is accumulated by one job in a fixed order (rows in order; float32
partial sums over blocks of :data:`FLUSH` rows, added into float64), so the results do not depend
on the number of threads or on how jobs are scheduled. ``fastmath`` is off (no reassociation, no
FMA contraction), so they are also the same from run to run on a machine.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.numpy_support import carray

__all__ = ["TILE", "FLUSH", "replicates", "tile_columns", "numba_threads", "equal_row_weights"]

TILE = 64  # columns per tile (a compile-time constant: the inner loops unroll into registers)
FLUSH = 256  # rows per float32 partial sum before it is added into the float64 total


@intrinsic
def _stack_pointer(typingctx, size, dtype):
    """A pointer to ``size`` elements of ``dtype`` on the stack (freed when the function returns)."""

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(dtype.dtype), size=args[0])

    return types.CPointer(dtype.dtype)(types.intp, dtype), codegen


@njit(inline="always")
def _stack_array(size, dtype):
    return carray(_stack_pointer(size, dtype), (size,))


@njit(parallel=True, fastmath=False, cache=True)
def _replicates_kernel(Zt, indptr, indices, data, row_w, rc, perms, want_sq, cross, sq):  # pragma: no cover - numba
    """``cross [nb, ntile * TILE]`` and ``sq`` (when ``want_sq``) for the permutations ``perms [nb, n]``.

    ``Zt [ntile, n, TILE]``: column tiles; ``indptr/indices/data``: CSR of W (rows in the order of
    ``Zt``'s rows); ``row_w [n]``: each row's common weight, or an empty array when the rows' weights
    differ (then ``data`` is used).
    """
    ntile, n, _ = Zt.shape
    nb = perms.shape[0]
    equal_rows = row_w.shape[0] == n
    for job in prange(ntile * nb):
        t = job // nb
        p = job - t * nb
        Z = Zt[t]
        perm = perms[p]
        lag = _stack_array(TILE, Zt.dtype)
        part = np.zeros(TILE, Zt.dtype)
        part_sq = np.zeros(TILE, Zt.dtype)
        total = np.zeros(TILE, np.float64)
        total_sq = np.zeros(TILE, np.float64)
        for i in range(n):
            for f in range(TILE):
                lag[f] = 0
            zi = Z[perm[i]]
            if equal_rows:
                for e in range(indptr[i], indptr[i + 1]):
                    zj = Z[perm[indices[e]]]
                    for f in range(TILE):
                        lag[f] += zj[f]
                wi = row_w[i]
                for f in range(TILE):
                    part[f] += zi[f] * (wi * lag[f])
            else:
                for e in range(indptr[i], indptr[i + 1]):
                    wv = data[e]
                    zj = Z[perm[indices[e]]]
                    for f in range(TILE):
                        lag[f] += wv * zj[f]
                for f in range(TILE):
                    part[f] += zi[f] * lag[f]
            if want_sq:
                r = rc[i]
                for f in range(TILE):
                    part_sq[f] += r * zi[f] * zi[f]
            if (i + 1) % FLUSH == 0 or i + 1 == n:
                for f in range(TILE):
                    total[f] += part[f]
                    total_sq[f] += part_sq[f]
                    part[f] = 0
                    part_sq[f] = 0
        base = t * TILE
        for f in range(TILE):
            cross[p, base + f] = total[f]
            sq[p, base + f] = total_sq[f]


def equal_row_weights(indptr: np.ndarray, data: np.ndarray) -> np.ndarray | None:
    """Each row's common weight when all rows have equal weights (0 for empty rows), else None."""
    n = indptr.size - 1
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(n), counts)
    first = np.zeros(n, dtype=data.dtype)
    has = counts > 0
    first[has] = data[indptr[:-1][has]]
    if not np.array_equal(data, first[rows]):
        return None
    return first


def tile_columns(z: np.ndarray, dtype) -> np.ndarray:
    """``z [n, F]`` as ``[ceil(F / TILE), n, TILE]`` contiguous tiles (zero-padded), 64-byte aligned."""
    n, F = z.shape
    ntile = max(1, -(-F // TILE))
    itemsize = np.dtype(dtype).itemsize
    size = ntile * n * TILE
    raw = np.zeros(size + 64 // itemsize, dtype=dtype)
    start = (-raw.ctypes.data % 64) // itemsize
    Zt = raw[start : start + size].reshape(ntile, n, TILE)
    for t in range(ntile):
        a, b = t * TILE, min(F, (t + 1) * TILE)
        Zt[t, :, : b - a] = z[:, a:b]
    return Zt


@contextmanager
def numba_threads(n: int | None):
    """Run numba's parallel loops on ``n`` threads (at most ``NUMBA_NUM_THREADS``); None: leave the setting."""
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"thread count must be >= 1 or None, got {n!r}")
    before = numba.get_num_threads()
    numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def replicates(Zt, indptr, indices, data, row_w, rc, perms, want_sq: bool):
    """Run the kernel on ``perms [nb, n]``: float64 ``cross, sq`` of shape ``[nb, ntile * TILE]``
    (``sq`` zeros unless ``want_sq``). Array dtypes as prepared by the engine (``Zt``, ``data``,
    ``row_w`` and ``rc`` of one float dtype; ``indices`` and ``perms`` uint32; ``indptr`` int64)."""
    nb = perms.shape[0]
    cross = np.empty((nb, Zt.shape[0] * TILE))
    sq = np.empty_like(cross)
    _replicates_kernel(Zt, indptr, indices, data, row_w, rc, perms, bool(want_sq), cross, sq)
    return cross, sq
