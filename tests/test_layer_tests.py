"""Layer-level permutation tests: a weak signal spread over many units is found where per-unit BH finds
none, and on shuffled coordinates the layer p-values are uniform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mechflow.spatial import global_autocorrelation, knn_weights
from mechflow.spatial.fdr import fdr_bh
from mechflow.spatial.layer_tests import (
    LAYER_STATS,
    RegionLayerTest,
    arrangement_pvalue_counts,
    storey_pi1,
    summarise_null,
    unit_pvalue_counts,
)
from mechflow.spatial.weights import project

CRS = "EPSG:27700"


def _places(n, rng):
    return rng.uniform(-4.0, 0.5, n), rng.uniform(51.0, 55.0, n)


def _smooth_fields(lon, lat, n_fields, rng, scale=60_000.0):
    """``[n, n_fields]`` spatially smooth fields (Gaussian kernel sums of random bumps), unit variance."""
    xy = project(lon, lat, CRS)
    centres = xy[rng.choice(len(lon), 20, replace=False)]
    d2 = ((xy[:, None, :] - centres[None]) ** 2).sum(-1)
    f = np.exp(-d2 / scale**2) @ rng.normal(size=(20, n_fields))
    return (f - f.mean(0)) / f.std(0)


def _layer(values, lon, lat, unit_perms, layer_perms, seed=0):
    w = knn_weights(lon, lat, k=8, crs=CRS, transform="r")
    res = global_autocorrelation(values, w, permutations=unit_perms, seed=seed, geary=False, keep_replicates=True)
    test = RegionLayerTest(w)
    test.add(values, res["replicates_observed"], res["replicates"])
    return test.result(layer_perms, seed, num_threads=1), res


def test_weak_diffuse_signal_found_by_the_layer_test_not_by_units():
    rng = np.random.default_rng(3)
    n, F = 300, 500
    lon, lat = _places(n, rng)
    fields = _smooth_fields(lon, lat, 3, rng)
    values = 0.06 * fields @ rng.normal(size=(3, F)) + rng.normal(size=(n, F))  # each unit: a small spatial part
    out, res = _layer(values, lon, lat, 999, 999)
    q = fdr_bh(res["moran"]["p_greater"])
    assert np.nanmin(q) >= 0.05, "no unit may survive BH for this test to mean anything"
    assert out["mean_I"]["obs"] == pytest.approx(np.nanmean(res["moran"]["I"]), abs=1e-6)
    assert out["frac_p05"]["obs"] == pytest.approx(np.mean(res["moran"]["p_greater"] < 0.05))
    assert out["pi1"]["obs"] == pytest.approx(float(storey_pi1(res["moran"]["p_greater"])))
    for s in ("mean_I", "pc_I", "frac_p05"):
        assert out[s]["p"] < 0.01, (s, out[s])
        assert out[s]["excess_lo"] > 0, (s, out[s])
    assert out["pi1"]["obs"] > out["pi1"]["null_hi"]
    assert out["_info"]["perms"] == {"mean_I": 999, "pc_I": 999, "frac_p05": 999, "pi1": 999}


def test_shuffled_coordinates_give_uniform_layer_p_values():
    rng = np.random.default_rng(7)
    n, F, reps = 60, 40, 200
    lon, lat = _places(n, rng)
    w = knn_weights(lon, lat, k=8, crs=CRS, transform="r")
    fields = _smooth_fields(lon, lat, 2, rng)
    ps = {s: [] for s in LAYER_STATS}
    for rep in range(reps):
        values = 0.5 * fields @ rng.normal(size=(2, F)) + rng.normal(size=(n, F))  # real spatial structure ...
        values = values[rng.permutation(n)]  # ... on shuffled coordinates: each value moved to another place
        res = global_autocorrelation(values, w, permutations=99, seed=rep, geary=False, keep_replicates=True)
        test = RegionLayerTest(w)
        test.add(values, res["replicates_observed"], res["replicates"])
        out = test.result(99, rep, num_threads=1)
        for s in LAYER_STATS:
            ps[s].append(out[s]["p"])
    for s in ("mean_I", "pc_I"):
        assert stats.kstest(ps[s], "uniform").pvalue > 0.01, s
    for s in ("frac_p05", "pi1"):  # counts of units: ties make the p-value conservative, never liberal
        p = np.array(ps[s])
        for a in (0.05, 0.1, 0.2):
            assert (p <= a).mean() <= a + 2.5 * np.sqrt(a * (1 - a) / reps), (s, a)


def _shuffled_layer(values, lon, lat, draws, unit_perms=999, layer_perms=999, seed=0):
    """The layer test of ``values`` with ``draws`` shuffles of the coordinates, each tested against the data's null."""
    w = knn_weights(lon, lat, k=8, crs=CRS, transform="r")
    arr = np.stack([np.argsort(np.random.default_rng(seed + 1 + d).permutation(len(lon))) for d in range(draws)])
    res = global_autocorrelation(values, w, permutations=unit_perms, seed=seed, geary=False, keep_replicates=True,
                                 arrangements=arr)
    test = RegionLayerTest(w, arrangements=arr)
    test.add(values, res["replicates_observed"], res["replicates"], arr_I=res["arrangements"]["I"])
    return test.result(layer_perms, seed, num_threads=1), res, arr, w


def test_shuffles_of_a_structured_layer_get_uniform_p_values_against_its_null():
    """The shuffled control of the spatial step: R shuffles of the coordinates of a layer with strong spatial structure,
    each tested as if observed against the data's permutation null. The data's own layer p is at its floor; the
    shuffles' p-values are uniform (continuous statistics: KS; counts of units: never liberal)."""
    rng = np.random.default_rng(11)
    n, F, R = 200, 60, 200
    lon, lat = _places(n, rng)
    values = 0.8 * _smooth_fields(lon, lat, 3, rng) @ rng.normal(size=(3, F)) + rng.normal(size=(n, F))
    out, res, arr, w = _shuffled_layer(values, lon, lat, R)
    for s in LAYER_STATS:
        assert out[s]["p"] == pytest.approx(1 / 1000), (s, out[s])
    shuffles = out["_arrangements"]
    for s in ("mean_I", "pc_I"):
        assert stats.kstest(shuffles[s]["p"], "uniform").pvalue > 0.01, s
        assert abs(np.median(shuffles[s]["excess"])) < 0.1 * out[s]["excess"], s
    for s in ("frac_p05", "pi1"):
        p = shuffles[s]["p"]
        for a in (0.05, 0.1, 0.2):
            assert (p <= a).mean() <= a + 2.5 * np.sqrt(a * (1 - a) / R), (s, a)
    # the first shuffle, recomputed as an observed layer: its unit I and its mean
    again = global_autocorrelation(values[arr[0]], w, permutations=0, geary=False)["moran"]["I"]
    np.testing.assert_allclose(res["arrangements"]["I"][0], again, atol=1e-6)  # float32 products, as the replicates'
    assert shuffles["mean_I"]["first"]["obs"] == pytest.approx(again.mean(), abs=1e-6)


def test_sparse_tied_features_stay_calibrated():
    """Sparse features (SAE-like: a few non-zero places each) give many arrangements the same I. The counts must
    compare the observed I with the replicates by the same arithmetic, or float32 rounding breaks those ties in the
    observed's favour: the shuffles' unit p-values then come out too small and Storey's pi1 too large (measured
    on the default study's SAE features before the fix: pi1 below 0.05 in 26 of 200 shuffles in NYMETRO)."""
    rng = np.random.default_rng(4)
    n, F, R = 150, 300, 200
    lon, lat = _places(n, rng)
    values = np.zeros((n, F))
    for f in range(F):
        values[rng.choice(n, 1 + f % 3, replace=False), f] = rng.uniform(1.0, 3.0)
    out, res, _, _ = _shuffled_layer(values, lon, lat, R, unit_perms=199, layer_perms=199)
    p_units = res["arrangements"]["p_greater"]  # [R, F]: each shuffle's unit p against the data's replicates
    assert (p_units <= 0.05).mean() <= 0.05 + 0.005
    for s in ("frac_p05", "pi1"):
        p = out["_arrangements"][s]["p"]
        for a in (0.05, 0.1, 0.2):
            assert (p <= a).mean() <= a + 2.5 * np.sqrt(a * (1 - a) / R), (s, a, (p <= a).mean())


def test_arrangement_counts_are_unit_pvalue_counts_of_each_arrangement():
    rng = np.random.default_rng(1)
    for P, F, R in ((99, 40, 9), (19, 30, 5), (999, 20, 4)):
        sim = np.round(rng.normal(size=(P, F)), 1)  # rounded: ties everywhere
        obs = np.round(rng.normal(size=F), 1)
        arr = np.round(rng.normal(size=(R, F)), 1)
        obs[3], sim[:, 3], arr[:, 3] = np.nan, np.nan, np.nan  # a constant unit
        below, above = arrangement_pvalue_counts(obs, sim, arr)
        given = arrangement_pvalue_counts(obs, sim, arr, arr_p=((sim[None] >= arr[:, None]).sum(1) + 1.0) / (P + 1))
        np.testing.assert_array_equal(given[0], below)  # the p-values the caller already counted: the same counts
        np.testing.assert_array_equal(given[1], above)
        for r in range(R):
            b0, a0, _ = unit_pvalue_counts(arr[r], sim)
            np.testing.assert_array_equal(below[r], b0)
            np.testing.assert_array_equal(above[r], a0)


def test_blocks_add_up_and_counts_match_p_greater():
    rng = np.random.default_rng(1)
    n, F = 50, 30
    lon, lat = _places(n, rng)
    values = rng.normal(size=(n, F))
    values[:, 3] = 1.0  # a constant unit is left out
    w = knn_weights(lon, lat, k=8, crs=CRS, transform="r")
    arr = np.stack([rng.permutation(n) for _ in range(6)])
    res = global_autocorrelation(values, w, permutations=49, seed=0, geary=False, keep_replicates=True, arrangements=arr)
    whole = RegionLayerTest(w, arrangements=arr)
    whole.add(values, res["replicates_observed"], res["replicates"], arr_I=res["arrangements"]["I"])
    parts = RegionLayerTest(w, arrangements=arr)
    for a, b in ((0, 10), (10, 30)):
        parts.add(values[:, a:b], res["replicates_observed"][a:b], res["replicates"][:, a:b], arr_I=res["arrangements"]["I"][:, a:b])
    r1, r2 = whole.result(49, 0), parts.result(49, 0)
    assert r1["_info"]["n_units"] == F - 1
    for s in LAYER_STATS:
        np.testing.assert_allclose([r1[s][f] for f in r1[s]], [r2[s][f] for f in r2[s]], rtol=1e-9, atol=1e-12)
        for f in ("p", "excess"):
            np.testing.assert_allclose(r1["_arrangements"][s][f], r2["_arrangements"][s][f], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="arr_I"):
        RegionLayerTest(w, arrangements=arr).add(values, res["replicates_observed"], res["replicates"])
    below, _, nv = unit_pvalue_counts(res["replicates_observed"], res["replicates"])
    assert nv == F - 1 and below[0] == np.sum(res["moran"]["p_greater"] < 0.05)


def test_summarise_null_fields():
    T = np.concatenate([[5.0], np.arange(99.0) / 99.0])
    out = summarise_null(T)
    assert out["p"] == pytest.approx(1 / 100)
    assert out["excess"] == pytest.approx(5.0 - T[1:].mean())
    assert out["excess_lo"] == pytest.approx(5.0 - out["null_hi"])
    assert np.isnan(summarise_null(np.array([1.0]))["p"])


def test_spatial_analysis_writes_layer_tests_for_the_data_and_each_control():
    import xarray as xr

    from mechflow.spatial.analysis import spatial_analysis

    rng = np.random.default_rng(5)
    n = 80
    lon, lat = _places(n, rng)
    values = 0.3 * _smooth_fields(lon, lat, 2, rng) @ rng.normal(size=(2, 30)) + rng.normal(size=(n, 30))
    da = xr.DataArray(values, dims=("prompt", "unit"), coords={
        "longitude": ("prompt", lon), "latitude": ("prompt", lat), "region": ("prompt", np.array(["GB"] * n)),
        "admin1_code": ("prompt", np.where(lon < -1.75, "A", "B")), "n_tokens": ("prompt", rng.integers(3, 6, n))})
    params = {"k": 8, "transform": "r", "permutations": 99, "layer_permutations": 199, "seed": 0, "lisa_top_n": 0,
              "crs": {"GB": CRS}}
    moran, _ = spatial_analysis(da, params)
    for suffix in ("", "_shuffled", "_resid"):
        for field in ("obs", "p", "excess", "excess_lo", "excess_hi", "null_mean", "null_lo", "null_hi", "perms"):
            assert moran[f"layer_{field}{suffix}"].dims == ("region", "layer_stat")
    lt = moran.sel(region="GB")
    assert float(lt["layer_obs"].sel(layer_stat="mean_I")) == pytest.approx(float(np.nanmean(lt["I"])), abs=1e-6)
    assert lt["layer_perms"].sel(layer_stat="pc_I") == 199 and lt["layer_perms"].sel(layer_stat="mean_I") == 99
    assert float(lt["layer_p"].sel(layer_stat="pc_I")) == pytest.approx(1 / 200)
    assert moran.attrs["layer_permutations"] == 199 and "layer_p" in moran.attrs


def test_residuals_on_admin1_get_a_calibrated_null_from_permutations_within_units():
    """Residuals on one-hot admin-1 sum to zero within each unit: free permutations make their layer test
    conservative; permutations within the units give uniform p-values (no structure within the units)."""
    from mechflow.spatial.blocks import within_blocks
    from mechflow.spatial.residualise import dummy_design, residualise

    rng = np.random.default_rng(11)
    n, F, reps = 72, 30, 200
    lon, lat = _places(n, rng)
    units = (np.digitize(lon, [-2.5, -1.0]) * 2 + (lat > 53.0)).astype(str)  # 6 contiguous admin-1 units
    w = knn_weights(lon, lat, k=8, crs=CRS, transform="r")
    design = dummy_design({"admin1": units})
    ps = {"free": {s: [] for s in LAYER_STATS}, "within": {s: [] for s in LAYER_STATS}}
    for rep in range(reps):
        means = rng.normal(size=(6, F))[np.unique(units, return_inverse=True)[1]]  # structure at the units' scale only
        values, _ = residualise(2.0 * means + rng.normal(size=(n, F)), design)
        for null, blocks in (("free", None), ("within", units)):
            res = global_autocorrelation(values, w, permutations=99, seed=rep, geary=False, keep_replicates=True,
                                         blocks=blocks)
            test = RegionLayerTest(w, blocks)
            test.add(values, res["replicates_observed"], res["replicates"])
            out = test.result(99, rep, num_threads=1)
            for s in LAYER_STATS:
                ps[null][s].append(out[s]["p"])
    for s in ("mean_I", "pc_I"):
        assert stats.kstest(ps["within"][s], "uniform").pvalue > 0.01, s
        assert np.mean(ps["free"][s]) > 0.6, s  # the free null is conservative for these residuals
    for s in ("frac_p05", "pi1"):  # counts of units: ties make the p-value conservative, never liberal
        p = np.array(ps["within"][s])
        for a in (0.05, 0.1, 0.2):
            assert (p <= a).mean() <= a + 2.5 * np.sqrt(a * (1 - a) / reps), (s, a)
    perms = within_blocks(np.random.default_rng(0), 50, units)
    assert (units[perms] == units[None]).all() and (np.sort(perms, 1) == np.arange(n)).all()


def test_spatial_analysis_restricts_the_residualised_permutations_to_admin1_units():
    import xarray as xr

    from mechflow.spatial.analysis import spatial_analysis

    rng = np.random.default_rng(5)
    n = 80
    lon, lat = _places(n, rng)
    values = rng.normal(size=(n, 20))
    admin1 = np.where(lon < -1.75, "A", "B")
    da = xr.DataArray(values, dims=("prompt", "unit"), coords={
        "longitude": ("prompt", lon), "latitude": ("prompt", lat), "region": ("prompt", np.array(["GB"] * n)),
        "admin1_code": ("prompt", admin1), "n_tokens": ("prompt", rng.integers(3, 6, n))})
    params = {"k": 8, "transform": "r", "permutations": 49, "layer_permutations": 49, "seed": 0, "lisa_top_n": 0,
              "crs": {"GB": CRS}}
    moran, _ = spatial_analysis(da, params)
    assert "within admin-1 units" in moran.attrs["layer_null_resid"]
    assert int(moran["layer_blocks_resid"].sel(region="GB")) == 2 and "layer_blocks" not in moran
    # the per-unit resid control used the same restricted replicates: p_greater_resid from the blocked engine
    from mechflow.spatial.residualise import residualise_within_regions

    resid = residualise_within_regions(da).values
    w = knn_weights(lon, lat, k=8, crs=CRS, transform="r")
    blocked = global_autocorrelation(resid, w, permutations=49, seed=0, geary=False, blocks=admin1)
    free = global_autocorrelation(resid, w, permutations=49, seed=0, geary=False)
    got = moran["p_greater_resid"].sel(region="GB").values
    np.testing.assert_allclose(got, blocked["moran"]["p_greater"])
    assert not np.allclose(got, free["moran"]["p_greater"])


def test_engines_draw_the_same_permutations_within_blocks():
    rng = np.random.default_rng(2)
    n = 40
    lon, lat = _places(n, rng)
    values = rng.normal(size=(n, 5))
    blocks = np.where(lat > 53.0, "N", "S")
    w = knn_weights(lon, lat, k=6, crs=CRS, transform="r")
    kw = dict(permutations=99, seed=3, geary=False, keep_replicates=True, blocks=blocks)
    fused = global_autocorrelation(values, w, engine="fused", **kw)
    ref = global_autocorrelation(values, w, engine="numpy", **kw)
    np.testing.assert_allclose(fused["replicates"], ref["replicates"], rtol=1e-5, atol=1e-6)
    torch_ = global_autocorrelation(values, w, engine="torch", device="cpu", **kw)
    # a column constant within each block is fixed by every restricted permutation: all replicates equal I
    const = np.column_stack([np.where(blocks == "N", 1.0, -1.0) + 0 * values[:, 0], values[:, 1]])
    for engine in ("fused", "torch"):
        r = global_autocorrelation(const, w, engine=engine, device="cpu", **kw)
        np.testing.assert_allclose(r["replicates"][:, 0], r["moran"]["I"][0], rtol=1e-5)
        assert np.ptp(r["replicates"][:, 1]) > 0
    assert torch_["replicates"].shape == (99, 5)
