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

CONTROL_VARS = ("I", "z_norm", "p_norm", "p_greater", "q_greater")


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


def spatial_analysis(values: xr.DataArray, params: Mapping[str, Any]) -> tuple[xr.Dataset, xr.Dataset | None]:
    """Global Moran's I / Geary's C per region (+ shuffled-coordinates control) and LISA of the top features.

    ``params``: k, transform, permutations, seed, crs (overrides), lisa_top_n, shuffled_control.
    Returns (moran, lisa); lisa is None when ``lisa_top_n`` is 0. With the control, ``moran`` also
    holds ``I_shuffled``, ``z_norm_shuffled``, ``p_norm_shuffled``, ``p_greater_shuffled`` and
    ``q_greater_shuffled``: :func:`moran_dataset` run on coordinates shuffled within each region
    (shuffle seed ``seed + 1``), with the same permutation test as the real data (same
    ``permutations``, same permutation ``seed``), so real and control fractions of features with
    ``q_greater < 0.05`` compare like with like.
    """
    lon = values["longitude"].values.astype(np.float64)
    lat = values["latitude"].values.astype(np.float64)
    region = values["region"].values.astype(str)
    crs = crs_for(region, params.get("crs"))
    common = dict(k=int(params["k"]), transform=str(params["transform"]), seed=int(params["seed"]))
    moran = moran_dataset(values, lon, lat, region, crs, permutations=int(params["permutations"]), **common)
    if params.get("shuffled_control", True):
        slon, slat = shuffle_within_regions(lon, lat, region, int(params["seed"]) + 1)
        ctrl = moran_dataset(values, slon, slat, region, crs, permutations=int(params["permutations"]), **common)
        for var in CONTROL_VARS:
            moran[f"{var}_shuffled"] = ctrl[var]
        moran.attrs["control"] = ("*_shuffled: coordinates permuted within each region (seed + 1), then the same "
                                  "statistics and permutation test as the real data (same permutations and seed); "
                                  "q_greater_shuffled = BH over features per region of p_greater_shuffled")
    lisa = None
    top_n = int(params.get("lisa_top_n", 0))
    if top_n > 0:
        lisa = lisa_dataset(values, lon, lat, region, crs, top_n=top_n, permutations=int(params["permutations"]), **common)
    return moran, lisa
