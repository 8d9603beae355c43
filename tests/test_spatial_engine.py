"""The fused (numba) permutation engine of the global statistics against the numpy reference engine.

Both engines draw the same permutations for a seed, so they differ only in summation order:
``"fused"`` sums each row's neighbours and then blocks of 256 rows in ``sim_dtype`` (float64
totals), the numpy engine does scipy's CSR product and a column sum. With ``z`` standardised
(``sum z^2 = 1``), every replicate value ``v = sum_t a_t`` (cross term: ``a_t = w_ij z_i z_j``;
Geary's square term: ``a_t = rc_i z_i^2``) computed in floating point with unit roundoff ``u`` by
either engine is within ``(k_max + n + 2) * u * sum_t |a_t|`` of its exact value (``k_max + n``
additions at most in any sum, plus the rounding of ``z`` and of the products): the tolerance used
below, in float32 (``u = 2^-24``) and float64 (``u = 2^-53``). Counts of ``I_sim >= I`` (and Geary's)
can then differ only by replicates within that tolerance of the observed statistic ("near ties",
which happen for columns with few distinct values, whose statistics sit on a lattice); they are
equal elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")
pytest.importorskip("esda")

from libpysal.weights import KNN, W  # noqa: E402

from mechflow.spatial import _perm_numba as pn  # noqa: E402
from mechflow.spatial import global_autocorrelation, knn_weights, local_moran, moran_dataset  # noqa: E402
from mechflow.spatial._sparse import as_2d_values, locality_order, weights_csr  # noqa: E402
from mechflow.spatial.global_stats import ENGINES, _FusedReplicates, _NumpyReplicates, _observed  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]

EPS = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


@pytest.fixture(scope="module")
def w300():
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-4.0, 0.5, 300), rng.uniform(51.0, 55.0, 300)
    lon[5], lat[5] = lon[6], lat[6]  # a duplicate location
    return knn_weights(lon, lat, k=8, crs="EPSG:27700")


@pytest.fixture(scope="module")
def data300(w300):
    """Continuous columns, smooth fields, heavily tied columns and a constant column."""
    rng = np.random.default_rng(1)
    n = w300.n
    xy = (w300.xy - w300.xy.mean(0)) / 4e4
    smooth = np.cos(xy @ rng.standard_normal((2, 3)) + rng.uniform(0, 6, 3)) + 0.3 * rng.standard_normal((n, 3))
    ties = rng.integers(0, 3, (n, 2)).astype(float)
    sparse = np.where(rng.random(n) < 0.9, 0.0, rng.exponential(size=n))
    return np.column_stack([rng.standard_normal((n, 4)), smooth, ties, sparse, np.full(n, 0.7)])


CONTINUOUS = list(range(7))  # columns of data300 without ties
CONSTANT = 10


def _weighted(w: W, seed: int = 3) -> W:
    """Same neighbours, unequal random weights within rows (not row-constant: the kernel's general path)."""
    rng = np.random.default_rng(seed)
    return W(w.neighbors, {i: list(rng.uniform(0.1, 2.0, len(w.neighbors[i]))) for i in w.id_order},
             id_order=w.id_order, silence_warnings=True)


def _inputs(Y, w):
    """What ``_permute`` hands the engines: standardised columns and W in locality order."""
    A = weights_csr(w)
    z, z2ss, rc, _, moran, geary = _observed(as_2d_values(Y, A.shape[0]), A, w, True)
    order = locality_order(A)
    zs = np.where(z2ss > 0, z / np.sqrt(np.where(z2ss > 0, z2ss, 1.0)), 0.0)[order]
    return zs, A[order][:, order], rc[order], moran, geary


def _exact(zs, A, rc, perms):
    """float64 cross and square terms per replicate, and the sums of |terms| that scale their rounding."""
    absA = abs(A)
    out = {k: [] for k in ("cross", "sq", "cross_abs", "sq_abs")}
    for perm in perms:
        zp = zs[perm]
        out["cross"].append((zp * (A @ zp)).sum(0))
        out["cross_abs"].append((np.abs(zp) * (absA @ np.abs(zp))).sum(0))
        out["sq"].append(rc @ zp**2)
        out["sq_abs"].append(np.abs(rc) @ zp**2)
    return {k: np.array(v) for k, v in out.items()}


def _run_engines(Y, w, dtype, perms_n=37, seed=5):
    zs, A, rc, moran, geary = _inputs(Y, w)
    F = zs.shape[1]
    ref = _NumpyReplicates(zs, A, rc, [(0, F)], dtype, seed)
    fused = _FusedReplicates(zs, A, rc, dtype, seed, num_threads=2)
    perms = ref.draw(perms_n)
    np.testing.assert_array_equal(fused.draw(perms_n), perms)  # same permutation stream for a seed
    (cn, sn), = ref.replicates(perms, want_sq=True)
    (cf, sf), = fused.replicates(perms, want_sq=True)
    ex = _exact(zs, A, rc, perms)
    kmax = int(np.diff(A.indptr).max())
    scale = (kmax + zs.shape[0] + 2) * EPS[dtype]
    return dict(cn=cn, sn=sn, cf=cf, sf=sf, ex=ex, tol_cross=scale * ex["cross_abs"], tol_sq=scale * ex["sq_abs"],
                moran=moran, geary=geary, A=A, n=zs.shape[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", ["r", "b", "unequal"])
def test_fused_replicates_equal_the_numpy_engine_to_rounding(w300, data300, dtype, weights):
    w = _weighted(w300) if weights == "unequal" else w300
    w.transform = "r" if weights == "unequal" else weights
    try:
        if weights == "unequal":
            assert pn.equal_row_weights(weights_csr(w).indptr, weights_csr(w).data) is None  # general kernel path
        r = _run_engines(data300, w, dtype)
    finally:
        w300.transform = "r"
    ex = r["ex"]
    for got in ("cf", "cn"):
        assert np.all(np.abs(r[got] - ex["cross"]) <= r["tol_cross"]), got
    for got in ("sf", "sn"):
        assert np.all(np.abs(r[got] - ex["sq"]) <= r["tol_sq"]), got
    # the constant column is exactly 0 in both; in float64 the engines agree to ~1e-15 of the terms' scale
    assert np.all(r["cf"][:, CONSTANT] == 0) and np.all(r["sf"][:, CONSTANT] == 0)
    assert np.all(r["cn"][:, CONSTANT] == 0)
    if dtype == torch.float64:
        assert np.all(np.abs(r["cf"] - r["cn"]) <= 1e-13 * ex["cross_abs"] + 1e-300)


def _near_ties(w, Y, dtype, P, seed, obs_I, obs_C):
    """Per column, replicates whose exact I (C) is within the rounding tolerance of the observed one."""
    r = _run_engines(Y, w, dtype, perms_n=P, seed=seed)
    ex, n = r["ex"], r["n"]
    s0 = float(r["A"].sum())
    sim_I = n / s0 * ex["cross"]
    tol_I = n / s0 * r["tol_cross"] + 1e-12 * np.abs(obs_I)
    sim_C = (n - 1) * (ex["sq"] - 2 * ex["cross"]) / (2 * s0)
    tol_C = (n - 1) / (2 * s0) * (r["tol_sq"] + 2 * r["tol_cross"]) + 1e-12 * np.abs(obs_C)
    with np.errstate(invalid="ignore"):
        return (np.abs(sim_I - obs_I) <= tol_I).sum(0), (np.abs(sim_C - obs_C) <= tol_C).sum(0), tol_I.max(0), tol_C.max(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transform", ["r", "b"])
def test_fused_counts_and_moments_equal_the_numpy_engine(w300, data300, dtype, transform):
    P, seed = 299, 11  # more than one batch of replicates in both engines
    w300.transform = transform
    try:
        res = {e: global_autocorrelation(data300, w300, permutations=P, seed=seed, engine=e, sim_dtype=dtype, device="cpu",
                                         num_threads=2)
               for e in ("fused", "numpy")}
        m, g = res["numpy"]["moran"], res["numpy"]["geary"]
        ties_I, ties_C, tol_I, tol_C = _near_ties(w300, data300, dtype, P, seed, m["I"], g["C"])
    finally:
        w300.transform = "r"
    mf, gf = res["fused"]["moran"], res["fused"]["geary"]
    # observed statistics: the same code, bit for bit
    for key in ("I", "z_norm", "p_norm", "z_rand", "p_rand"):
        np.testing.assert_array_equal(mf[key], m[key])
    # counts: equal except for near ties (a count moves by at most one per near tie; folding keeps that)
    for ours, ref, ties in ((mf["p_greater"], m["p_greater"], ties_I), (mf["p_sim"], m["p_sim"], ties_I),
                            (gf["p_less"], g["p_less"], ties_C), (gf["p_sim"], g["p_sim"], ties_C)):
        diff = np.rint(np.abs(ours - ref) * (P + 1))
        live = np.isfinite(ref)
        assert np.all(diff[live] <= ties[live])
        np.testing.assert_array_equal(ours[live & (ties == 0)], ref[live & (ties == 0)])
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    if dtype == torch.float64:
        assert np.all(ties_I[CONTINUOUS] == 0) and np.all(ties_C[CONTINUOUS] == 0)  # so exact equality was tested there
    # moments of the replicates: within the same rounding tolerance (std and mean move by at most max |error|)
    for ours, ref, tol in ((mf, m, tol_I), (gf, g, tol_C)):
        for key in [k for k in ours if k.endswith("_sim") and k[:2] in ("EI", "se", "EC")]:
            live = np.isfinite(ref[key])
            assert np.all(np.abs(ours[key][live] - ref[key][live]) <= 2 * tol[live]), key
    assert np.all(np.isnan(mf["p_sim"][CONSTANT:])) and np.all(np.isnan(gf["p_less"][CONSTANT:]))
    assert res["fused"]["n_constant"] == res["numpy"]["n_constant"] == 1


def _flat(res):
    return [res[s][k] for s in ("moran", "geary") for k in sorted(res[s])]


def test_fused_results_do_not_depend_on_the_thread_count_and_it_is_the_cpu_default(w300):
    import numba

    rng = np.random.default_rng(4)
    xy = (w300.xy - w300.xy.mean(0)) / 4e4
    Y = np.cos(xy @ rng.standard_normal((2, 150))) + rng.standard_normal((w300.n, 150))  # 3 tiles, the last partial
    before = numba.get_num_threads()
    runs = [global_autocorrelation(Y, w300, permutations=301, seed=2, engine="fused", num_threads=t) for t in (1, 2, None, 1)]
    assert numba.get_num_threads() == before
    for res in runs[1:]:
        for a, b in zip(_flat(res), _flat(runs[0])):
            np.testing.assert_array_equal(a, b)
    default = global_autocorrelation(Y, w300, permutations=301, seed=2, device="cpu")
    for a, b in zip(_flat(default), _flat(runs[0])):
        np.testing.assert_array_equal(a, b)
    assert ENGINES == ("fused", "numpy", "torch")
    with pytest.raises(ValueError, match="engine"):
        global_autocorrelation(Y[:, :2], w300, permutations=3, engine="numba")
    with pytest.raises(ValueError, match=">= 1"):
        global_autocorrelation(Y[:, :2], w300, permutations=3, engine="fused", num_threads=0)


def test_fused_moran_only_and_tiny_inputs_match_numpy(w300):
    """geary=False skips the square term; a column count below one tile and P below one batch."""
    w = KNN.from_array(np.random.default_rng(8).uniform(size=(30, 2)), k=4)
    Y = np.random.default_rng(9).standard_normal((30, 3))
    for geary in (False, True):
        a = global_autocorrelation(Y, w, permutations=7, seed=1, geary=geary, engine="fused", sim_dtype=torch.float64)
        b = global_autocorrelation(Y, w, permutations=7, seed=1, geary=geary, engine="numpy", sim_dtype=torch.float64)
        np.testing.assert_array_equal(a["moran"]["p_greater"], b["moran"]["p_greater"])
        np.testing.assert_allclose(a["moran"]["seI_sim"], b["moran"]["seI_sim"], rtol=1e-12)
        assert (a["geary"] is None) == (not geary)


def test_tiles_and_row_weights():
    z = np.arange(3 * 70, dtype=np.float64).reshape(3, 70)
    for dtype in (np.float32, np.float64):
        Zt = pn.tile_columns(z, dtype)
        assert Zt.shape == (2, 3, pn.TILE) and Zt.dtype == dtype and Zt.ctypes.data % 64 == 0 and Zt.flags.c_contiguous
        np.testing.assert_array_equal(Zt[0], z[:, :64])
        np.testing.assert_array_equal(Zt[1, :, :6], z[:, 64:])
        assert np.all(Zt[1, :, 6:] == 0)
    indptr = np.array([0, 2, 2, 5])
    np.testing.assert_array_equal(pn.equal_row_weights(indptr, np.array([0.5, 0.5, 1.0, 1.0, 1.0])), [0.5, 0.0, 1.0])
    assert pn.equal_row_weights(indptr, np.array([0.5, 0.25, 1.0, 1.0, 1.0])) is None


def test_thread_pass_through_keeps_results(w300):
    """moran_dataset and local_moran take num_threads; their results do not depend on it."""
    rng = np.random.default_rng(6)
    Y = rng.standard_normal((w300.n, 6))
    one = local_moran(Y, w300, permutations=99, seed=0, num_threads=1)
    two = local_moran(Y, w300, permutations=99, seed=0, num_threads=2)
    for key in ("Is", "q", "p_sim", "p_local"):
        np.testing.assert_array_equal(one[key], two[key])
    import xarray as xr

    lon, lat = rng.uniform(-4.0, 0.5, 60), rng.uniform(51.0, 55.0, 60)
    da = xr.DataArray(rng.standard_normal((60, 3)), dims=("prompt", "unit"))
    ds = [moran_dataset(da, lon, lat, np.array(["GB"] * 60), {"GB": "EPSG:27700"}, permutations=49, num_threads=t)
          for t in (1, 2)]
    xr.testing.assert_identical(ds[0], ds[1])
