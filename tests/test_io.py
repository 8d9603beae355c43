"""Atomic writes and provenance attributes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mechflow.io import atomic_path, digest, load_dataarray, provenance_attrs, remove_stale_temporaries, write_dataarray


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nc"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_and_cleans_stale_temporaries(tmp_path):
    target = tmp_path / "out.txt"
    stale = tmp_path / ".out.txt.tmp-99999"
    stale.write_text("left by a killed job")
    with atomic_path(target) as tmp:
        assert not stale.exists()
        tmp.write_text("done")
    assert target.read_text() == "done" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert remove_stale_temporaries(target) == []


def test_dataarray_roundtrip_with_provenance(tmp_path):
    da = xr.DataArray(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), dims=("prompt", "unit"),
                      coords={"prompt": np.arange(4), "text": ("prompt", ["a", "b", "c", "<d>"])}, name="x")
    da.attrs = provenance_attrs(digest({"k": 1}), model="m", layers=[1, 2], params={"a": {"b": None}})
    write_dataarray(da, tmp_path / "x.nc")
    back = load_dataarray(tmp_path / "x.nc")
    np.testing.assert_array_equal(back.values, da.values)
    assert back["text"].values.tolist() == ["a", "b", "c", "<d>"]
    assert back.attrs["config_digest"] == digest({"k": 1}) and back.attrs["model"] == "m"
    assert back.attrs["params"] == '{"a":{"b":null}}' and "mechflow_version" in back.attrs and "created" in back.attrs
    zarr = pytest.importorskip("zarr")
    assert zarr
    write_dataarray(da, tmp_path / "x.zarr")
    np.testing.assert_array_equal(load_dataarray(tmp_path / "x.zarr").values, da.values)


def test_digest_is_order_independent():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1}) != digest({"a": 2, "b": [1, 2]})


def test_row_writer_streams_blocks_and_leaves_nothing_unless_complete(tmp_path):
    from mechflow.io import RowWriter

    coords = xr.Dataset(coords={"prompt": np.arange(5), "feature": np.arange(3), "text": ("prompt", list("abcde"))})
    data = np.arange(15, dtype=np.float32).reshape(5, 3)
    with RowWriter(tmp_path / "f.nc", coords, ("prompt", "feature"), {"features": {"unit": "x"}}, {"k": 1}, chunk_rows=2) as w:
        w.write(3, features=data[3:])
        w.write(0, features=data[:3])
    da = load_dataarray(tmp_path / "f.nc")
    np.testing.assert_array_equal(da.values, data)
    assert da.attrs["k"] == 1 and da.attrs["unit"] == "x" and da["text"].values.tolist() == list("abcde")
    # a row never written: an error, and no file (nor temporary) left behind
    with pytest.raises(ValueError, match="1 prompts were never written"):
        with RowWriter(tmp_path / "g.nc", coords, ("prompt", "feature"), {"features": {}}, {}) as w:
            w.write(0, features=data[:4])
    # a failure mid-write: nothing left either
    with pytest.raises(RuntimeError):
        with RowWriter(tmp_path / "h.nc", coords, ("prompt", "feature"), {"features": {}}, {}) as w:
            w.write(0, features=data[:2])
            raise RuntimeError("killed")
    with pytest.raises(ValueError, match="outside"):
        with RowWriter(tmp_path / "i.nc", coords, ("prompt", "feature"), {"features": {}}, {}) as w:
            w.write(4, features=data[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nc"]
