"""The spatial step's controls: the template-confound baseline (residualised on admin-1 and prompt
length) and the pooling control (the same units pooled with the attention sink), tested alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.linear_model import LinearRegression

from mechflow.spatial import moran_dataset
from mechflow.spatial.analysis import CONTROL_VARS, spatial_analysis
from mechflow.spatial.residualise import dummy_design, residualise, residualise_within_regions

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning")]
CRS = {"GB": "EPSG:27700", "IT": "EPSG:25832"}


def _places(seed=0, n_gb=240, n_it=200):
    """Two regions; GB split east/west into two admin-1 units, IT into three by latitude bands; a prompt
    length that depends on the admin-1 unit (as the template "{name}, {admin1_name}" makes it)."""
    rng = np.random.default_rng(seed)
    lon = np.r_[rng.uniform(-4.0, 0.5, n_gb), rng.uniform(8.0, 15.0, n_it)]
    lat = np.r_[rng.uniform(51.0, 55.0, n_gb), rng.uniform(38.0, 46.0, n_it)]
    region = np.array(["GB"] * n_gb + ["IT"] * n_it)
    admin1 = np.where(region == "GB", np.where(lon < -1.75, "WLS", "ENG"),
                      np.where(lat < 40.5, "SUD", np.where(lat < 43.0, "CEN", "NOR")))
    base = {"WLS": 5, "ENG": 3, "SUD": 4, "CEN": 6, "NOR": 3}
    n_tokens = np.array([base[a] for a in admin1]) + rng.integers(0, 4, region.size)
    return lon, lat, region, admin1, n_tokens


def _feature_set(values, lon, lat, region, admin1, n_tokens):
    n = values.shape[0]
    return xr.DataArray(values, dims=("prompt", "unit"), coords={
        "prompt": np.arange(n), "unit": np.arange(values.shape[1]), "longitude": ("prompt", lon),
        "latitude": ("prompt", lat), "region": ("prompt", region), "admin1_code": ("prompt", admin1),
        "n_tokens": ("prompt", n_tokens)})


def test_residuals_equal_sklearn_on_pandas_dummies():
    lon, lat, region, admin1, n_tokens = _places()
    rng = np.random.default_rng(1)
    y = rng.standard_normal((region.size, 7)) + (admin1 == "ENG")[:, None] * 2.0 + n_tokens[:, None] * 0.3
    da = _feature_set(y, lon, lat, region, admin1, n_tokens)
    out = residualise_within_regions(da)
    assert out.attrs["residualised_on"] == "admin1_code,n_tokens"
    for reg in ("GB", "IT"):
        m = region == reg
        X = pd.get_dummies(pd.DataFrame({"a": admin1[m], "t": n_tokens[m].astype(str)}), drop_first=True).to_numpy(float)
        ref = y[m] - LinearRegression().fit(X, y[m]).predict(X)
        np.testing.assert_allclose(out.values[m], ref, atol=1e-10)


def test_a_rank_deficient_design_and_an_explained_column():
    a = np.array(["x", "x", "y", "y", "z", "z"])
    t = np.array([3, 3, 4, 4, 5, 5])  # the length is the admin-1 unit again: rank 3, not 5
    design = dummy_design({"a": a, "t": t})
    assert design.shape == (6, 5)
    y = np.c_[np.array([1.0, 1.0, 2.0, 2.0, 7.0, 7.0]), np.arange(6.0)]
    resid, rank = residualise(y, design)
    assert rank == 3
    assert np.all(resid[:, 0] == 0.0)  # fully explained: exactly constant, so its statistics are NaN
    np.testing.assert_allclose(resid[:, 1], [-0.5, 0.5] * 3)


def test_a_unit_that_reads_the_admin1_token_is_autocorrelated_only_before_residualising():
    """The confound the baseline is for: a feature that is a function of the admin-1 unit and the prompt
    length (plus noise) is strongly autocorrelated on KNN weights, and not once they are regressed out;
    a smooth field that varies inside admin-1 units stays autocorrelated after it."""
    lon, lat, region, admin1, n_tokens = _places(seed=2)
    rng = np.random.default_rng(3)
    n = region.size
    codes = {a: i for i, a in enumerate(np.unique(admin1))}
    template = np.c_[[codes[a] * 1.5 + 0.4 * t for a, t in zip(admin1, n_tokens)]] + 0.5 * rng.standard_normal((n, 4))
    field = np.c_[np.cos(lat * 3.0) + np.sin(lon * 2.5)] + 0.3 * rng.standard_normal((n, 1))
    da = _feature_set(np.c_[template, field], lon, lat, region, admin1, n_tokens)
    params = {"k": 8, "transform": "r", "permutations": 199, "seed": 0, "lisa_top_n": 0, "crs": CRS,
              "shuffled_control": False, "residualise": True}
    moran, _ = spatial_analysis(da, params)
    assert (moran.q_greater.values[:, :4] < 0.01).all()  # the template alone looks "geographic"
    assert (moran.q_greater_resid.values[:, :4] > 0.05).all()  # and nothing is left once it is regressed out
    assert (moran.p_greater_resid.values[:, 4] == 1 / 200).all()  # structure inside admin-1 units survives:
    assert (moran.q_greater_resid.values[:, 4] < 0.05).all()  # no permutation reached it
    assert moran.attrs["residualised_on"] == "admin1_code,n_tokens" and "control_resid" in moran.attrs


def test_every_control_runs_the_real_data_test():
    lon, lat, region, admin1, n_tokens = _places(seed=4)
    rng = np.random.default_rng(5)
    values = rng.standard_normal((region.size, 5)).astype(np.float32)
    values[:, 0] += np.where(admin1 == "ENG", 1.0, 0.0).astype(np.float32)
    da = _feature_set(values, lon, lat, region, admin1, n_tokens)
    sink = da + np.float32(5.0) / da["n_tokens"].astype(np.float32)  # a sink / n_tokens term
    params = {"k": 6, "transform": "r", "permutations": 49, "seed": 7, "lisa_top_n": 0, "crs": CRS,
              "shuffled_control": True, "residualise": True}
    moran, _ = spatial_analysis(da, params, with_sink=sink)
    resid = residualise_within_regions(da)
    for suffix, data in (("resid", resid), ("with_sink", sink)):
        # the real-data path; the residuals' permutations stay within admin-1 units
        ref = moran_dataset(data, lon, lat, region, CRS, k=6, permutations=49, seed=7,
                            blocks=admin1 if suffix == "resid" else None)
        for v in CONTROL_VARS:
            np.testing.assert_array_equal(moran[f"{v}_{suffix}"].values, ref[v].values, err_msg=f"{v}_{suffix}")
    assert {f"control_{s}" for s in ("shuffled", "resid", "with_sink")} <= set(moran.attrs)
    with pytest.raises(ValueError, match="shape"):
        spatial_analysis(da, params, with_sink=sink.isel(unit=slice(0, 2)))
    params["residualise"] = False
    assert "I_resid" not in spatial_analysis(da, params)[0]
