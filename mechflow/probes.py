"""Linear location probes: ridge regression from each layer's activations to coordinates.

For every region and layer, ridge maps standardised activations ``[n, d]`` to the projected
coordinates x/y (metres, the region's CRS) and to lat/lon (degrees), all targets solved at once.
Cross-validation is k-fold with two fold schemes:

- ``random``: prompts shuffled into k folds;
- ``spatial``: prompts clustered into ``n_blocks`` k-means blocks on projected coordinates, whole
  blocks assigned to folds (balanced by size). Neighbouring places never straddle train/test, so
  the gap between the schemes shows how much a probe leans on spatial leakage.

Inside each training fold, features and targets are standardised with the training fold's
statistics and alpha is chosen per target from ``alphas`` by exact leave-one-out error (the
closed form from one eigendecomposition of the training Gram matrix, as in RidgeCV). Scores use
out-of-fold predictions pooled over folds: ``R^2 = 1 - SS_res / SS_tot`` per target (averaged
over x and y, or lat and lon), and the median great-circle (haversine) error in km.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from pyproj import Transformer

from mechflow.contracts import EARTH_RADIUS_M
from mechflow.spatial.datasets import check_locations
from mechflow.spatial.weights import project

__all__ = ["DEFAULT_ALPHAS", "haversine_km", "random_folds", "spatial_folds", "ridge_loo",
           "cross_val_predict_ridge", "probe_dataset"]

#: Ridge penalties tried (on standardised features); chosen per target by exact LOO error. The
#: workflow's default (config.schema.yaml ``probes.alphas``) is this grid, checked by a test.
DEFAULT_ALPHAS: np.ndarray = 10.0 ** np.arange(-2, 5)
EARTH_RADIUS_KM = EARTH_RADIUS_M / 1000.0


def haversine_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in km between WGS84 points given in degrees (broadcasts)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lon1, lat1, lon2, lat2))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def random_folds(n: int, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id ``[n]`` (0..n_folds-1) of a seeded random, size-balanced split."""
    if not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must satisfy 2 <= n_folds <= n, got n_folds={n_folds}, n={n}")
    fold = np.arange(n) % n_folds
    return np.random.default_rng(seed).permutation(fold)


def spatial_folds(xy: np.ndarray, n_folds: int = 5, n_blocks: int | None = None, seed: int = 0) -> np.ndarray:
    """Fold id ``[n]`` from k-means blocks of projected coordinates ``xy`` ``[n, 2]`` (metres).

    ``n_blocks`` (default ``4 * n_folds``) k-means clusters are assigned whole to folds, largest
    first, each to the currently smallest fold, so folds are contiguous regions of similar size.
    """
    from sklearn.cluster import KMeans

    xy = np.asarray(xy, dtype=np.float64)
    n = xy.shape[0]
    n_blocks = 4 * n_folds if n_blocks is None else int(n_blocks)
    if not 2 <= n_folds <= n_blocks <= n:
        raise ValueError(f"need 2 <= n_folds <= n_blocks <= n, got {n_folds}, {n_blocks}, {n}")
    labels = KMeans(n_clusters=n_blocks, n_init=4, random_state=seed).fit_predict(xy - xy.mean(0))
    sizes = np.bincount(labels, minlength=n_blocks)
    fold_of_block = np.empty(n_blocks, dtype=np.int64)
    load = np.zeros(n_folds, dtype=np.int64)
    for b in np.argsort(-sizes, kind="stable"):
        f = int(np.argmin(load))
        fold_of_block[b] = f
        load[f] += sizes[b]
    return fold_of_block[labels]


def ridge_loo(X: np.ndarray, Y: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS):
    """Ridge fit of standardised targets on standardised features with per-target LOO alpha.

    ``X`` ``[n, d]`` and ``Y`` ``[n, t]`` must be centred (an intercept is implied). With the
    eigendecomposition ``X'X = V diag(s) V'`` the hat matrix for penalty a is
    ``H = U diag(s/(s+a)) U'`` (``U = X V / sqrt(s)``), plus ``1/n`` for the intercept; the LOO
    residual is ``e / (1 - h_ii)``. Returns ``(coef [d, t], alpha [t])``.
    """
    n = X.shape[0]
    s, V = np.linalg.eigh(X.T @ X)
    s = np.clip(s, 0.0, None)
    XV = X @ V  # [n, d] = U * sqrt(s)
    XtY = V.T @ (X.T @ Y)  # [d, t]
    best = np.full(Y.shape[1], np.inf)
    alpha = np.zeros(Y.shape[1])
    coef = np.zeros((X.shape[1], Y.shape[1]))
    for a in alphas:
        g = 1.0 / (s + a)
        B = V @ (g[:, None] * XtY)  # [d, t]
        h = (XV * XV) @ g + 1.0 / n  # diag of the hat matrix incl. intercept
        loo = ((Y - X @ B) / (1.0 - h)[:, None]) ** 2
        err = loo.mean(0)
        better = err < best
        best[better] = err[better]
        alpha[better] = a
        coef[:, better] = B[:, better]
    return coef, alpha


def cross_val_predict_ridge(X: np.ndarray, Y: np.ndarray, folds: np.ndarray,
                            alphas: Sequence[float] = DEFAULT_ALPHAS):
    """Out-of-fold ridge predictions ``[n, t]`` of ``Y`` from ``X`` ``[n, d]``, and the alphas
    chosen ``[n_folds, t]``; standardisation statistics come from each training fold only."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    pred = np.empty_like(Y)
    chosen = []
    for f in np.unique(folds):
        te, tr = folds == f, folds != f
        mx, sx = X[tr].mean(0), X[tr].std(0)
        sx = np.where(sx > 0, sx, 1.0)
        my, sy = Y[tr].mean(0), Y[tr].std(0)
        sy = np.where(sy > 0, sy, 1.0)
        coef, alpha = ridge_loo((X[tr] - mx) / sx, (Y[tr] - my) / sy, alphas)
        pred[te] = ((X[te] - mx) / sx) @ coef * sy + my
        chosen.append(alpha)
    return pred, np.array(chosen)


def _r2(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return 1.0 - ((y - p) ** 2).sum(0) / ss_tot


def probe_dataset(
    activations: xr.DataArray,
    lon,
    lat,
    region,
    crs_by_region: Mapping[str, str],
    n_folds: int = 5,
    n_blocks: int | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
) -> xr.Dataset:
    """Cross-validated ridge location probes per region, layer and fold scheme.

    ``activations``: DataArray ``[prompt, layer, unit]``; ``lon``/``lat`` WGS84 degrees and
    ``region`` (str) per prompt; x/y targets in ``crs_by_region[region]`` (metres).
    Returns a Dataset with dims ``(region, layer, scheme)``, ``scheme = ["random", "spatial"]``:
    ``r2_xy`` (mean R^2 of x and y), ``r2_x``, ``r2_y``, ``r2_latlon`` (mean of lat and lon),
    ``median_km`` (haversine error of the x/y probe, back-projected), ``median_km_latlon``
    (of the lat/lon probe), ``mean_km``, ``alpha_xy`` (geometric-mean alpha chosen for x/y);
    plus ``n`` per region.
    """
    if not isinstance(activations, xr.DataArray) or activations.ndim != 3:
        raise ValueError("activations must be a 3-D xarray.DataArray [prompt, layer, unit]")
    pdim, ldim, _ = activations.dims
    lon, lat, region, regions, _ = check_locations(activations.shape[0], lon, lat, region, crs_by_region)
    layers = activations.coords[ldim].values if ldim in activations.coords else np.arange(activations.shape[1])
    schemes = ["random", "spatial"]
    names = ["r2_xy", "r2_x", "r2_y", "r2_latlon", "median_km", "median_km_latlon", "mean_km", "alpha_xy"]
    out = {v: np.full((len(regions), len(layers), 2), np.nan) for v in names}
    counts = np.zeros(len(regions), dtype=np.int64)
    data = activations.transpose(pdim, ldim, ...).values
    for r, reg in enumerate(regions):
        idx = np.flatnonzero(region == reg)
        crs = str(crs_by_region[reg])
        xy = project(lon[idx], lat[idx], crs)
        ll = np.column_stack([lat[idx], lon[idx]])
        back = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        folds = {"random": random_folds(idx.size, n_folds, seed),
                 "spatial": spatial_folds(xy, n_folds, n_blocks, seed)}
        counts[r] = idx.size
        for li in range(len(layers)):
            X = np.asarray(data[idx, li], dtype=np.float64)
            for si, scheme in enumerate(schemes):
                pred, alpha = cross_val_predict_ridge(X, np.column_stack([xy, ll]), folds[scheme], alphas)
                r2 = _r2(np.column_stack([xy, ll]), pred)
                plon, plat = back.transform(pred[:, 0], pred[:, 1])
                km = haversine_km(plon, plat, lon[idx], lat[idx])
                km_ll = haversine_km(pred[:, 3], pred[:, 2], lon[idx], lat[idx])
                vals = {"r2_xy": r2[:2].mean(), "r2_x": r2[0], "r2_y": r2[1], "r2_latlon": r2[2:].mean(),
                        "median_km": np.median(km), "median_km_latlon": np.median(km_ll),
                        "mean_km": km.mean(), "alpha_xy": np.exp(np.log(alpha[:, :2]).mean())}
                for v, x in vals.items():
                    out[v][r, li, si] = x
    ds = xr.Dataset(
        {**{v: (("region", ldim, "scheme"), a) for v, a in out.items()}, "n": ("region", counts)},
        coords={"region": regions, ldim: layers, "scheme": schemes},
    )
    ds.attrs.update(model="ridge", n_folds=int(n_folds), n_blocks=int(n_blocks or 4 * n_folds),
                    alphas=np.asarray(alphas, dtype=np.float64), seed=int(seed),
                    alpha_rule="per target, min exact LOO error within the training fold",
                    crs=str(dict((r, str(crs_by_region[r])) for r in regions)),
                    r2="pooled out-of-fold predictions, 1 - SS_res/SS_tot")
    return ds
