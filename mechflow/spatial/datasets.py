"""Per-region spatial statistics as xarray Datasets (the ``moran.nc`` / ``lisa.nc`` contracts)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from mechflow.spatial.fdr import fdr_bh
from mechflow.spatial.global_stats import global_autocorrelation
from mechflow.spatial.local_stats import local_moran
from mechflow.spatial.weights import knn_weights

__all__ = ["moran_dataset", "lisa_dataset", "check_locations", "region_weights", "top_features", "MORAN_ATTRS",
           "MORAN_Q", "MORAN_VARS", "LISA_ATTRS", "LISA_ALPHA"]

LISA_ALPHA = 0.05  # BH-FDR level of the LISA ``significant`` mask

_MORAN_STATS = ("I", "EI", "VI_norm", "z_norm", "p_norm", "z_rand", "p_rand", "z_sim", "p_sim", "p_greater")
_GEARY_STATS = {"geary_C": "C", "geary_z_norm": "z_norm", "geary_p_norm": "p_norm",
                "geary_z_sim": "z_sim", "geary_p_sim": "p_sim", "geary_p_less": "p_less"}
#: q values of :func:`moran_dataset` -> the p values they are the BH (over a region's features) of
MORAN_Q = {"q_greater": "p_greater", "q_bh_norm": "p_norm", "geary_q_less": "geary_p_less"}
#: the [region, feature] variables of :func:`moran_dataset` (float64)
MORAN_VARS = (*_MORAN_STATS, "q_greater", "q_bh_norm", *_GEARY_STATS, "geary_q_less")


def check_locations(n: int, lon, lat, region, crs_by_region: Mapping[str, str]):
    """Validate per-prompt lon/lat (degrees) and region against ``n`` prompts and the CRS mapping.

    Returns (lon, lat, region, regions, crs_used): float64/str arrays [n], the sorted region names
    and the CRS of each region present.
    """
    lon = np.asarray(lon, dtype=np.float64).ravel()
    lat = np.asarray(lat, dtype=np.float64).ravel()
    region = np.asarray(region).astype(str).ravel()
    for name, arr in (("lon", lon), ("lat", lat), ("region", region)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries, expected one per prompt ({n})")
    regions = [str(r) for r in np.unique(region)]
    missing = [r for r in regions if r not in crs_by_region]
    if missing:
        raise ValueError(f"no CRS for region(s) {missing}; crs_by_region has {sorted(crs_by_region)}")
    return lon, lat, region, regions, {r: str(crs_by_region[r]) for r in regions}


def _prepare(values: xr.DataArray, lon, lat, region, crs_by_region: Mapping[str, str]):
    if not isinstance(values, xr.DataArray) or values.ndim != 2:
        raise ValueError("values must be a 2-D xarray.DataArray [prompt, <feature-dim>]")
    pdim, fdim = values.dims
    lon, lat, region, regions, crs_used = check_locations(values.shape[0], lon, lat, region, crs_by_region)
    return pdim, fdim, lon, lat, region, regions, crs_used


def region_weights(lon, lat, region, crs_by_region: Mapping[str, str], k: int = 8, transform: str = "r") -> dict:
    """Region -> (positions of its prompts, KNN weights in the region's CRS), for every region present;
    what :func:`moran_dataset` builds itself unless given them (``weights=``)."""
    lon, lat, region, regions, crs_used = check_locations(np.shape(region)[0], lon, lat, region, crs_by_region)
    out = {}
    for reg in regions:
        idx = np.flatnonzero(region == reg)
        if idx.size <= k:
            raise ValueError(f"region {reg!r} has {idx.size} prompts; KNN weights need more than k={k}")
        out[reg] = (idx, knn_weights(lon[idx], lat[idx], k=k, crs=crs_used[reg], transform=transform))
    return out


def top_features(I: np.ndarray, top_n: int) -> np.ndarray:
    """Positions of the ``top_n`` largest global Moran's I of one region (constant features, NaN I, never)."""
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    I = np.where(np.isnan(I), -np.inf, I)  # noqa: E741
    valid = int(np.isfinite(I).sum())
    return np.argsort(-I, kind="stable")[: min(top_n, valid)]


def _base_attrs(k, transform, crs_used, permutations, seed) -> dict:
    return {
        "weights": "knn",
        "k": int(k),
        "transform": str(transform),
        "crs": json.dumps(crs_used, sort_keys=True),
        "permutations": int(permutations),
        "seed": int(seed),
    }


def moran_dataset(
    values: xr.DataArray,
    lon,
    lat,
    region,
    crs_by_region: Mapping[str, str],
    k: int = 8,
    transform: str = "r",
    permutations: int = 999,
    seed: int = 0,
    device=None,
    num_threads: int | None = 1,
    batch_columns: int | None = None,
    weights: Mapping[str, tuple] | None = None,
    on_region: Callable[[str, np.ndarray, dict], None] | None = None,
    blocks=None,
    arrangements: Mapping[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """Global Moran's I and Geary's C per region for every feature.

    ``values``: DataArray ``[prompt, <feature-dim>]`` (``unit`` or ``feature``; its coordinate is
    kept); ``lon``/``lat``: WGS84 degrees per prompt; ``region``: str per prompt; weights are KNN
    in ``crs_by_region[region]``. Returns a Dataset with dims ``(region, <feature-dim>)``:
    I, EI, VI_norm, z_norm, p_norm (two-tailed, esda default), z_rand, p_rand, z_sim, p_sim
    (esda's folded pseudo p), p_greater (one-sided permutation p for positive autocorrelation,
    ``(#{I_sim >= I} + 1)/(P + 1)``), q_greater (BH over features within a region, from p_greater),
    q_bh_norm (BH from p_norm), geary_C, geary_z_norm, geary_p_norm (one-tailed, as esda),
    geary_z_sim, geary_p_sim (folded), geary_p_less (``(#{C_sim <= C} + 1)/(P + 1)``), geary_q_less
    (BH of geary_p_less); and per region ``n``, ``n_constant``, ``n_duplicates``. The exact
    definitions are in the Dataset attrs (:data:`MORAN_ATTRS`). Permutation variables are NaN when
    ``permutations == 0``. ``num_threads``: CPU threads of the permutation test (see
    :func:`~mechflow.spatial.global_stats.global_autocorrelation`; the results do not depend on it).
    ``batch_columns``: when ``values`` is a block of the columns of a wider feature set, that set's
    width (each column's statistics then equal the whole set's bit for bit; its q values do not,
    being BH over the block's features only). ``weights``: :func:`region_weights` of these locations,
    when the caller already has them. ``on_region(region, values [n_r, F], result)``: called with each
    region's values and its :func:`~mechflow.spatial.global_stats.global_autocorrelation` result, every
    replicate's I included (``result["replicates"]``; the layer tests of
    :class:`mechflow.spatial.layer_tests.LayerTests`). ``blocks``: labels per prompt (e.g. admin-1 units): the
    permutations then move places only within their block (the null of features residualised on them).
    """
    pdim, fdim, lon, lat, region, regions, crs_used = _prepare(values, lon, lat, region, crs_by_region)
    blocks = None if blocks is None else np.asarray(blocks)
    if weights is None:
        weights = region_weights(lon, lat, region, crs_used, k=k, transform=transform)
    data = np.asarray(values.values, dtype=np.float64)
    F = data.shape[1]
    names, gnames = _MORAN_STATS, _GEARY_STATS
    out = {v: np.full((len(regions), F), np.nan) for v in MORAN_VARS}
    counts = {v: np.zeros(len(regions), dtype=np.int64) for v in ("n", "n_constant", "n_duplicates")}
    for r, reg in enumerate(regions):
        idx, w = weights[reg]
        res = global_autocorrelation(data[idx], w, permutations=permutations, seed=seed, device=device,
                                     num_threads=num_threads, batch_columns=batch_columns,
                                     keep_replicates=on_region is not None,
                                     blocks=None if blocks is None else blocks[idx],
                                     arrangements=None if arrangements is None else arrangements[reg])
        if on_region is not None:
            on_region(reg, data[idx], res)
            res.pop("replicates", None)
            res.pop("arrangements", None)
        for v in names:
            out[v][r] = res["moran"][v]
        for v, g in gnames.items():
            out[v][r] = res["geary"][g]
        out["q_greater"][r] = fdr_bh(res["moran"]["p_greater"])
        out["geary_q_less"][r] = fdr_bh(res["geary"]["p_less"])
        out["q_bh_norm"][r] = fdr_bh(res["moran"]["p_norm"])
        counts["n"][r] = idx.size
        counts["n_constant"][r] = res["n_constant"]
        counts["n_duplicates"][r] = w.n_duplicates
    coords = {"region": regions, fdim: values.coords[fdim].values if fdim in values.coords else np.arange(F)}
    ds = xr.Dataset(
        {**{v: (("region", fdim), a) for v, a in out.items()},
         **{v: ("region", a) for v, a in counts.items()}},
        coords=coords,
    )
    ds.attrs.update(_base_attrs(k, transform, crs_used, permutations, seed))
    ds.attrs.update(MORAN_ATTRS)
    return ds


MORAN_ATTRS = {
    "p_norm": "two-tailed normal-approximation p of z_norm (esda Moran default)",
    "p_sim": "esda's folded pseudo p: (min(#{I_sim>=I}, P-#{I_sim>=I})+1)/(P+1); ~Uniform(0,0.5] under "
             "the null, not a one-sided p-value",
    "p_greater": "one-sided permutation p for positive autocorrelation: (#{I_sim>=I}+1)/(P+1), "
                 "same replicates as p_sim; NaN when permutations=0",
    "q_greater": "Benjamini-Hochberg over the features of each region, from p_greater; "
                 "significant = q_greater < 0.05",
    "q_bh_norm": "Benjamini-Hochberg over the features of each region, from p_norm",
    "geary_p_norm": "one-tailed in the direction of C-1 (esda Geary)",
    "geary_p_sim": "esda's folded pseudo p of Geary's C: (min(#{C_sim>=C}, P-#{C_sim>=C})+1)/(P+1)",
    "geary_p_less": "one-sided permutation p for positive autocorrelation (small C): (#{C_sim<=C}+1)/(P+1)",
    "geary_q_less": "Benjamini-Hochberg over the features of each region, from geary_p_less",
}

LISA_ATTRS = {
    "q": "1 HH, 2 LH, 3 LL, 4 HL (esda); 0 = not computed",
    "p_sim": "esda's folded conditional-permutation pseudo p: (min(#{Ii_sim>=Ii}, P-#{Ii_sim>=Ii})+1)/(P+1)",
    "p_local": "two-sided conditional-permutation p: min(1, 2 (#{Ii_sim>=Ii}+1)/(P+1)) if Ii >= E[Ii], "
               "else min(1, 2 (#{Ii_sim<=Ii}+1)/(P+1)); the one-sided p in the observed direction, doubled",
    "q_local": "Benjamini-Hochberg over the places of each region, per feature, from p_local",
    "significant": "q_local < 0.05 (BH over places per feature, alpha 0.05)",
}


def lisa_dataset(
    values: xr.DataArray,
    lon,
    lat,
    region,
    crs_by_region: Mapping[str, str],
    features: Mapping[str, Sequence] | Sequence | None = None,
    top_n: int | None = None,
    k: int = 8,
    transform: str = "r",
    permutations: int = 999,
    seed: int = 0,
    device=None,
) -> xr.Dataset:
    """Local Moran's I (LISA) per region for selected features.

    Choose features with exactly one of ``features`` (feature ids, either one list for all
    regions or ``{region: list}``) and ``top_n`` (the ``top_n`` features with the largest
    global Moran's I in each region; constant features never chosen).

    Layout: dims ``(region, prompt, <feature-dim>)``. ``prompt`` keeps the input's prompt
    coordinate (all prompts), the feature dim is the union of the features chosen in any
    region. ``Is``/``p_sim``/``p_local``/``q_local`` (float64) are NaN, ``q`` (int8) is 0 and
    ``significant`` (bool) False where a prompt is not in the region or the feature was not chosen
    for it. ``p_local`` is the doubled one-sided local p (see :data:`LISA_ATTRS`), ``q_local`` its
    BH over the places of the region per feature, ``significant = q_local < 0.05``; ``selected`` ``[region, feature]`` (bool) and
    ``rank`` ``[region, feature]`` (int, 0 = highest I, -1 = not chosen) say which were, and
    ``prompt_region`` ``[prompt]`` gives each prompt's region. To read a map:
    ``ds.sel(region=r, feature=f).dropna("prompt", subset=["Is"])``.
    """
    if (features is None) == (top_n is None):
        raise ValueError("give exactly one of features=... or top_n=...")
    pdim, fdim, lon, lat, region, regions, crs_used = _prepare(values, lon, lat, region, crs_by_region)
    data = np.asarray(values.values, dtype=np.float64)
    fids = values.coords[fdim].values if fdim in values.coords else np.arange(data.shape[1])
    pos = {f.item() if hasattr(f, "item") else f: i for i, f in enumerate(fids)}
    chosen: dict[str, np.ndarray] = {}
    weights = {}
    for reg in regions:
        idx = np.flatnonzero(region == reg)
        if idx.size <= k:
            raise ValueError(f"region {reg!r} has {idx.size} prompts; KNN weights need more than k={k}")
        w = knn_weights(lon[idx], lat[idx], k=k, crs=crs_used[reg], transform=transform)
        weights[reg] = (idx, w)
        if top_n is not None:
            if top_n < 1:
                raise ValueError(f"top_n must be >= 1, got {top_n}")
            chosen[reg] = top_features(global_autocorrelation(data[idx], w, permutations=0, geary=False)["moran"]["I"],
                                       top_n)
        else:
            sel = features.get(reg, []) if isinstance(features, Mapping) else features
            try:
                chosen[reg] = np.array([pos[f] for f in sel], dtype=np.int64)
            except KeyError as e:
                raise ValueError(f"feature id {e.args[0]!r} not in the {fdim!r} coordinate") from None
    union = np.unique(np.concatenate([c for c in chosen.values()] or [np.zeros(0, np.int64)]))
    col = {int(c): j for j, c in enumerate(union)}
    R, N, U = len(regions), data.shape[0], union.size
    Is = np.full((R, N, U), np.nan)
    ps = np.full((R, N, U), np.nan)
    pl = np.full((R, N, U), np.nan)
    ql = np.full((R, N, U), np.nan)
    q = np.zeros((R, N, U), dtype=np.int8)
    selected = np.zeros((R, U), dtype=bool)
    rank = np.full((R, U), -1, dtype=np.int64)
    for r, reg in enumerate(regions):
        idx, w = weights[reg]
        cols = chosen[reg]
        if cols.size == 0:
            continue
        res = local_moran(data[idx][:, cols], w, permutations=permutations, seed=seed, device=device)
        js = np.array([col[int(c)] for c in cols])
        Is[r, idx[:, None], js[None, :]] = res["Is"]
        ps[r, idx[:, None], js[None, :]] = res["p_sim"]
        pl[r, idx[:, None], js[None, :]] = res["p_local"]
        ql[r, idx[:, None], js[None, :]] = fdr_bh(res["p_local"].T).T  # BH over the region's places
        q[r, idx[:, None], js[None, :]] = res["q"]
        selected[r, js] = True
        rank[r, js] = np.arange(cols.size)
    prompt_coord = values.coords[pdim].values if pdim in values.coords else np.arange(N)
    ds = xr.Dataset(
        {
            "Is": (("region", pdim, fdim), Is),
            "q": (("region", pdim, fdim), q),
            "p_sim": (("region", pdim, fdim), ps),
            "p_local": (("region", pdim, fdim), pl),
            "q_local": (("region", pdim, fdim), ql),
            "significant": (("region", pdim, fdim), ql < LISA_ALPHA),
            "selected": (("region", fdim), selected),
            "rank": (("region", fdim), rank),
            "prompt_region": (pdim, region),
        },
        coords={"region": regions, pdim: prompt_coord, fdim: fids[union]},
    )
    ds.attrs.update(_base_attrs(k, transform, crs_used, permutations, seed))
    ds.attrs.update(LISA_ATTRS)
    ds.attrs.update(selection=f"top_n={top_n} by global Moran's I" if top_n is not None else "given")
    return ds
