"""Semi-NMF out of core (mechflow.snmf.blocks): a fit that reads its matrix from a file block by block
at every pass equals, bit for bit, the fit with the matrix in memory; the blocks partition the samples
and are read one at a time; blocking changes only the rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from mechflow import contracts, snmf
from mechflow.io import open_dataarray, write_dataarray
from mechflow.snmf.blocks import SampleBlocks, block_samples


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1/64 MiB: 2,048 float64 values, e.g. 51 samples of 40 units."""
    monkeypatch.setattr(contracts, "SNMF_BLOCK_MB", 1 / 64)


def planted(units: int, samples: int, K: int = 5, seed: int = 0) -> np.ndarray:
    """A sparse-factor matrix plus noise, [units, samples] float32 (as activations are stored)."""
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(units, K)) * (rng.random((units, K)) < 0.3)
    G = rng.exponential(size=(samples, K)) * (rng.random((samples, K)) < 0.4)
    return (F @ G.T + 0.05 * rng.normal(size=(units, samples))).astype(np.float32)


def activations_file(path, A: np.ndarray):
    """A written as an activations-like file [prompt, unit] with prompt coordinates."""
    n = A.shape[1]
    da = xr.DataArray(A.T, dims=("prompt", "unit"), name="activations",
                      coords={"prompt": np.arange(n), "unit": np.arange(A.shape[0]), "latitude": ("prompt", np.linspace(40, 50, n))})
    write_dataarray(da, path)
    return path


def test_blocks_partition_the_samples(small_blocks):
    assert block_samples(40) == 2048 // 40 == 51
    assert block_samples(10**9) == 1  # never zero
    A = np.arange(40 * 200, dtype=np.float64).reshape(40, 200)
    reads = []

    def read(a, b):
        reads.append((a, b))
        return A[:, a:b]

    blocks = SampleBlocks(read, 40, 200, torch.float64, "cpu", in_memory=False)
    assert [(s.start, s.stop) for s in blocks.slices] == [(0, 51), (51, 102), (102, 153), (153, 200)]
    assert blocks.scale == pytest.approx(np.linalg.norm(A), rel=1e-15)
    assert blocks.find(0) == (0, 0) and blocks.find(101) == (1, 50) and blocks.find(199) == (3, 46)
    reads.clear()
    got = torch.cat([b for _, b in blocks], dim=1)
    assert reads == [(0, 51), (51, 102), (102, 153), (153, 200)]  # one block per read, every pass
    torch.testing.assert_close(got, torch.from_numpy(A) / blocks.scale, rtol=0, atol=0)
    kept = SampleBlocks(read, 40, 200, torch.float64, "cpu", in_memory=True)
    reads.clear()
    assert torch.equal(torch.cat([b for _, b in kept], dim=1), got) and reads == []


def test_one_block_norm_is_the_whole_norm():
    A = np.random.default_rng(2).normal(size=(30, 70))
    blocks = SampleBlocks(lambda a, b: A[:, a:b], 30, 70, torch.float64, "cpu")
    assert len(blocks) == 1 and blocks.scale == float(torch.linalg.norm(torch.from_numpy(A)))


@pytest.mark.parametrize("units,samples,init", [(40, 400, "svd"), (40, 400, "kmeans"), (40, 400, "random"),
                                                (120, 60, "svd"), (40, 400, "array")])
def test_fit_from_disk_equals_fit_in_memory(tmp_path, small_blocks, units, samples, init):
    """4-8 blocks read from a netCDF file at every pass == the same blocks kept in memory == numpy input."""
    A = planted(units, samples, seed=units + samples)
    path = activations_file(tmp_path / "act.nc", A)
    start = {"G0": np.random.default_rng(5).random((samples, 4)) + 0.1} if init == "array" else {"init": init}
    kw = dict(n_factors=4, max_iter=12, tol=0, sparsity=0.2, **start)
    with open_dataarray(path) as lazy:
        assert lazy.variable._in_memory is False
        on_disk = snmf.fit(lazy, in_memory=False, **kw)  # [prompt, unit] as stored
        read_once = snmf.fit(lazy, in_memory=True, **kw)
        reads = []
        real = type(lazy.variable).isel

        def spy(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            reads.append(out.shape)
            return out

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(lazy.variable), "isel", spy)
            snmf.fit(lazy, in_memory=False, **{**kw, "max_iter": 1})
        assert reads and max(r[0] for r in reads) <= block_samples(units)  # never more than one block read
    in_memory = snmf.fit(A, **kw)
    transposed = snmf.fit(xr.DataArray(A.T, dims=("prompt", "unit")).T, **kw)  # a DataArray in either order
    np.testing.assert_array_equal(transposed.F, in_memory.F)
    if init == "array":  # the fit scales its own copy
        np.testing.assert_array_equal(start["G0"], np.random.default_rng(5).random((samples, 4)) + 0.1)
    assert len(SampleBlocks(lambda a, b: A[:, a:b], units, samples, torch.float64, "cpu")) >= 2
    for other in (read_once, in_memory):
        np.testing.assert_array_equal(on_disk.F, other.F)
        np.testing.assert_array_equal(on_disk.G, other.G)
        np.testing.assert_array_equal(on_disk.loss, other.loss)
    np.testing.assert_array_equal(on_disk.prompt_coords["latitude"], np.linspace(40, 50, samples))
    assert on_disk.loss[-1] < on_disk.loss[0]


@pytest.mark.parametrize("init", ["svd", "kmeans"])
def test_blocking_changes_only_the_rounding(monkeypatch, init):
    """The same fit in 1 block and in 8: losses agree to 1e-9 (relative), F to 1e-6 of its scale."""
    A = planted(40, 400, seed=3)
    kw = dict(n_factors=4, init=init, max_iter=10, tol=0, sparsity=0.2)
    one = snmf.fit(A, **kw)
    monkeypatch.setattr(contracts, "SNMF_BLOCK_MB", 1 / 64)
    many = snmf.fit(A, **kw)
    np.testing.assert_allclose(many.loss, one.loss, rtol=1e-9)
    np.testing.assert_allclose(many.F, one.F, atol=1e-6 * np.abs(one.F).max())
    np.testing.assert_allclose(many.G, one.G, atol=1e-6)
    assert not np.array_equal(many.F, one.F)  # the blocks are real: the disk/memory equality is not vacuous


@pytest.mark.parametrize("threads", [2])
def test_blocked_fit_is_bit_identical_at_1_and_2_threads(small_blocks, threads):
    A = planted(300, 200, seed=4)  # 300 units: row blocks of 128 inside each sample block
    kw = dict(n_factors=4, init="kmeans", max_iter=6, tol=0)
    one = snmf.fit(A, **kw)
    torch.set_num_threads(threads)
    two = snmf.fit(A, **kw)
    np.testing.assert_array_equal(one.F, two.F)
    np.testing.assert_array_equal(one.G, two.G)


def test_non_finite_value_in_a_later_block_is_named(tmp_path, small_blocks):
    A = planted(40, 300)
    A[7, 250] = np.nan
    with open_dataarray(activations_file(tmp_path / "act.nc", A)) as lazy, \
            pytest.raises(snmf.SNMFError, match="1 non-finite values"):
        snmf.fit(lazy, n_factors=3, in_memory=False)


def test_device_auto_runs_where_torch_sees_a_gpu_and_a_missing_gpu_is_named():
    A = planted(20, 60)
    auto = snmf.fit(A, n_factors=3, max_iter=2, device="auto")
    expected = "float32" if torch.cuda.is_available() else "float64"  # float64 on the CPU, float32 on CUDA
    assert auto.params["dtype"] == expected
    if torch.cuda.is_available():
        return
    np.testing.assert_array_equal(auto.F, snmf.fit(A, n_factors=3, max_iter=2, device="cpu").F)
    with pytest.raises(snmf.SNMFError, match="semi-NMF asks for device 'cuda:1' but torch sees no CUDA device"):
        snmf.fit(A, n_factors=3, device="cuda:1")


def test_out_of_core_key_reads_from_disk_whatever_the_memory():
    """``snmf.out_of_core: true`` never keeps A in memory; false keeps it where it fits ``mem_mb``."""
    from mechflow.snmf.blocks import keep_in_memory, plan_this_process, working_bytes

    units, samples, K = 1024, 1_000_000, 16
    need_mb = working_bytes(units, samples, K, True) / 1e6  # 8.2 GB of A, a block, G
    assert keep_in_memory(units, samples, K, 10 * need_mb, 0) and not keep_in_memory(units, samples, K, need_mb / 2, 0)
    assert plan_this_process(units, samples, K, 10**6) is True
    assert plan_this_process(units, samples, K, 10**6, out_of_core=True) is False
    assert working_bytes(units, samples, K, False) < working_bytes(units, samples, K, True) / 10  # 3 blocks and G


@pytest.mark.parametrize("value", [True, False])
def test_out_of_core_study_key_reaches_the_rule_params_canonically(value):
    from mechflow.config import load_schema, validate_schema
    from mechflow.steps import snmf as snmf_step
    from mechflow.study import canonical

    schema = load_schema(contracts_repo() / "config.schema.yaml")
    tiny = yaml.safe_load((contracts_repo() / "configs" / "tiny.yaml").read_text())
    assert "out_of_core" not in tiny["snmf"] and validate_schema(tiny, schema)["snmf"]["out_of_core"] is False
    study = validate_schema({**tiny, "snmf": {**tiny["snmf"], "out_of_core": value}}, schema)
    params = snmf_step.params(study)
    assert params["out_of_core"] is value and params == canonical(params) and list(params) == sorted(params)
    rule = (contracts_repo() / "rules" / "snmf.smk").read_text()
    assert "**snmf_step.params(config)" in rule  # the rule's params are these
    script = (contracts_repo() / "scripts" / "snmf.py").read_text()
    assert "out_of_core=sm.params.out_of_core" in script


def contracts_repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
