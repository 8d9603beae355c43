"""Spatial statistics: conformance with esda on the same weights, and the Dataset contracts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from scipy import stats

esda = pytest.importorskip("esda")
from libpysal.weights import KNN  # noqa: E402

from mechflow.data.regions import CRS_PRESETS  # noqa: E402
from mechflow.spatial import (  # noqa: E402
    fdr_bh,
    global_autocorrelation,
    global_geary,
    global_moran,
    knn_weights,
    lisa_dataset,
    local_moran,
    moran_dataset,
)
from mechflow.spatial.local_stats import _conditional_counts, _row_structure  # noqa: E402

P = 199
# esda / libpysal deprecation notes and the inf/NaN warnings of constant columns, in this module only
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def _points(n, seed=0, region="GB"):
    rng = np.random.default_rng(seed)
    box = {"GB": ((-4.0, 0.5), (51.0, 55.0)), "IT": ((8.0, 15.0), (38.0, 46.0))}[region]
    return rng.uniform(*box[0], n), rng.uniform(*box[1], n)


def _field(xy, n_cols, seed, scale=40_000.0):
    """Correlated random fields: random Fourier features of the coordinates (smooth in space)."""
    rng = np.random.default_rng(seed)
    freq = rng.standard_normal((2, n_cols)) / scale
    phase = rng.uniform(0, 2 * np.pi, n_cols)
    return np.cos(xy @ freq + phase) + 0.3 * rng.standard_normal((xy.shape[0], n_cols))


@pytest.fixture(scope="module")
def w300():
    lon, lat = _points(300)
    lon[5], lat[5] = lon[6], lat[6]  # one duplicate location
    return knn_weights(lon, lat, k=8, crs=CRS_PRESETS["GB"])


@pytest.fixture(scope="module")
def data300(w300):
    rng = np.random.default_rng(1)
    n = w300.n
    random_cols = rng.standard_normal((n, 3))
    ties = rng.integers(0, 3, (n, 3)).astype(float)  # heavy ties, like sparse features
    ties[:, 2] = np.where(rng.random(n) < 0.9, 0.0, rng.exponential(size=n))  # mostly zeros
    realistic = _field(w300.xy, 4, seed=2)
    return np.column_stack([random_cols, ties, realistic])


# ----------------------------------------------------------------------------- weights


def test_default_crs_and_knn_matches_libpysal():
    assert CRS_PRESETS == {"GB": "EPSG:27700", "IT": "EPSG:25832", "NYMETRO": "EPSG:32618"}
    lon, lat = _points(200, seed=3, region="IT")
    w = knn_weights(lon, lat, k=6, crs=CRS_PRESETS["IT"])
    ref = KNN.from_array(w.xy, k=6)
    for i in range(w.n):
        assert set(w.neighbors[i]) == set(ref.neighbors[i])
    assert w.n_duplicates == 0 and w.transform == "R"
    assert np.allclose(w.sparse.sum(1), 1.0)


def test_duplicates_are_deterministic_and_counted():
    lon, lat = _points(50, seed=4)
    lon[10:14], lat[10:14] = lon[3], lat[3]  # 5 points at one location
    w = knn_weights(lon, lat, k=3, transform="b")
    assert w.n_duplicates == 4 and w.transform == "B"
    group = {3, 10, 11, 12, 13}
    for i in group:
        nb = w.neighbors[i]
        assert i not in nb
        assert nb == sorted(group - {i})[:3]  # ties broken by index
    assert knn_weights(lon, lat, k=3).neighbors == knn_weights(lon, lat, k=3).neighbors


def test_knn_rejects_bad_input():
    lon, lat = _points(5)
    with pytest.raises(ValueError, match="k must satisfy"):
        knn_weights(lon, lat, k=5)
    with pytest.raises(ValueError, match="transform"):
        knn_weights(lon, lat, k=2, transform="x")
    with pytest.raises(ValueError, match="NaN"):
        knn_weights(np.r_[lon[:-1], np.nan], lat, k=2)


# ----------------------------------------------------------------------------- global


@pytest.mark.parametrize("transform", ["r", "b"])
def test_global_analytic_equals_esda(w300, data300, transform):
    w300.transform = transform
    try:
        res = global_autocorrelation(data300, w300, permutations=0)
        m, g = res["moran"], res["geary"]
        for j in range(data300.shape[1]):
            em = esda.Moran(data300[:, j], w300, transformation=transform, permutations=0)
            eg = esda.Geary(data300[:, j], w300, transformation=transform, permutations=0)
            for key in ("I", "EI", "VI_norm", "z_norm", "p_norm", "VI_rand", "z_rand", "p_rand"):
                np.testing.assert_allclose(m[key][j], getattr(em, key), rtol=1e-9, atol=0, err_msg=key)
            for key in ("C", "EC", "VC_norm", "z_norm", "p_norm", "VC_rand", "z_rand", "p_rand"):
                np.testing.assert_allclose(g[key][j], getattr(eg, key), rtol=1e-9, atol=0, err_msg=key)
        one = esda.Moran(data300[:, 0], w300, transformation=transform, permutations=0, two_tailed=False)
        one_ours = global_moran(data300[:, :1], w300, permutations=0, two_tailed=False)
        np.testing.assert_allclose(one_ours["p_norm"][0], one.p_norm, rtol=1e-9)
    finally:
        w300.transform = "r"


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_global_permutation_agrees_with_esda(w300, data300, engine):
    res = global_autocorrelation(data300, w300, permutations=P, seed=3, device="cpu", engine=engine)
    m, g = res["moran"], res["geary"]
    np.random.seed(0)
    floor = 1.0 / (P + 1)
    for j in range(data300.shape[1]):
        em = esda.Moran(data300[:, j], w300, permutations=P)
        eg = esda.Geary(data300[:, j], w300, permutations=P)
        for ours, ref in ((m, em), (g, eg)):
            # two independent Monte Carlo estimates of the same p: within binomial noise
            sd = np.sqrt(max(ref.p_sim, floor) * (1 - ref.p_sim) / P)
            assert abs(ours["p_sim"][j] - ref.p_sim) <= 5 * sd + 2 * floor
        np.testing.assert_allclose(m["EI_sim"][j], em.EI_sim, atol=5 * em.seI_sim / np.sqrt(P) + 1e-12)
        np.testing.assert_allclose(m["seI_sim"][j], em.seI_sim, rtol=0.25)
        np.testing.assert_allclose(g["seC_sim"][j], eg.seC_sim, rtol=0.25)
    strong = slice(6, 10)  # smooth fields: every replicate below I
    assert np.all(m["p_sim"][strong] == floor) and np.all(g["p_sim"][strong] == floor)
    assert np.all(m["z_sim"][strong] > 5)
    # the one-sided p for positive autocorrelation is at its minimum 1/(P+1) on planted structure
    assert np.all(m["p_greater"][strong] == floor) and np.all(g["p_less"][strong] == floor)
    # same replicates as p_sim: where I is in the upper half of its replicates, the unfolded p is the folded one
    upper = m["I"] >= m["EI_sim"]
    assert upper[strong].all() and np.all(m["p_greater"] >= m["p_sim"] - 1e-12)


@pytest.fixture(scope="module")
def null200():
    """2,000 null columns (independent normals, no spatial structure) on 200 random points, k=8."""
    lon, lat = _points(200, seed=21)
    w = knn_weights(lon, lat, k=8, crs=CRS_PRESETS["GB"])
    return w, np.random.default_rng(22).standard_normal((200, 2000))


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_one_sided_global_p_is_uniform_under_the_null_and_folded_p_sim_is_not(null200, engine):
    w, Y = null200
    perms = 99
    res = global_autocorrelation(Y, w, permutations=perms, seed=5, device="cpu", engine=engine)
    m, g = res["moran"], res["geary"]
    for p in (m["p_greater"], g["p_less"]):
        assert np.all((p >= 1 / (perms + 1)) & (p <= 1))
        assert stats.kstest(p, "uniform").pvalue > 0.01  # discrete Uniform{1/(P+1), ..., 1}
        assert abs(np.mean(p <= 0.05) - 0.05) < 0.02
        assert np.mean(fdr_bh(p) < 0.05) <= 0.05 + 0.01  # BH over features rejects <= alpha of null columns
    # esda's folded p_sim on the same replicates: ~Uniform(0, 0.5], so "p_sim < 0.05" holds twice as often
    folded = m["p_sim"]
    assert folded.max() <= 0.51 and stats.kstest(folded, "uniform").pvalue < 1e-6
    assert np.mean(folded <= 0.05) > 0.075
    np.testing.assert_allclose(folded, np.minimum(m["p_greater"], 1 - m["p_greater"] + 1 / (perms + 1)), atol=1e-12)
    none = global_autocorrelation(Y[:, :3], w, permutations=0)
    assert np.isnan(none["moran"]["p_greater"]).all() and np.isnan(none["geary"]["p_less"]).all()


def test_local_p_is_valid_under_the_null_and_its_bh_rejects_few(null200):
    w, Y = null200
    perms = 99
    loc = local_moran(Y[:, :200], w, permutations=perms, seed=5, device="cpu")
    p = loc["p_local"]
    assert np.all((p >= 2 / (perms + 1)) & (p <= 1))
    # p_local = 2 (c+1)/(P+1): P(p_local <= 0.1) is 2 * 5/100 under the null
    assert abs(np.mean(p <= 0.1) - 0.10) < 0.02
    assert abs(np.mean(loc["p_sim"] <= 0.05) - 0.10) < 0.02  # the folded p: twice the nominal rate
    q = fdr_bh(p.T).T  # BH over places, per feature
    assert np.mean((q < 0.05).any(axis=0)) <= 0.05 + 0.04  # features with any significant place


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_replicate_engines_equal_brute_force_for_given_permutations(w300, data300, engine):
    """Both engines (the torch one is the CUDA path) compute z_p' W z_p and sum_i rc_i z_p[i]^2 exactly."""
    from mechflow.spatial._sparse import weights_csr
    from mechflow.spatial.global_stats import _NumpyReplicates, _TorchReplicates

    A = weights_csr(w300)
    z = data300 - data300.mean(0)
    rc = np.asarray(A.sum(1)).ravel() + np.asarray(A.sum(0)).ravel()
    chunks = [(0, 5), (5, data300.shape[1])]
    args = (z, A, rc, chunks, torch.float64, 0)
    eng = _NumpyReplicates(*args) if engine == "numpy" else _TorchReplicates(*args, torch.device("cpu"))
    perms = np.random.default_rng(7).permuted(np.tile(np.arange(w300.n), (3, 1)), axis=1)
    got = list(eng.replicates(perms, want_sq=True))
    for (a, b), (cross, sq) in zip(chunks, got):
        for p, perm in enumerate(perms):
            zp = z[perm, a:b]
            np.testing.assert_allclose(cross[p], (zp * (A @ zp)).sum(0), rtol=1e-10, atol=1e-9)
            np.testing.assert_allclose(sq[p], rc @ zp**2, rtol=1e-10)
    drawn = eng.draw(4)
    drawn = drawn.numpy() if isinstance(drawn, torch.Tensor) else drawn
    assert drawn.shape == (4, w300.n) and all(np.array_equal(np.sort(r), np.arange(w300.n)) for r in drawn)
    with pytest.raises(ValueError, match="engine"):
        global_autocorrelation(data300, w300, permutations=3, engine="numba")


def test_global_null_p_sim_distribution_matches_esda(w300):
    rng = np.random.default_rng(7)
    Y = rng.standard_normal((w300.n, 40))
    ours = global_moran(Y, w300, permutations=99, seed=1)["p_sim"]
    np.random.seed(1)
    ref = np.array([esda.Moran(Y[:, j], w300, permutations=99).p_sim for j in range(Y.shape[1])])
    assert stats.ks_2samp(ours, ref).pvalue > 0.01


def test_constant_columns_give_nan_not_inf(w300, data300):
    Y = np.column_stack([data300[:, :2], np.full(w300.n, 0.1), np.zeros(w300.n)])
    res = global_autocorrelation(Y, w300, permutations=19)
    assert res["n_constant"] == 2
    for d in (res["moran"], res["geary"]):
        for key in ("z_norm", "p_norm", "p_sim", "z_sim"):
            assert np.all(np.isnan(d[key][2:])) and np.all(np.isfinite(d[key][:2])), key
    assert np.all(np.isnan(res["moran"]["I"][2:])) and np.all(np.isnan(res["geary"]["C"][2:]))
    loc = local_moran(Y, w300, permutations=19)
    assert loc["n_constant"] == 2 and np.all(np.isnan(loc["Is"][:, 2:])) and np.all(loc["q"][:, 2:] == 0)
    assert np.all(np.isfinite(loc["Is"][:, :2]))


def test_global_geary_and_moran_wrappers(w300, data300):
    g = global_geary(data300[:, :2], w300, permutations=9)
    m = global_moran(data300[:, :2], w300, permutations=9)
    assert g["C"].shape == (2,) and m["I"].shape == (2,) and m["n"] == w300.n
    with pytest.raises(ValueError, match="rows"):
        global_moran(data300[:10], w300)
    with pytest.raises(ValueError, match="NaN"):
        global_moran(np.full((w300.n, 1), np.nan), w300)


# ----------------------------------------------------------------------------- local


def test_local_is_and_quadrants_equal_esda(w300, data300):
    loc = local_moran(data300, w300, permutations=0)
    for j in range(data300.shape[1]):
        ref = esda.Moran_Local(data300[:, j], w300, permutations=0)
        np.testing.assert_allclose(loc["Is"][:, j], ref.Is, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(loc["q"][:, j], ref.q)
    assert np.all(np.isnan(loc["p_sim"]))


def test_local_p_sim_agrees_with_esda(w300, data300):
    cols = [0, 1, 2, 6, 7]  # three null columns, two smooth fields
    loc = local_moran(data300[:, cols], w300, permutations=P, seed=5)
    refs = [esda.Moran_Local(data300[:, j], w300, permutations=P, seed=11 + j) for j in cols]
    ref = np.column_stack([r.p_sim for r in refs])
    floor = 1.0 / (P + 1)
    assert stats.ks_2samp(loc["p_sim"][:, :3].ravel(), ref[:, :3].ravel()).pvalue > 0.01
    # strong signal: both reach the floor 1/(P+1)
    for c in (3, 4):
        strong = refs[c].z_sim > 3.3  # beyond every replicate in expectation
        assert strong.sum() >= 5
        assert np.mean(ref[strong, c] == floor) > 0.8 and np.mean(loc["p_sim"][strong, c] == floor) > 0.8
        at_floor_ours, at_floor_ref = np.mean(loc["p_sim"][:, c] == floor), np.mean(ref[:, c] == floor)
        assert at_floor_ref > 0.05 and abs(at_floor_ours - at_floor_ref) < 0.05
    # per observation the two estimates agree within Monte Carlo noise
    sd = np.sqrt(np.maximum(ref, floor) * (1 - ref) / P)
    assert np.mean(np.abs(loc["p_sim"] - ref) <= 4 * sd + 2 * floor) > 0.97


def test_local_sorted_counts_equal_brute_force(w300, data300):
    """The sort + correction count equals a direct evaluation of every replicate."""
    A = w300.sparse.tocsr()
    self_w, card, w_row, Bbin = _row_structure(A)
    y = data300[:, [0, 3, 5, 7]]
    z = (y - y.mean(0)) / y.std(0)
    S = Bbin @ z
    n_perm, seed = 60, 9
    G = 3
    counts, counts_le = _conditional_counts(z, S, self_w, card, w_row, n_perm, seed, torch.device("cpu"), 3, G)
    gen = torch.Generator().manual_seed(seed)
    Js = [torch.rand((n_perm, w300.n), generator=gen).topk(card.max() + 1, dim=1).indices.numpy()
          for _ in range(G)]
    sign = np.sign(z * w_row[:, None])
    brute = np.zeros_like(counts)
    brute_le = np.zeros_like(counts)
    for i in range(w300.n):
        c, J = card[i], Js[i % G]
        ids = J[:, :c].copy()
        own = ids == i
        ids[own] = np.broadcast_to(J[:, [c]], ids.shape)[own]
        T = z[ids].sum(1)  # [P, F] random neighbour sums of the other n-1 observations
        hit = np.where(sign[i] > 0, T >= S[i] - 1e-9, np.where(sign[i] < 0, T <= S[i] + 1e-9, True))
        brute[i] = hit.sum(0)
        hit_le = np.where(sign[i] > 0, T <= S[i] + 1e-9, np.where(sign[i] < 0, T >= S[i] - 1e-9, True))
        brute_le[i] = hit_le.sum(0)
    np.testing.assert_array_equal(counts, brute)
    np.testing.assert_array_equal(counts_le, brute_le)


def test_local_rejects_unequal_row_weights(w300, data300):
    w300.transform = "o"
    try:
        from libpysal.weights import W

        nb = {i: w300.neighbors[i] for i in range(w300.n)}
        wt = {i: list(np.arange(1.0, len(nb[i]) + 1)) for i in range(w300.n)}
        with pytest.raises(ValueError, match="equal weights"):
            local_moran(data300[:, :1], W(nb, wt, silence_warnings=True), permutations=9)
    finally:
        w300.transform = "r"


# ----------------------------------------------------------------------------- FDR


def test_fdr_bh_matches_scipy_and_handles_nan():
    rng = np.random.default_rng(0)
    p = rng.random((3, 50)) ** 3
    np.testing.assert_allclose(fdr_bh(p), stats.false_discovery_control(p, axis=-1, method="bh"))
    pn = p.copy()
    pn[1, [3, 7, 9]] = np.nan
    q = fdr_bh(pn)
    keep = ~np.isnan(pn[1])
    assert np.all(np.isnan(q[1, ~keep]))
    np.testing.assert_allclose(q[1, keep], stats.false_discovery_control(pn[1, keep], method="bh"))
    with pytest.raises(ValueError):
        fdr_bh([0.5, 1.5])


# ----------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def two_regions():
    lon_gb, lat_gb = _points(150, seed=10, region="GB")
    lon_it, lat_it = _points(120, seed=11, region="IT")
    lon, lat = np.r_[lon_gb, lon_it], np.r_[lat_gb, lat_it]
    region = np.array(["GB"] * 150 + ["IT"] * 120)
    rng = np.random.default_rng(12)
    vals = rng.standard_normal((270, 6))
    vals[:150, 0] = 3 * (lon_gb - lon_gb.mean()) + 0.3 * vals[:150, 0]  # east-west gradient
    vals[:, 5] = 0.0  # dead unit
    da = xr.DataArray(vals.astype(np.float32), dims=("prompt", "unit"),
                      coords={"prompt": np.arange(270), "unit": np.arange(10, 16)})
    return da, lon, lat, region


def test_moran_dataset_contract(two_regions, tmp_path):
    da, lon, lat, region = two_regions
    crs = {"GB": CRS_PRESETS["GB"], "IT": CRS_PRESETS["IT"], "NYMETRO": CRS_PRESETS["NYMETRO"]}
    ds = moran_dataset(da, lon, lat, region, crs, k=8, permutations=49, seed=0)
    assert ds["I"].dims == ("region", "unit") and list(ds.region.values) == ["GB", "IT"]
    np.testing.assert_array_equal(ds.unit.values, np.arange(10, 16))
    for v in ("I", "EI", "VI_norm", "z_norm", "p_norm", "z_sim", "p_sim", "p_greater", "q_greater", "geary_C",
              "geary_z_norm", "geary_p_norm", "geary_p_sim", "geary_p_less", "geary_q_less"):
        assert v in ds and v in ds.attrs or v in ("I", "EI", "VI_norm", "z_norm", "z_sim", "geary_C", "geary_z_norm")
    assert "q_bh" not in ds
    for reg in ("GB", "IT"):
        r = ds.sel(region=reg)
        np.testing.assert_array_equal(r.q_greater.values, fdr_bh(r.p_greater.values))
        np.testing.assert_array_equal(r.geary_q_less.values, fdr_bh(r.geary_p_less.values))
    assert ds.p_greater.sel(region="GB", unit=10) == 1 / 50 and ds.geary_p_less.sel(region="GB", unit=10) == 1 / 50
    assert np.isnan(moran_dataset(da, lon, lat, region, crs, permutations=0)[["p_greater", "q_greater"]]
                    .to_array()).all()
    assert ds.n.values.tolist() == [150, 120] and ds.n_constant.values.tolist() == [1, 1]
    assert json.loads(ds.attrs["crs"]) == {"GB": "EPSG:27700", "IT": "EPSG:25832"}
    assert ds.attrs["weights"] == "knn" and ds.attrs["k"] == 8 and ds.attrs["permutations"] == 49
    gb = region == "GB"
    w = knn_weights(lon[gb], lat[gb], k=8, crs="EPSG:27700")
    ref = esda.Moran(da.values[gb, 1].astype(np.float64), w, permutations=0)
    np.testing.assert_allclose(ds.I.sel(region="GB", unit=11), ref.I, rtol=1e-9)
    assert ds.p_sim.sel(region="GB", unit=10) == 1 / 50 and np.isnan(ds.I.sel(unit=15)).all()
    ds.to_netcdf(tmp_path / "moran.nc", engine="h5netcdf")
    back = xr.load_dataset(tmp_path / "moran.nc", engine="h5netcdf")
    xr.testing.assert_allclose(back.I, ds.I)
    with pytest.raises(ValueError, match="no CRS"):
        moran_dataset(da, lon, lat, region, {"GB": "EPSG:27700"})


def test_lisa_dataset_layout(two_regions, tmp_path):
    da, lon, lat, region = two_regions
    crs = {"GB": "EPSG:27700", "IT": "EPSG:25832"}
    ds = lisa_dataset(da, lon, lat, region, crs, top_n=2, permutations=199, seed=0)
    assert ds["Is"].dims == ("region", "prompt", "unit")
    assert ds.selected.sum("unit").values.tolist() == [2, 2]
    assert bool(ds.selected.sel(region="GB", unit=10)) and int(ds["rank"].sel(region="GB", unit=10)) == 0
    gb = region == "GB"
    # prompts outside the region are NaN / q=0
    assert np.isnan(ds.Is.sel(region="GB").values[~gb]).all() and (ds.q.sel(region="GB").values[~gb] == 0).all()
    w = knn_weights(lon[gb], lat[gb], k=8, crs="EPSG:27700")
    ref = esda.Moran_Local(da.values[gb, 0].astype(np.float64), w, permutations=0)
    np.testing.assert_allclose(ds.Is.sel(region="GB", unit=10).values[gb], ref.Is, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ds.q.sel(region="GB", unit=10).values[gb], ref.q)
    assert list(ds.prompt_region.values[:2]) == ["GB", "GB"]
    # q_local: BH over the places of each region, per feature, of p_local; significant = q_local < 0.05
    for reg in ds.region.values:
        inside = region == reg
        for u in ds.unit.values[ds.selected.sel(region=reg).values]:
            one = ds.sel(region=reg, unit=u)
            p = one.p_local.values[inside]
            assert np.isfinite(p).all() and np.isnan(one.p_local.values[~inside]).all()
            np.testing.assert_allclose(one.q_local.values[inside], stats.false_discovery_control(p, method="bh"))
            np.testing.assert_array_equal(one.significant.values, one.q_local.values < 0.05)
    assert ds.significant.sel(region="GB", unit=10).any()  # the planted gradient has significant clusters
    assert "BH over places per feature, alpha 0.05" in ds.attrs["significant"] and "q_local" in ds.attrs
    ds2 = lisa_dataset(da, lon, lat, region, crs, features={"GB": [12], "IT": [13, 14]}, permutations=9)
    assert ds2.unit.values.tolist() == [12, 13, 14] and not bool(ds2.selected.sel(region="GB", unit=13))
    ds2.to_netcdf(tmp_path / "lisa.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="exactly one"):
        lisa_dataset(da, lon, lat, region, crs)
    with pytest.raises(ValueError, match="not in"):
        lisa_dataset(da, lon, lat, region, crs, features=[99])


def test_shuffled_control_is_the_shuffle_tested_against_the_data_null(two_regions):
    """The per-unit shuffled control: the statistics on coordinates shuffled within each region (KNN weights rebuilt
    on them, the real-data path) equal those of the places rearranged on the data's weights, and its p-values count
    the data's own replicates (a shuffle is one more draw from the permutation null)."""
    from mechflow.spatial.analysis import shuffle_within_regions, spatial_analysis

    da, lon, lat, region = two_regions
    da = da.assign_coords(longitude=("prompt", lon), latitude=("prompt", lat), region=("prompt", region))
    crs = {"GB": "EPSG:27700", "IT": "EPSG:25832"}
    params = {"k": 8, "transform": "r", "permutations": 49, "seed": 3, "lisa_top_n": 0, "crs": crs, "shuffles": 5}
    moran, lisa = spatial_analysis(da, params)
    assert lisa is None
    slon, slat = shuffle_within_regions(lon, lat, region, 3 + 1)
    ctrl = moran_dataset(da, slon, slat, region, crs, k=8, permutations=0)  # the real-data path on shuffled coordinates
    for v in ("I", "z_norm", "p_norm"):
        np.testing.assert_allclose(moran[f"{v}_shuffled"].values, ctrl[v].values, atol=1e-6, err_msg=v)  # float32 products
    for r, reg in enumerate(moran.region.values):  # p_greater: the data's replicates >= the shuffle's I
        idx = np.flatnonzero(region == reg)
        w = knn_weights(lon[idx], lat[idx], k=8, crs=crs[str(reg)], transform="r")
        sims = global_autocorrelation(da.values[idx], w, permutations=49, seed=3, keep_replicates=True)["replicates"]
        Ish = moran.I_shuffled.values[r]
        expect = np.where(np.isfinite(Ish), ((sims >= Ish).sum(0) + 1) / 50, np.nan)
        np.testing.assert_array_equal(moran.p_greater_shuffled.values[r], expect)
    assert float(moran.p_greater_shuffled.sel(region="GB", unit=10)) > 1 / 50  # the gradient is gone
    assert "q_bh_norm_shuffled" not in moran
    assert moran.layer_shuffle_p.dims == ("region", "layer_stat", "shuffle") and moran.sizes["shuffle"] == 5
    np.testing.assert_array_equal(moran.layer_shuffle_p.isel(shuffle=0).values, moran.layer_p_shuffled.values)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(w300, data300):
    cpu = global_autocorrelation(data300, w300, permutations=P, seed=0, device="cpu")
    gpu = global_autocorrelation(data300, w300, permutations=P, seed=0, device="cuda")
    np.testing.assert_allclose(gpu["moran"]["I"], cpu["moran"]["I"], rtol=1e-9)
    assert np.all(np.abs(gpu["moran"]["p_sim"] - cpu["moran"]["p_sim"]) < 0.15)
    lc = local_moran(data300, w300, permutations=P, seed=0, device="cpu")
    lg = local_moran(data300, w300, permutations=P, seed=0, device="cuda")
    np.testing.assert_allclose(lg["Is"], lc["Is"])
    assert stats.ks_2samp(lg["p_sim"][:, 0], lc["p_sim"][:, 0]).pvalue > 0.01


# ----------------------------------------------------------------------------- determinism


def test_spatial_step_is_bit_identical_at_1_and_2_threads(two_regions, threads):
    from mechflow.spatial.analysis import spatial_analysis

    da, lon, lat, region = two_regions
    da = da.assign_coords(longitude=("prompt", lon), latitude=("prompt", lat), region=("prompt", region))
    params = {"k": 8, "transform": "r", "permutations": 49, "seed": 0, "lisa_top_n": 2, "shuffled_control": True,
              "crs": {"GB": "EPSG:27700", "IT": "EPSG:25832"}}
    runs = []
    for n in (2, 1, 2):
        threads(n)
        runs.append(spatial_analysis(da, params))
    for moran, lisa in runs[1:]:
        xr.testing.assert_identical(moran, runs[0][0])
        xr.testing.assert_identical(lisa, runs[0][1])


def test_permutation_engines_are_bit_identical_at_1_and_2_threads(threads):
    # the torch engine on CPU: at the caller's thread count (num_threads=None) Geary's z_sim
    # differed between 1 and 2 threads for these shapes
    lon, lat = _points(300)
    w = knn_weights(lon, lat, k=8, crs=CRS_PRESETS["GB"])
    vals = _field(w.xy, 64, seed=2)
    runs = []
    for n in (2, 1, 2):
        threads(n)
        g = [global_autocorrelation(vals, w, permutations=99, seed=0, device="cpu", engine=e) for e in ("numpy", "torch")]
        lm = local_moran(vals[:, :8], w, permutations=99, seed=0, device="cpu")
        runs.append([r[s][k] for r in g for s in ("moran", "geary") for k in r[s]] + [lm["Is"], lm["p_sim"], lm["q"]])
    for arrays in runs[1:]:
        for a, b in zip(arrays, runs[0]):
            np.testing.assert_array_equal(a, b)
