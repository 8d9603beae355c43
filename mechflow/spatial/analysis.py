"""The spatial analysis the ``spatial`` rule runs on any feature set, with its controls.

A *feature set* is a 2-D DataArray [prompt, <feature-dim>] with the prompt coordinates
(latitude, longitude, region): raw units of one layer (dim ``unit``), SAE features (``feature``)
or semi-NMF factor loadings G (``factor``); :func:`mechflow.io.load_feature_set` reads one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from mechflow.data.regions import region_crs
from mechflow.spatial.datasets import lisa_dataset, moran_dataset
from mechflow.spatial.residualise import TEMPLATE_COVARIATES, residualise_within_regions

#: variables each control keeps, under ``<var>_<suffix>`` (the same test as the real data)
CONTROL_VARS = ("I", "z_norm", "p_norm", "p_sim", "p_greater", "q_greater")

#: suffix -> what the control is (also written to the moran.nc attrs)
CONTROLS = {
    "shuffled": "coordinates permuted within each region (seed + 1), then the same statistics and permutation test as "
                "the real data (same permutations and seed); q_greater_shuffled = BH over features per region",
    "resid": "each feature residualised within its region on one-hot admin-1 unit and one-hot prompt length "
             "(n_tokens), then the same statistics and test (the template-confound baseline; it also removes "
             "real structure at the admin-1 scale); attrs residualised_on",
    "with_sink": "raw units pooled WITH the position pooling left out (the attention sink; rebuilt exactly from the "
                 "activations file's sink), then the same statistics and test: the result without the pooling fix",
}


def crs_for(regions: np.ndarray, overrides: Mapping[str, str] | None) -> dict[str, str]:
    """Projected CRS of each region present (config overrides first, then presets)."""
    return {str(r): region_crs(str(r), dict(overrides or {})) for r in np.unique(regions)}


def shuffle_within_regions(lon: np.ndarray, lat: np.ndarray, region: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates permuted among the places of each region (the null of no spatial structure)."""
    rng = np.random.default_rng(seed)
    lon2, lat2 = lon.copy(), lat.copy()
    for r in np.unique(region):
        idx = np.flatnonzero(region == r)
        perm = rng.permutation(idx)
        lon2[idx], lat2[idx] = lon[perm], lat[perm]
    return lon2, lat2


def _add_control(moran: xr.Dataset, ctrl: xr.Dataset, suffix: str) -> None:
    for var in CONTROL_VARS:
        moran[f"{var}_{suffix}"] = ctrl[var]
    moran.attrs[f"control_{suffix}"] = CONTROLS[suffix]


def spatial_analysis(values: xr.DataArray, params: Mapping[str, Any], with_sink: xr.DataArray | None = None,
                     num_threads: int | None = None) -> tuple[xr.Dataset, xr.Dataset | None]:
    """Global Moran's I / Geary's C per region, its controls, and LISA of the top features.

    ``params``: k, transform, permutations, seed, crs (overrides), lisa_top_n, shuffled_control,
    residualise. Returns (moran, lisa); lisa is None when ``lisa_top_n`` is 0. Each control is
    :func:`moran_dataset` run again with the same permutation test (same ``permutations``, same
    permutation ``seed``), so the fractions of features with ``q_greater < 0.05`` compare like with
    like; ``moran`` keeps :data:`CONTROL_VARS` of each under a suffix (:data:`CONTROLS`):

    - ``_shuffled`` (``shuffled_control``): coordinates shuffled within each region (seed + 1);
    - ``_resid`` (``residualise``): features residualised on one-hot admin-1 and prompt length
      within each region (:func:`residualise_within_regions`), where the prompts carry them;
    - ``_with_sink`` (given ``with_sink``, the same units pooled with the left-out position).
    """
    lon = values["longitude"].values.astype(np.float64)
    lat = values["latitude"].values.astype(np.float64)
    region = values["region"].values.astype(str)
    crs = crs_for(region, params.get("crs"))
    common = dict(k=int(params["k"]), transform=str(params["transform"]), seed=int(params["seed"]))
    perms = int(params["permutations"])
    # threads change how fast, never what: the permutation engine is bit-identical at any thread count
    glob = dict(common, permutations=perms, num_threads=int(num_threads or 1))
    moran = moran_dataset(values, lon, lat, region, crs, **glob)
    if params.get("shuffled_control", True):
        slon, slat = shuffle_within_regions(lon, lat, region, int(params["seed"]) + 1)
        _add_control(moran, moran_dataset(values, slon, slat, region, crs, **glob), "shuffled")
    if params.get("residualise", True) and any(c in values.coords for c in TEMPLATE_COVARIATES):
        resid = residualise_within_regions(values)
        _add_control(moran, moran_dataset(resid, lon, lat, region, crs, **glob), "resid")
        moran.attrs["residualised_on"] = resid.attrs["residualised_on"]
    if with_sink is not None:
        if with_sink.shape != values.shape:
            raise ValueError(f"with_sink {with_sink.shape} must have the feature set's shape {values.shape}")
        _add_control(moran, moran_dataset(with_sink, lon, lat, region, crs, **glob), "with_sink")
    lisa = None
    top_n = int(params.get("lisa_top_n", 0))
    if top_n > 0:
        lisa = lisa_dataset(values, lon, lat, region, crs, top_n=top_n, permutations=perms, **common)
    return moran, lisa
