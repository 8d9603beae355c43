"""Permutations restricted within blocks (restricted randomisation of places).

Residualising a feature on admin-1 unit makes its residuals sum to zero within every unit; free
permutations of the places ignore that constraint, so their null of a residualised feature is not the
distribution the observed residuals come from (Moran's I of such residuals sits below its free null:
the test is conservative). Permuting only within the units keeps every unit's sum, and under the null
that nothing but the units' means is spatial the residuals are exchangeable within units: the
permuted residuals are draws from the observed residuals' own null.
"""

from __future__ import annotations

import numpy as np

__all__ = ["block_codes", "within_blocks", "n_free_blocks"]


def block_codes(labels) -> np.ndarray:
    """Integer codes ``[n]`` (0..B-1, in order of first appearance sorted by label) of any labels ``[n]``."""
    return np.unique(np.asarray(labels).astype(str), return_inverse=True)[1].astype(np.int64)


def within_blocks(rng: np.random.Generator, nb: int, codes: np.ndarray) -> np.ndarray:
    """``[nb, n]`` permutations of ``range(n)``, each uniform among those that map every position to one of its own
    block (``codes [n]``, integers): ``perm[b, i]`` is in the block of ``i``."""
    codes = np.asarray(codes, dtype=np.int64)
    n = codes.size
    grouped = np.argsort(codes, kind="stable")  # positions grouped by block
    shuffled = np.argsort(codes[None, :] + rng.random((nb, n)), axis=1)  # grouped the same, random within blocks
    perms = np.empty((nb, n), dtype=np.int64)
    perms[:, grouped] = shuffled
    return perms


def n_free_blocks(codes: np.ndarray) -> int:
    """Blocks with at least two members (the ones a restricted permutation can change)."""
    return int((np.bincount(np.asarray(codes, dtype=np.int64)) >= 2).sum()) if len(codes) else 0
