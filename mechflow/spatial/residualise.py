"""The template-confound baseline: features residualised on what the prompt template reveals.

Prompts like ``"{name}, {admin1_name}"`` name their admin-1 unit, and their token count varies with
it, so a unit that only reads the admin-1 token or the prompt length is spatially autocorrelated
without any knowledge of where a place is. Regressing every feature on one-hot admin-1 membership
and one-hot prompt length (token count) *within each region* and testing Moran's I of the
residuals asks what spatial structure remains inside admin-1 units once those are accounted for.
It is conservative: it also removes real geographic knowledge at the admin-1 scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

__all__ = ["TEMPLATE_COVARIATES", "dummy_design", "residualise", "residualise_within_regions"]

#: prompt coordinates the template baseline regresses on (each one-hot), where a feature set has them
TEMPLATE_COVARIATES: tuple[str, ...] = ("admin1_code", "n_tokens")

#: residual sum of squares below this fraction of the total counts as zero (the column is explained)
EXPLAINED_TOL = 1e-10

#: columns per least-squares product: every column's residuals come from the same BLAS call shapes
#: whether a feature set is residualised whole or in blocks that start at multiples of this
RESIDUAL_CHUNK = 256


def dummy_design(covariates: Mapping[str, Sequence]) -> np.ndarray:
    """Design matrix [n, p]: an intercept and one indicator column per level of each covariate but its
    first (sorted) level, so the columns are linearly independent within each covariate."""
    cols = []
    n = None
    for name, values in covariates.items():
        v = np.asarray(values).astype(str)
        if n is not None and v.shape[0] != n:
            raise ValueError(f"covariate {name!r} has {v.shape[0]} values, expected {n}")
        n = v.shape[0]
        for level in np.unique(v)[1:]:
            cols.append(v == level)
    if n is None:
        raise ValueError("no covariates given")
    return np.column_stack([np.ones(n), *cols]).astype(np.float64) if cols else np.ones((n, 1))


def residualise(y: np.ndarray, design: np.ndarray) -> tuple[np.ndarray, int]:
    """Least-squares residuals of every column of ``y`` [n, F] on ``design`` [n, p], vectorised over columns.

    The design's column space comes from its SVD (rank-deficient designs, e.g. a length that only
    occurs in one admin-1 unit, are fine). Columns the design explains to within
    :data:`EXPLAINED_TOL` of their sum of squares become exactly 0 (constant: NaN statistics later).
    Columns go in chunks of :data:`RESIDUAL_CHUNK` through single-threaded BLAS products, so
    residualising columns ``[a, b)`` (``a`` a multiple of it) gives bit for bit what residualising all
    of them gives there, at any thread count (these thin products gain nothing from threads).
    Returns (residuals [n, F] float64, rank of the design).
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or design.shape[0] != y.shape[0]:
        raise ValueError(f"y {y.shape} and design {design.shape} must share their first dimension")
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    rank = int((s > s[0] * max(design.shape) * np.finfo(np.float64).eps).sum()) if s.size else 0
    basis = u[:, :rank]
    basis_t = np.ascontiguousarray(basis.T)
    resid = np.empty_like(y)
    with threadpool_limits(limits=1, user_api="blas"):
        for a in range(0, y.shape[1], RESIDUAL_CHUNK):
            part = np.ascontiguousarray(y[:, a : a + RESIDUAL_CHUNK])
            out = part - basis @ (basis_t @ part)
            total = ((part - part.mean(0)) ** 2).sum(0)
            out[:, ((out - out.mean(0)) ** 2).sum(0) <= EXPLAINED_TOL * total] = 0.0
            resid[:, a : a + RESIDUAL_CHUNK] = out
    return resid, rank


def residualise_within_regions(values: xr.DataArray, covariates: Sequence[str] = TEMPLATE_COVARIATES) -> xr.DataArray:
    """Residuals of a feature set [prompt, feature] on one-hot ``covariates`` (prompt coordinates), fitted
    separately in each region (``region`` coordinate). Covariates the feature set lacks are skipped;
    attrs ``residualised_on`` names those used and ``design_rank`` the rank of each region's design."""
    present = [c for c in covariates if c in values.coords]
    if not present:
        raise ValueError(f"the feature set has none of the covariates {list(covariates)} as prompt coordinates")
    region = values["region"].values.astype(str)
    data = np.asarray(values.values, dtype=np.float64)
    out = np.empty_like(data)
    ranks = {}
    for reg in np.unique(region):
        idx = np.flatnonzero(region == reg)
        design = dummy_design({c: values[c].values[idx] for c in present})
        out[idx], ranks[str(reg)] = residualise(data[idx], design)
    return values.copy(data=out).assign_attrs(
        residualised_on=",".join(present),
        design_rank=",".join(f"{r}:{k}" for r, k in sorted(ranks.items())),
    )
