"""Semi-NMF (mechflow.snmf): recovery, monotone objective, exact sparsity, agreement with a
straightforward dense implementation of the same rules (mechflow.snmf.baseline), the Triton G update
inside a fit, data contract, the token-to-prompt reduction and input errors."""

from __future__ import annotations

import importlib
import importlib.util
import math

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.optimize import linear_sum_assignment

from mechflow import snmf
from mechflow.io import load_dataset, write_dataset
from mechflow.snmf.baseline import dense_reference_fit


def synthetic(units: int = 200, samples: int = 1000, K: int = 8, frac: float = 0.1, noise: float = 0.01, seed: int = 0):
    """A = F* G*^T + noise: F* with ceil(frac*units) random units per column (mixed sign, away from 0),
    G* >= 0 exponential with 20% of entries active; noise at ``noise`` x the signal's RMS."""
    rng = np.random.default_rng(seed)
    s = math.ceil(frac * units)
    F = np.zeros((units, K))
    for k in range(K):
        idx = rng.choice(units, s, replace=False)
        F[idx, k] = rng.normal(size=s) + np.sign(rng.normal(size=s))
    G = rng.exponential(size=(samples, K)) * (rng.random((samples, K)) < 0.2)
    A = F @ G.T
    A += noise * np.linalg.norm(A) / np.sqrt(A.size) * rng.normal(size=A.shape)
    return A, F, G


def matched_cosine(F_true: np.ndarray, F_est: np.ndarray) -> float:
    """Mean cosine of columns after Hungarian matching (signs count: G >= 0 fixes them)."""
    a = F_true / np.linalg.norm(F_true, axis=0)
    b = F_est / np.maximum(np.linalg.norm(F_est, axis=0), 1e-300)
    C = a.T @ b
    rows, cols = linear_sum_assignment(-C)
    return float(C[rows, cols].mean())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These problems are tiny: one thread is faster, and immune to oversubscribed CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem():
    return synthetic(seed=1)


@pytest.fixture(scope="module")
def fitted(problem):
    A, _, _ = problem
    return snmf.fit(A, n_factors=8, sparsity=0.1, init="kmeans", max_iter=200, tol=1e-7, seed=0, n_init=4)


def test_recovers_planted_factors(problem, fitted):
    _, F_true, _ = problem
    assert matched_cosine(F_true, fitted.F) >= 0.95
    # the noise floor: relative noise energy is 1e-4, so a recovered model sits right at it
    assert fitted.loss[-1] < 2e-4


def test_objective_is_monotone(problem, fitted):
    assert fitted.loss.shape == (fitted.n_iter + 1,)
    assert np.all(np.diff(fitted.loss) <= 0), np.diff(fitted.loss).max()
    assert fitted.loss[-1] < 0.2 * fitted.loss[0]
    # also along a single run from every init (restarts only pick one run)
    A, _, _ = problem
    for init in snmf.INITS:
        r = snmf.fit(A, n_factors=8, sparsity=0.1, init=init, max_iter=60, tol=0, seed=3)
        assert r.n_iter == 60 or r.stop_reason == "precision"
        assert np.all(np.diff(r.loss) <= 0), (init, np.diff(r.loss).max())


def test_loss_is_the_sparse_models_error(problem, fitted):
    A, _, _ = problem
    direct = np.linalg.norm(A - fitted.F @ fitted.G.T) ** 2 / np.linalg.norm(A) ** 2
    assert fitted.loss[-1] == pytest.approx(direct, rel=1e-8, abs=1e-12)


def test_g_nonnegative_unit_columns_and_exact_sparsity(fitted):
    assert fitted.G.min() >= 0
    np.testing.assert_allclose(np.linalg.norm(fitted.G, axis=0), 1.0, rtol=1e-10)
    assert fitted.n_keep == 20  # ceil(0.1 * 200)
    np.testing.assert_array_equal((fitted.F != 0).sum(0), 20)


@pytest.mark.parametrize(("sparsity", "units", "expected"),
                         [(0.07, 100, 7), (0.1, 200, 20), (0.013, 100, 2), (1e-6, 50, 1), (1.0, 30, 30)])
def test_n_keep_rule(sparsity, units, expected):
    assert snmf.n_keep_for(sparsity, units) == expected


def test_sparsity_count_on_odd_fraction():
    A, _, _ = synthetic(units=90, samples=300, K=5, seed=4)
    r = snmf.fit(A, n_factors=5, sparsity=0.07, max_iter=20, seed=0)
    assert r.n_keep == math.ceil(0.07 * 90) == 7
    np.testing.assert_array_equal((r.F != 0).sum(0), 7)
    assert r.G.min() >= 0


def test_matches_straightforward_dense_implementation(problem):
    A, _, _ = problem
    K, n_iter = 8, 40
    G0 = np.random.default_rng(5).random((A.shape[1], K)) + 0.01
    ours = snmf.fit(A, n_factors=K, sparsity=0.1, G0=G0, max_iter=n_iter, tol=0, backend="reference")
    F_ref, G_ref, loss_ref = dense_reference_fit(torch.from_numpy(A), torch.from_numpy(G0), ours.n_keep, n_iter)
    assert ours.n_iter == n_iter and len(loss_ref) == n_iter + 1
    assert ours.loss[-1] == pytest.approx(loss_ref[-1], rel=0.01)
    np.testing.assert_allclose(ours.loss, loss_ref, rtol=0.01)
    assert np.all(np.diff(loss_ref) <= 1e-15)


def test_deterministic_for_a_seed(problem):
    A, _, _ = problem
    a = snmf.fit(A, n_factors=8, init="kmeans", max_iter=15, seed=7)
    b = snmf.fit(A, n_factors=8, init="kmeans", max_iter=15, seed=7)
    c = snmf.fit(A, n_factors=8, init="kmeans", max_iter=15, seed=8)
    np.testing.assert_array_equal(a.F, b.F)
    np.testing.assert_array_equal(a.G, b.G)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.array_equal(a.G, c.G)


def test_float32_torch_and_xarray_inputs(problem):
    A, _, _ = problem
    r32 = snmf.fit(torch.from_numpy(A).float(), n_factors=8, init="svd", max_iter=30, dtype=torch.float32)
    r64 = snmf.fit(A, n_factors=8, init="svd", max_iter=30)
    assert r32.F.dtype == np.float32 and r64.F.dtype == np.float64
    assert np.all(np.diff(r32.loss) <= 0)
    assert r32.loss[-1] == pytest.approx(r64.loss[-1], rel=0.05)
    # a DataArray [prompt, unit] is transposed by its dim names and keeps its coords
    da = xr.DataArray(A.T, dims=("prompt", "unit"),
                      coords={"unit": np.arange(200) + 1000, "text": ("prompt", [f"p{i}" for i in range(1000)])})
    rx = snmf.fit(da, n_factors=8, init="svd", max_iter=30)
    np.testing.assert_array_equal(rx.F, r64.F)
    np.testing.assert_array_equal(rx.unit_coord, np.arange(200) + 1000)
    assert rx.prompt_coords["text"][3] == "p3"


def test_dataset_contract_and_top_prompts(tmp_path, problem, fitted):
    _, _, G_true = problem
    texts = np.array([f"prompt {i}" for i in range(fitted.G.shape[0])])
    ds = fitted.to_dataset(unit_coord=np.arange(200), prompt_coords={"text": texts}, attrs={"model": "toy", "layer": 5})
    assert ds["F"].dims == ("unit", "factor") and ds["G"].dims == ("prompt", "factor")
    assert ds["loss"].dims == ("iteration",) and ds.sizes["iteration"] == fitted.n_iter + 1
    assert float(ds["G"].min()) >= 0
    for key in ("mechflow_version", "created", "config_digest", "model", "layer", "sparsity", "n_keep", "init", "seed"):
        assert key in ds.attrs, key
    assert ds.attrs["n_keep"] == 20
    write_dataset(ds, tmp_path / "run.nc")
    back = load_dataset(tmp_path / "run.nc")
    np.testing.assert_array_equal(back["F"].values, fitted.F)
    assert back["text"].values[2] == "prompt 2"

    top = snmf.top_prompts(fitted, k=5, texts=texts)
    assert top["prompt"].dims == ("factor", "rank") and top["prompt"].shape == (8, 5)
    G = fitted.G
    for f in (0, 7):
        order = np.argsort(-G[:, f], kind="stable")[:5]
        np.testing.assert_array_equal(np.sort(top["prompt"].values[f]), np.sort(order))
        assert np.all(np.diff(top["value"].values[f]) <= 0)
        assert top["text"].values[f, 0] == texts[top["prompt"].values[f, 0]]
    # traced to the planted factor: top prompts of each recovered factor load on its true match
    a = fitted.F / np.linalg.norm(fitted.F, axis=0)
    top_ds = snmf.top_prompts(back, k=5)
    np.testing.assert_array_equal(top_ds["prompt"].values, top["prompt"].values)
    assert top_ds["text"].values[0, 0] == texts[top["prompt"].values[0, 0]]
    true_match = linear_sum_assignment(-(a.T @ (problem[1] / np.linalg.norm(problem[1], axis=0))))[1]
    strongest = G_true[top["prompt"].values[np.arange(8), 0], true_match]
    assert np.all(strongest > 0)


@pytest.mark.parametrize(
    ("A", "kwargs", "message"),
    [
        (np.zeros((3, 4, 5)), {}, "2-D"),
        (np.ones((10, 20)) * np.nan, {}, "non-finite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), {"n_factors": 1}, "non-finite"),
        (np.zeros((10, 20)), {}, "all zeros"),
        (np.ones((10, 20)), {"n_factors": 11}, "exceeds min"),
        (np.ones((10, 20)), {"n_factors": 0}, "n_factors"),
        (np.ones((10, 20)), {"sparsity": 0.0}, "sparsity"),
        (np.ones((10, 20)), {"sparsity": 1.5}, "sparsity"),
        (np.ones((10, 20)), {"sparsity": -0.1}, "sparsity"),
        (np.ones((10, 20)), {"init": "nndsvd"}, "init"),
        (np.ones((10, 20)), {"G0": np.ones((20, 3))}, "shape"),
        (np.ones((10, 20)), {"G0": -np.ones((20, 2))}, ">= 0"),
        (np.ones((10, 20)), {"n_init": 3, "init": "svd"}, "n_init"),
        (np.ones((10, 20)), {"tol": -1.0}, "tol"),
        (np.ones((10, 20)), {"backend": "cuda-magic"}, "backend"),
        ("not an array", {}, "numpy array"),
    ],
)
def test_clear_errors(A, kwargs, message):
    kwargs = {"n_factors": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        snmf.fit(A, **kwargs)


def test_typed_config_and_runtime_equal_the_keywords(problem):
    """fit(A, cfg, runtime) is fit(A, **cfg keys, **runtime keys); a key goes one way, not both."""
    A, _, _ = problem
    seen = []
    cfg = snmf.SNMFRunConfig(n_factors=4, init="random", max_iter=5, seed=2)
    typed = snmf.fit(A, cfg, snmf.SNMFRuntime(backend="reference", callback=lambda it, loss: seen.append(it)))
    keys = snmf.fit(A, n_factors=4, init="random", max_iter=5, seed=2, backend="reference")
    assert seen == [1, 2, 3, 4, 5]
    for name in ("F", "G", "loss"):
        np.testing.assert_array_equal(getattr(typed, name), getattr(keys, name), err_msg=name)
    assert typed.params == keys.params
    with pytest.raises(TypeError, match="cfg and its keys"):
        snmf.fit(A, cfg, max_iter=3)
    with pytest.raises(TypeError, match="runtime and its keys"):
        snmf.fit(A, cfg, snmf.SNMFRuntime(), device="cpu")
    with pytest.raises(TypeError, match="SNMFRunConfig"):
        snmf.fit(A, 4)
    with pytest.raises(snmf.SNMFError, match="G0="):
        snmf.fit(A, n_factors=4, init=np.ones((1000, 4)))
    with pytest.raises(snmf.SNMFError, match="n_init"):  # an array G0 is deterministic: no restarts
        snmf.fit(A, snmf.SNMFRunConfig(n_factors=4, init="kmeans", n_init=2), G0=np.ones((1000, 4)))
    with pytest.raises(snmf.SNMFError, match="n_factors"):  # a config built directly is checked too
        snmf.fit(A, snmf.SNMFRunConfig(n_factors=0))


def test_top_prompts_errors(fitted):
    with pytest.raises(ValueError, match="k must be"):
        snmf.top_prompts(fitted, k=0)
    with pytest.raises(ValueError, match="k must be"):
        snmf.top_prompts(fitted, k=fitted.G.shape[0] + 1)
    with pytest.raises(ValueError, match="texts"):
        snmf.top_prompts(fitted, k=2, texts=["a", "b"])


def test_triton_g_update_inside_a_fit_matches_the_reference(triton_device, monkeypatch):
    """A whole fit through the fused Triton G update (tiny, for the interpreter) agrees with the reference path."""
    tk = importlib.import_module("mechflow.kernels._triton_kernels")
    calls = []
    kernel = tk.snmf_update
    monkeypatch.setattr(tk, "snmf_update", lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    A, _, _ = synthetic(units=30, samples=70, K=4, seed=2)
    kw = dict(sparsity=0.2, init="random", max_iter=6, tol=0, seed=1, dtype=torch.float32, device=triton_device)
    ref = snmf.fit(A, n_factors=4, backend="reference", **kw)
    assert not calls
    tri = snmf.fit(A, n_factors=4, backend="triton", **kw)
    assert len(calls) == 6  # one G update per iteration, all through the kernel
    np.testing.assert_allclose(tri.loss, ref.loss, rtol=1e-5)
    np.testing.assert_allclose(tri.G, ref.G, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tri.F, ref.F, rtol=1e-4, atol=1e-6 * np.abs(ref.F).max())


def test_tokens_to_prompts_takes_each_prompts_max():
    """Token-level G [token, factor] -> G [prompt, factor], by hand: prompts 0, 1, 2 own tokens
    [0, 1], [2, 3, 4], [5]; coordinates move to dim prompt from each prompt's tokens."""
    G = np.array([[0.1, 0.9], [0.5, 0.2], [0.3, 0.0], [0.7, 0.4], [0.2, 0.6], [0.0, 0.05]])
    owner = np.array([0, 0, 1, 1, 1, 2])
    coords = {"prompt": np.arange(6), "prompt_index": owner, "position": np.array([0, 1, 0, 1, 2, 0]),
              "token_str": np.array(["a", "b", "c", "d", "e", "f"]),
              "text": np.array(["p0", "p0", "p1", "p1", "p1", "p2"])[np.arange(6)],
              "latitude": np.array([50.0, 50.0, 51.0, 51.0, 51.0, 52.0]), "region": np.array(["GB"] * 5 + ["IT"])}
    result = snmf.SNMFResult(F=np.ones((3, 2)), G=G, loss=np.array([1.0, 0.5]), n_iter=1, converged=True,
                             stop_reason="tol", n_keep=1, params={"n_factors": 2}, prompt_coords=coords)
    ds = snmf.tokens_to_prompts(result.to_dataset())
    want = np.array([[0.5, 0.9], [0.7, 0.6], [0.0, 0.05]])
    assert ds["G"].dims == ("prompt", "factor") and ds["G_token"].dims == ("token", "factor")
    np.testing.assert_array_equal(ds["G"].values, want)
    np.testing.assert_array_equal(ds["prompt"].values, [0, 1, 2])
    np.testing.assert_array_equal(ds["text"].values, ["p0", "p1", "p2"])
    np.testing.assert_array_equal(ds["latitude"].values, [50.0, 51.0, 52.0])
    np.testing.assert_array_equal(ds["region"].values, ["GB", "GB", "IT"])
    assert ds["text"].dims == ("prompt",) and ds["region"].dims == ("prompt",)
    np.testing.assert_array_equal(ds["G_token"].values, G)
    for name in ("prompt_index", "position", "token_str"):
        assert ds[name].dims == ("token",)
    assert "text" not in ds["G_token"].coords and ds["F"].dims == ("unit", "factor")
    with pytest.raises(ValueError, match="prompt_index"):
        snmf.tokens_to_prompts(result.to_dataset(prompt_coords={"text": coords["text"]}))


# ---- the same config gives bit-identical results at any thread count ---------------------------

@pytest.mark.parametrize("init", ["svd", "kmeans", "random"])
def test_fit_is_bit_identical_at_1_and_2_threads(init, threads):
    # a long sample axis (1,200): MKL splits A @ G's contraction among threads, so a fit at the
    # caller's thread count (num_threads=None) differs between 1 and 2 threads here
    A, _, _ = synthetic(units=64, samples=1200, K=4)
    fits = []
    for n in (2, 1, 2):
        threads(n)
        fits.append(snmf.fit(A, n_factors=4, init=init, max_iter=15, tol=0))
        assert torch.get_num_threads() == n  # the caller's setting is back
    datasets = [r.to_dataset(attrs={"config_digest": "d"}) for r in fits]
    for r, ds in zip(fits[1:], datasets[1:]):
        for name in ("F", "G", "loss"):
            np.testing.assert_array_equal(getattr(r, name), getattr(fits[0], name), err_msg=name)
        xr.testing.assert_identical(ds.drop_attrs(), datasets[0].drop_attrs())
        same_run = {k: v for k, v in ds.attrs.items() if k != "created"}  # a timestamp: io.provenance_attrs
        assert same_run == {k: v for k, v in datasets[0].attrs.items() if k != "created"}
    assert not [k for k in datasets[0].attrs if "second" in k or "time" in k]  # timings go to the log
