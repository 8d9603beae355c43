"""The spatial step in column blocks: bit for bit the unblocked result, read from a file block by block."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mechflow.io import FeatureColumns, load_feature_set
from mechflow.spatial.analysis import BLOCK_ALIGN, column_blocks, columns_per_block, spatial_analysis

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning")]
CRS = {"GB": "EPSG:27700", "IT": "EPSG:25832"}
PARAMS = {"k": 6, "transform": "r", "permutations": 19, "seed": 5, "lisa_top_n": 3, "shuffled_control": True,
          "residualise": True, "crs": CRS}


def _feature_set(n_features: int, seed: int = 0, n_gb: int = 90, n_it: int = 70, dim: str = "unit") -> xr.DataArray:
    """Two regions of places with admin-1 units and prompt lengths; features mixing a smooth field, an admin-1
    offset and noise; a constant feature and a duplicate place."""
    rng = np.random.default_rng(seed)
    lon = np.r_[rng.uniform(-4.0, 0.5, n_gb), rng.uniform(8.0, 15.0, n_it)]
    lat = np.r_[rng.uniform(51.0, 55.0, n_gb), rng.uniform(38.0, 46.0, n_it)]
    lon[1], lat[1] = lon[0], lat[0]
    region = np.array(["GB"] * n_gb + ["IT"] * n_it)
    admin1 = np.where(region == "GB", np.where(lon < -1.75, "WLS", "ENG"), np.where(lat < 42.0, "SUD", "NOR"))
    n_tokens = rng.integers(3, 7, region.size)
    field = np.sin(lat[:, None] * rng.uniform(0.5, 3.0, n_features)) + np.cos(lon[:, None] * rng.uniform(0.5, 3.0, n_features))
    values = (rng.uniform(0, 1, n_features) * field + (admin1 == "ENG")[:, None] * rng.uniform(0, 1, n_features)
              + rng.standard_normal((region.size, n_features))).astype(np.float32)
    values[:, 3] = 1.5
    return xr.DataArray(values, dims=("prompt", dim), coords={
        "prompt": np.arange(region.size), dim: np.arange(n_features) + 100, "longitude": ("prompt", lon),
        "latitude": ("prompt", lat), "region": ("prompt", region), "admin1_code": ("prompt", admin1),
        "n_tokens": ("prompt", n_tokens)})


def _sink_of(values: xr.DataArray, seed: int = 1) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    return values + np.float32(0.3) * rng.standard_normal(values.shape).astype(np.float32)


@pytest.mark.parametrize(("n_features", "width"), [(769, 256), (513, 256)])
def test_blocks_give_the_unblocked_result_bit_for_bit(n_features, width):
    values = _feature_set(n_features)
    sink = _sink_of(values)
    whole, whole_lisa = spatial_analysis(values, PARAMS, with_sink=sink)
    blocked, blocked_lisa = spatial_analysis(values, PARAMS, with_sink=sink, block_columns=width)
    assert len(column_blocks(n_features, width)) == (3 if n_features == 769 else 2)
    xr.testing.assert_identical(blocked, whole)
    xr.testing.assert_identical(blocked_lisa, whole_lisa)
    # the q values pool every feature of a region, so a block alone would give others
    assert {"q_greater", "q_greater_shuffled", "q_greater_resid", "q_greater_with_sink", "geary_q_less"} <= set(whole)
    assert int(whole["n_constant"].sum()) == 2  # the constant feature, in both regions


def test_blocks_of_a_set_wider_than_the_full_replicate_batch():
    # 8448 features: the whole set's permutation batches hold 248 replicates, a 4096-wide block's would hold 256;
    # the blocks draw and sum theirs in the whole set's batches
    values = _feature_set(8448, seed=2, n_gb=40, n_it=36)
    params = dict(PARAMS, permutations=300, residualise=False, shuffled_control=False, lisa_top_n=0)
    whole, _ = spatial_analysis(values, params)
    blocked, _ = spatial_analysis(values, params, block_columns=4096)
    xr.testing.assert_identical(blocked, whole)


def test_a_file_read_by_column_blocks_equals_the_loaded_feature_set(tmp_path):
    values = _feature_set(600, seed=3)
    # an activations file with the sink (the left-out position's activation), as extraction writes it
    pooled, stored_sink = values.values, _sink_of(values, seed=4).values
    ds = xr.Dataset(
        {"activations": (("prompt", "layer", "unit"), pooled[:, None, :]),
         "sink": (("prompt", "layer", "unit"), stored_sink[:, None, :])},
        coords={**{k: v for k, v in values.coords.items() if k != "unit"}, "layer": [2], "unit": np.arange(600)},
        attrs={"pooling": "mean", "hook": "resid", "model": "m"})
    path = tmp_path / "act.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    with FeatureColumns(path, "units", 2) as fc, FeatureColumns(path, "units", 2, sink=True) as fs:
        assert fc.dims == ("prompt", "unit") and fc.shape == (values.shape[0], 600) and fc.attrs["hook"] == "resid"
        xr.testing.assert_identical(fc.columns(slice(256, 512)), load_feature_set(path, "units", 2).isel(unit=slice(256, 512)))
        xr.testing.assert_identical(fs.columns(np.array([3, 7, 599])),
                                    load_feature_set(path, "units", 2, sink=True).isel(unit=[3, 7, 599]))
        assert fs.attrs["pool_excluded"] == "none (rebuilt)"
        blocked = spatial_analysis(fc, PARAMS, with_sink=fs, block_columns=BLOCK_ALIGN)
    whole = spatial_analysis(load_feature_set(path, "units", 2), PARAMS,
                             with_sink=load_feature_set(path, "units", 2, sink=True))
    xr.testing.assert_identical(blocked[0], whole[0])
    xr.testing.assert_identical(blocked[1], whole[1])
    with pytest.raises(ValueError, match="layer 5 was not extracted"):
        FeatureColumns(path, "units", 5)


def test_block_width_follows_the_memory_budget():
    mb = 1e6
    # everything fits: one block
    assert columns_per_block(1000, 500, memory_mb=4000, in_use_bytes=500 * mb) == 500
    # 20,000 prompts x 50,000 features in 2 GB with 600 MB in use: blocks of a few hundred columns
    width = columns_per_block(20_000, 50_000, memory_mb=2000, n_regions=3, in_use_bytes=600 * mb)
    assert width % BLOCK_ALIGN == 0 and BLOCK_ALIGN <= width <= 1024
    assert columns_per_block(20_000, 50_000, memory_mb=4000, n_regions=3, in_use_bytes=600 * mb) > width
    # never less than one aligned block, even when nothing is left
    assert columns_per_block(10**6, 10**5, memory_mb=100, in_use_bytes=600 * mb) == BLOCK_ALIGN
    # few prompts: the kept replicates and the shuffles' per-unit results, not the values, set the width
    few = dict(memory_mb=1000, in_use_bytes=500 * mb)
    assert columns_per_block(300, 50_000, **few, permutations=999, shuffles=1000) < columns_per_block(300, 50_000, **few)
    assert column_blocks(1000, 1000) == [(0, 1000)]
    assert column_blocks(513, 256) == [(0, 256), (256, 513)]  # a one-column tail joins the block before
    assert column_blocks(514, 256) == [(0, 256), (256, 512), (512, 514)]
    with pytest.raises(ValueError, match="multiple"):
        column_blocks(1000, 100)
