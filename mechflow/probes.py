"""Linear location probes: ridge regression from each layer's activations to coordinates.

For every region and layer, ridge maps standardised activations ``[n, d]`` to the projected
coordinates x/y (metres, the region's CRS) and to lat/lon (degrees), all targets solved at once.
Cross-validation is k-fold with two fold schemes:

- ``random``: prompts shuffled into k folds;
- ``spatial``: prompts clustered into ``n_blocks`` k-means blocks on projected coordinates, whole
  blocks assigned to folds (balanced by size). Neighbouring places never straddle train/test, so
  the gap between the schemes shows how much a probe leans on spatial leakage.

The null: the same probes (same folds, same alpha rule) fitted to the region's coordinates shuffled among
its places (``seed + 1``), solved as extra targets of the same ridge fits: ``r2_xy_null`` and
``r2_latlon_null`` are the R^2 a probe reaches when activations and places are unrelated (about 0 or
below; what a probe's R^2 must beat).

Inside each training fold, features and targets are standardised with the training fold's
statistics and alpha is chosen per target from ``alphas`` by exact leave-one-out error (the
closed form from one eigendecomposition of the training Gram matrix, as in RidgeCV). Scores use
out-of-fold predictions pooled over folds: ``R^2 = 1 - SS_res / SS_tot`` per target (averaged
over x and y, or lat and lon), and the median great-circle (haversine) error in km.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial

import numpy as np
import xarray as xr
from pyproj import Transformer
from threadpoolctl import threadpool_limits

from mechflow.contracts import EARTH_RADIUS_M
from mechflow.spatial.datasets import check_locations
from mechflow.spatial.weights import project

__all__ = ["DEFAULT_ALPHAS", "haversine_km", "random_folds", "spatial_folds", "ridge_loo",
           "cross_val_predict_ridge", "cross_val_predict_layers", "probe_dataset"]

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


def _eigh_each(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of each symmetric matrix of a stack ``[L, m, m]``, one LAPACK call per matrix.

    NumPy's stacked ``eigh`` goes through a generic gufunc loop that was 40-80x slower per 576 x 576
    matrix than a plain call on this project's machines (OpenBLAS 0.3.30), so the stack is looped."""
    out = [np.linalg.eigh(g) for g in gram]
    return np.stack([w for w, _ in out]), np.stack([v for _, v in out])


def ridge_loo(X: np.ndarray, Y: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS):
    """Ridge fit of standardised targets on standardised features with per-target LOO alpha.

    ``X`` ``[n, d]`` (or a stack ``[L, n, d]``, one design per layer, solved together) and ``Y``
    ``[n, t]`` must be centred (an intercept is implied). With the eigendecomposition of the Gram
    matrix in the smaller dimension, ``X'X = V diag(s) V'`` (or ``XX' = U diag(s) U'``), the hat
    matrix for penalty a is ``H = U diag(s/(s+a)) U'`` plus ``1/n`` for the intercept, and the LOO
    residual is ``e / (1 - h_ii)``: one decomposition per layer serves every alpha and target.
    Returns ``(coef [d, t], alpha [t])``, or ``([L, d, t], [L, t])`` for a stack.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    single = X.ndim == 2
    if single:
        X = X[None]
    L, n, d = X.shape
    Xt = np.swapaxes(X, 1, 2)  # [L, d, n]
    if n >= d:  # primal: U sqrt(s) = X V
        s, V = _eigh_each(Xt @ X)  # [L, d], [L, d, d]
        XU = X @ V  # [L, n, d]: U * sqrt(s)
        lift = V  # coef = V diag(g) (XV)' Y
    else:  # dual: X = U sqrt(s) W'; coef = X' U diag(g) U' Y
        s, U = _eigh_each(X @ Xt)  # [L, n], [L, n, n]
        XU = U * np.sqrt(np.clip(s, 0.0, None))[:, None, :]
        lift = Xt @ U / np.where(s > 0, np.sqrt(np.clip(s, 0.0, None)), 1.0)[:, None, :]  # [L, d, r]: V
    s = np.clip(s, 0.0, None)
    XUtY = np.swapaxes(XU, 1, 2) @ Y  # [L, r, t]
    XU2 = XU * XU  # [L, n, r]
    best = np.full((L, Y.shape[1]), np.inf)
    alpha = np.zeros((L, Y.shape[1]))
    coef = np.zeros((L, d, Y.shape[1]))
    for a in alphas:  # a handful of penalties; every layer and target at once
        g = 1.0 / (s + a)  # [L, r]
        gXUtY = g[:, :, None] * XUtY  # [L, r, t]
        h = (XU2 @ g[:, :, None])[:, :, 0] + 1.0 / n  # [L, n] diag of the hat matrix incl. intercept
        err = (((Y - XU @ gXUtY) / (1.0 - h)[:, :, None]) ** 2).mean(1)  # [L, t] mean LOO error
        better = err < best
        best = np.where(better, err, best)
        alpha = np.where(better, a, alpha)
        coef = np.where(better[:, None, :], lift @ gXUtY, coef)
    return (coef[0], alpha[0]) if single else (coef, alpha)


def cross_val_predict_ridge(X: np.ndarray, Y: np.ndarray, folds: np.ndarray,
                            alphas: Sequence[float] = DEFAULT_ALPHAS):
    """Out-of-fold ridge predictions ``[n, t]`` of ``Y`` from ``X`` ``[n, d]``, and the alphas
    chosen ``[n_folds, t]``; standardisation statistics come from each training fold only.

    ``X`` may be a stack ``[L, n, d]`` (one design per layer, the same targets and folds): then
    ``[L, n, t]`` and ``[n_folds, L, t]``, every layer solved in the same batched operations.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    single = X.ndim == 2
    if single:
        X = X[None]
    pred = np.empty((X.shape[0], *Y.shape))
    chosen = []
    for f in np.unique(folds):
        te, tr = folds == f, folds != f
        Xtr = X[:, tr]
        mx, sx = Xtr.mean(1, keepdims=True), Xtr.std(1, keepdims=True)
        sx = np.where(sx > 0, sx, 1.0)
        my, sy = Y[tr].mean(0), Y[tr].std(0)
        sy = np.where(sy > 0, sy, 1.0)
        coef, alpha = ridge_loo((Xtr - mx) / sx, (Y[tr] - my) / sy, alphas)
        pred[:, te] = ((X[:, te] - mx) / sx) @ coef * sy + my
        chosen.append(alpha)
    chosen = np.array(chosen)
    return (pred[0], chosen[:, 0]) if single else (pred, chosen)


def cross_val_predict_layers(X: np.ndarray, Y: np.ndarray, folds: np.ndarray,
                             alphas: Sequence[float] = DEFAULT_ALPHAS, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cross_val_predict_ridge` of a stack ``X`` ``[L, n, d]`` on ``threads`` threads (the layers split
    between them, single-threaded BLAS each, so the result does not depend on ``threads``):
    ``[L, n, t]`` and ``[n_folds, L, t]``."""
    idx = np.arange(X.shape[1])
    data = np.moveaxis(X, 0, 1)  # [n, L, d] view
    chunks = _layer_chunks(X.shape[0], X.shape[1], X.shape[2], 1e12, threads)
    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        parts = list(pool.map(partial(_solve_layers, data, idx, Y, folds, alphas), chunks))
    return np.concatenate([p for _, p, _ in parts]), np.concatenate([a for _, _, a in parts], axis=1)


def _solve_layers(data: np.ndarray, idx: np.ndarray, Y: np.ndarray, folds: np.ndarray, alphas: Sequence[float],
                  chunk: slice) -> tuple[slice, np.ndarray, np.ndarray]:
    """Out-of-fold predictions ``[l, n, t]`` and alphas ``[fold, l, t]`` of the prompts ``idx`` of ``data``
    ``[prompt, layer, unit]`` for the layers ``chunk``."""
    X = np.moveaxis(np.asarray(data[idx, chunk], dtype=np.float64), 1, 0)  # [layers, n, d]
    return (chunk, *cross_val_predict_ridge(X, Y, folds, alphas))


def _layer_chunks(n_layers: int, n: int, d: int, budget_mb: float, pieces: int = 1) -> list[slice]:
    """Slices of layers whose float64 designs ``[chunk, n, d]`` (times a few working copies) fit ``budget_mb``,
    at least ``pieces`` of them where there are that many layers (one per worker)."""
    per_layer = 4 * n * max(n, d) * 8 / 2**20
    size = max(1, min(-(-n_layers // max(pieces, 1)), int(budget_mb // max(per_layer, 1e-9))))
    return [slice(i, min(i + size, n_layers)) for i in range(0, n_layers, size)]


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
    threads: int | None = None,
    memory_mb: float = 512.0,
) -> xr.Dataset:
    """Cross-validated ridge location probes per region, layer and fold scheme.

    ``activations``: DataArray ``[prompt, layer, unit]``; ``lon``/``lat`` WGS84 degrees and
    ``region`` (str) per prompt; x/y targets in ``crs_by_region[region]`` (metres).
    Returns a Dataset with dims ``(region, layer, scheme)``, ``scheme = ["random", "spatial"]``:
    ``r2_xy`` (mean R^2 of x and y), ``r2_x``, ``r2_y``, ``r2_latlon`` (mean of lat and lon),
    ``median_km`` (haversine error of the x/y probe, back-projected), ``median_km_latlon``
    (of the lat/lon probe), ``mean_km``, ``alpha_xy`` (geometric-mean alpha chosen for x/y),
    ``r2_xy_null`` and ``r2_latlon_null`` (the same probes fitted to coordinates shuffled among the
    region's places, seed + 1: the null R^2); plus ``n`` per region.

    Every layer of a region and fold is solved in the same batched operations (``ridge_loo`` on a
    ``[layer, n, d]`` stack), in chunks of layers whose float64 designs fit ``memory_mb``. With
    ``threads``, the chunks run on that many threads with single-threaded BLAS (results do not
    depend on the thread count); None leaves BLAS at its default.
    """
    if not isinstance(activations, xr.DataArray) or activations.ndim != 3:
        raise ValueError("activations must be a 3-D xarray.DataArray [prompt, layer, unit]")
    pdim, ldim, _ = activations.dims
    lon, lat, region, regions, _ = check_locations(activations.shape[0], lon, lat, region, crs_by_region)
    layers = activations.coords[ldim].values if ldim in activations.coords else np.arange(activations.shape[1])
    schemes = ["random", "spatial"]
    names = ["r2_xy", "r2_x", "r2_y", "r2_latlon", "median_km", "median_km_latlon", "mean_km", "alpha_xy",
             "r2_xy_null", "r2_latlon_null"]
    out = {v: np.full((len(regions), len(layers), 2), np.nan) for v in names}
    counts = np.zeros(len(regions), dtype=np.int64)
    data = activations.transpose(pdim, ldim, ...).values
    workers = max(1, int(threads or 1))
    # with `threads`, BLAS runs single-threaded and the layers are spread over that many Python threads (LAPACK
    # releases the GIL): each layer's numbers then do not depend on the thread count, and an oversubscribed
    # machine does not stall OpenBLAS's own threads (a 576 x 576 eigh was 10-15x slower with 2 BLAS threads at
    # load 8 on 2 cores than with one)
    limits = threadpool_limits(limits=1) if threads else nullcontext()
    with limits, ThreadPoolExecutor(max_workers=workers) as pool:
        for r, reg in enumerate(regions):
            idx = np.flatnonzero(region == reg)
            crs = str(crs_by_region[reg])
            xy = project(lon[idx], lat[idx], crs)
            ll = np.column_stack([lat[idx], lon[idx]])
            back = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
            folds = {"random": random_folds(idx.size, n_folds, seed),
                     "spatial": spatial_folds(xy, n_folds, n_blocks, seed)}
            counts[r] = idx.size
            shuffle = np.random.default_rng(seed + 1).permutation(idx.size)  # the null: places unrelated to activations
            Y = np.column_stack([xy, ll, xy[shuffle], ll[shuffle]])  # [n, 8]: x, y (m), lat, lon (deg); shuffled copies

            for si, scheme in enumerate(schemes):
                chunks = _layer_chunks(len(layers), idx.size, data.shape[2], memory_mb / workers, workers)
                solve = partial(_solve_layers, data, idx, Y, folds[scheme], alphas)
                for chunk, pred, alpha in pool.map(solve, chunks):
                    r2 = 1.0 - ((Y - pred) ** 2).sum(1) / ((Y - Y.mean(0)) ** 2).sum(0)  # [l, 8]
                    plon, plat = back.transform(pred[:, :, 0].ravel(), pred[:, :, 1].ravel())
                    km = haversine_km(np.reshape(plon, pred.shape[:2]), np.reshape(plat, pred.shape[:2]), lon[idx], lat[idx])
                    km_ll = haversine_km(pred[:, :, 3], pred[:, :, 2], lon[idx], lat[idx])
                    vals = {"r2_xy": r2[:, :2].mean(1), "r2_x": r2[:, 0], "r2_y": r2[:, 1], "r2_latlon": r2[:, 2:4].mean(1),
                            "median_km": np.median(km, axis=1), "median_km_latlon": np.median(km_ll, axis=1),
                            "mean_km": km.mean(1), "alpha_xy": np.exp(np.log(alpha[:, :, :2]).mean((0, 2))),
                            "r2_xy_null": r2[:, 4:6].mean(1), "r2_latlon_null": r2[:, 6:8].mean(1)}
                    for v, x in vals.items():
                        out[v][r, chunk, si] = x
    ds = xr.Dataset(
        {**{v: (("region", ldim, "scheme"), a) for v, a in out.items()}, "n": ("region", counts)},
        coords={"region": regions, ldim: layers, "scheme": schemes},
    )
    ds.attrs.update(model="ridge", n_folds=int(n_folds), n_blocks=int(n_blocks or 4 * n_folds),
                    alphas=np.asarray(alphas, dtype=np.float64), seed=int(seed),
                    alpha_rule="per target, min exact LOO error within the training fold",
                    crs=str(dict((r, str(crs_by_region[r])) for r in regions)),
                    r2="pooled out-of-fold predictions, 1 - SS_res/SS_tot",
                    r2_null="the same probes fitted to coordinates shuffled among the region's places (seed + 1)")
    return ds
