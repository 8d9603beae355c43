"""Ridge location probes: closed-form LOO, fold schemes, and signal vs noise."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mechflow.probes import (
    DEFAULT_ALPHAS,
    cross_val_predict_ridge,
    haversine_km,
    probe_dataset,
    random_folds,
    ridge_loo,
    spatial_folds,
)


def test_haversine_london_paris():
    assert haversine_km(-0.1276, 51.5072, 2.3522, 48.8566) == pytest.approx(343.5, abs=1.0)
    assert haversine_km(10.0, 45.0, 10.0, 45.0) == 0.0


def test_ridge_loo_equals_explicit_leave_one_out():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    Y = X @ rng.standard_normal((6, 2)) + rng.standard_normal((40, 2))
    X, Y = X - X.mean(0), Y - Y.mean(0)
    alphas = [0.1, 3.0, 100.0]
    coef, alpha = ridge_loo(X, Y, alphas)
    errs = []
    for a in alphas:
        e = np.zeros(2)
        for i in range(40):
            m = np.arange(40) != i
            mx, my = X[m].mean(0), Y[m].mean(0)
            B = np.linalg.solve((X[m] - mx).T @ (X[m] - mx) + a * np.eye(6), (X[m] - mx).T @ (Y[m] - my))
            e += (Y[i] - my - (X[i] - mx) @ B) ** 2
        errs.append(e / 40)
    np.testing.assert_array_equal(alpha, np.array(alphas)[np.argmin(errs, axis=0)])
    a0 = alpha[0]
    np.testing.assert_allclose(coef[:, 0], np.linalg.solve(X.T @ X + a0 * np.eye(6), X.T @ Y[:, 0]), rtol=1e-8)


def test_fold_schemes():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100_000, (300, 2))
    rf = random_folds(300, 5, seed=0)
    assert np.bincount(rf).tolist() == [60] * 5
    sf = spatial_folds(xy, 5, n_blocks=20, seed=0)
    assert set(sf) == set(range(5)) and np.bincount(sf).min() > 30
    # spatial folds are compact: points' nearest neighbour mostly in the same fold
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(1)
    assert np.mean(sf[nn] == sf) > 0.8 and np.mean(rf[nn] == rf) < 0.4
    with pytest.raises(ValueError):
        random_folds(3, 5)


def _synthetic(seed=0, n=400, d=48):
    rng = np.random.default_rng(seed)
    half = n // 2
    lon = np.r_[rng.uniform(-3, 0, half), rng.uniform(9, 12, n - half)]
    lat = np.r_[rng.uniform(51, 54, half), rng.uniform(43, 46, n - half)]
    region = np.array(["GB"] * half + ["IT"] * (n - half))
    M = rng.standard_normal((2, d))
    coords = np.column_stack([lon - lon.mean(), lat - lat.mean()])
    encoded = coords @ M + 0.3 * rng.standard_normal((n, d))
    noise = rng.standard_normal((n, d))
    acts = xr.DataArray(np.stack([noise, encoded], 1).astype(np.float32), dims=("prompt", "layer", "unit"),
                        coords={"layer": [3, 7]})
    return acts, lon, lat, region


def test_probe_dataset_signal_and_noise():
    acts, lon, lat, region = _synthetic()
    ds = probe_dataset(acts, lon, lat, region, {"GB": "EPSG:27700", "IT": "EPSG:25832"}, n_folds=5, seed=0)
    assert ds.r2_xy.dims == ("region", "layer", "scheme")
    assert ds.scheme.values.tolist() == ["random", "spatial"] and ds.layer.values.tolist() == [3, 7]
    enc = ds.sel(layer=7)
    assert (enc.r2_xy.sel(scheme="random") > 0.95).all() and (enc.r2_latlon.sel(scheme="random") > 0.95).all()
    assert (enc.median_km.sel(scheme="random") < 15).all()
    noise = ds.sel(layer=3)
    assert (noise.r2_xy < 0.05).all() and (noise.r2_latlon < 0.05).all()
    assert (noise.median_km > 50).all()
    assert ds.n.values.tolist() == [200, 200]
    # the null: the same probes on coordinates shuffled among a region's places reach no R^2, whatever the layer
    assert (ds.r2_xy_null < 0.05).all() and (ds.r2_latlon_null < 0.05).all()
    assert (enc.r2_xy > enc.r2_xy_null + 0.9).all()


def test_spatial_folds_expose_leakage():
    """A probe that memorises places (one-hot-ish local features) works on random folds only."""
    rng = np.random.default_rng(3)
    n = 300
    lon, lat = rng.uniform(-3, 0, n), rng.uniform(51, 54, n)
    centres = np.column_stack([rng.uniform(-3, 0, 60), rng.uniform(51, 54, 60)])
    d2 = ((np.column_stack([lon, lat])[:, None] - centres[None]) ** 2).sum(-1)
    X = np.exp(-d2 / 0.02)  # local bumps: interpolate well, extrapolate badly
    acts = xr.DataArray(X[:, None, :], dims=("prompt", "layer", "unit"))
    ds = probe_dataset(acts, lon, lat, np.array(["GB"] * n), {"GB": "EPSG:27700"}, n_folds=5, seed=0)
    r2 = ds.r2_xy.sel(region="GB").isel(layer=0)
    assert float(r2.sel(scheme="random")) > float(r2.sel(scheme="spatial")) + 0.1


def test_cross_val_predict_shapes_and_errors():
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((50, 4)), rng.standard_normal((50, 3))
    pred, alphas = cross_val_predict_ridge(X, Y, random_folds(50, 5))
    assert pred.shape == (50, 3) and alphas.shape == (5, 3)
    acts, lon, lat, region = _synthetic(n=40, d=4)
    with pytest.raises(ValueError, match="no CRS"):
        probe_dataset(acts, lon, lat, region, {"GB": "EPSG:27700"})
    with pytest.raises(ValueError, match="3-D"):
        probe_dataset(acts.isel(layer=0), lon, lat, region, {"GB": "EPSG:27700", "IT": "EPSG:25832"})


@pytest.mark.parametrize("n, d", [(120, 40), (60, 100)])  # primal (n > d) and dual (n < d) decompositions
def test_all_layers_solve_equals_sklearn_per_layer(n, d):
    """The stacked [layer, n, d] solve equals StandardScaler + RidgeCV(alpha_per_target) fitted per layer and fold,
    and each layer alone through the 2-D path; a constant unit is handled as StandardScaler does."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, n, d))
    X[1, :, 5] = 2.0
    Y = X[0, :, :4] @ rng.standard_normal((4, 3)) + rng.standard_normal((n, 3))
    folds = random_folds(n, 5)
    pred, alphas = cross_val_predict_ridge(X, Y, folds)
    assert pred.shape == (3, n, 3) and alphas.shape == (5, 3, 3)
    for layer in range(3):
        single, single_alphas = cross_val_predict_ridge(X[layer], Y, folds)
        np.testing.assert_array_equal(single, pred[layer])
        np.testing.assert_array_equal(single_alphas, alphas[:, layer])
        for f in range(5):
            te, tr = folds == f, folds != f
            my, sy = Y[tr].mean(0), Y[tr].std(0)
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=DEFAULT_ALPHAS, alpha_per_target=True))
            model.fit(X[layer, tr], (Y[tr] - my) / sy)
            np.testing.assert_allclose(pred[layer, te], model.predict(X[layer, te]) * sy + my, rtol=0, atol=1e-10)
            np.testing.assert_array_equal(alphas[f, layer], model[-1].alpha_)


def test_probe_dataset_same_in_layer_chunks_and_threads():
    """Chunking the layers (a small memory budget) and BLAS threads change nothing."""
    acts, lon, lat, region = _synthetic(n=120, d=16)
    crs = {"GB": "EPSG:27700", "IT": "EPSG:25832"}
    whole = probe_dataset(acts, lon, lat, region, crs, n_folds=4, seed=0)
    chunked = probe_dataset(acts, lon, lat, region, crs, n_folds=4, seed=0, threads=1, memory_mb=1e-6)
    xr.testing.assert_allclose(whole, chunked, rtol=1e-12, atol=1e-9)
