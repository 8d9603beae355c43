"""Benjamini-Hochberg false-discovery-rate q-values."""

from __future__ import annotations

import numpy as np

__all__ = ["fdr_bh"]


def fdr_bh(p) -> np.ndarray:
    """BH q-values along the last axis of ``p`` (any shape), ignoring NaNs.

    For each 1-D slice with m finite p-values sorted ascending, ``q_(i) = min_{j >= i} p_(j) m / j``,
    capped at 1. NaN inputs stay NaN and do not count towards m. Equals
    ``statsmodels.stats.multitest.multipletests(p, method="fdr_bh")[1]`` on NaN-free input.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0:
        raise ValueError("p must have at least one axis")
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError("p-values must lie in [0, 1] (NaN allowed)")
    flat = p.reshape(-1, p.shape[-1])
    order = np.argsort(flat, axis=-1, kind="stable")  # NaNs sort last
    ps = np.take_along_axis(flat, order, -1)
    m = (~np.isnan(ps)).sum(-1, keepdims=True)
    rank = np.arange(1, ps.shape[-1] + 1)
    scaled = np.where(np.isnan(ps), np.inf, ps * m / rank)
    qs = np.minimum.accumulate(scaled[:, ::-1], axis=-1)[:, ::-1]
    qs = np.minimum(qs, 1.0)
    qs[np.isnan(ps)] = np.nan
    q = np.empty_like(qs)
    np.put_along_axis(q, order, qs, -1)
    return q.reshape(p.shape)
