"""mechflow.compare: two results folders are the same results exactly when every array, tensor and table is."""

from __future__ import annotations

import json
import shutil

import numpy as np
import xarray as xr
from safetensors.numpy import save_file

from mechflow.compare import compare_roots, main


def _results(root, value: float = 1.0, created: str = "2026-01-01"):
    (root / "sae" / "run").mkdir(parents=True)
    (root / "logs").mkdir()
    ds = xr.Dataset({"x": (("prompt", "unit"), np.full((3, 2), value, np.float32))},
                    coords={"prompt": [0, 1, 2], "text": ("prompt", ["a", "b", "c"])},
                    attrs={"created": created, "config_digest": created, "model": "m"})
    ds.to_netcdf(root / "sae" / "run" / "features.nc", engine="h5netcdf")
    save_file({"W_dec": np.eye(2, dtype=np.float32)}, str(root / "sae" / "run" / "sae_weights.safetensors"))
    (root / "sae" / "run" / "cfg.json").write_text(json.dumps({"d_in": 2, "created": created}))
    (root / "logs" / "x.log").write_text(created)  # logs are not results
    return root


def test_identical_results_made_at_other_times_compare_identical(tmp_path):
    a, b = _results(tmp_path / "a"), _results(tmp_path / "b", created="2026-06-06")
    assert {r.status for r in compare_roots(a, b)} == {"identical"}
    assert len(compare_roots(a, b)) == 3 and main([str(a), str(b)]) == 0


def test_one_changed_value_or_attr_or_missing_file_is_reported_with_its_file(tmp_path, capsys):
    a = _results(tmp_path / "a")
    b = _results(tmp_path / "b", value=1.0 + 2 ** -20)  # one ulp-scale change in float32
    (verdict,) = [r for r in compare_roots(a, b) if r.status != "identical"]
    assert verdict.path == "sae/run/features.nc" and "x: values differ" in verdict.detail
    assert main([str(a), str(b)]) == 1 and "1 different" in capsys.readouterr().out
    c = tmp_path / "c"
    shutil.copytree(a, c)
    with xr.open_dataset(c / "sae" / "run" / "features.nc", engine="h5netcdf") as ds:
        changed = ds.load().assign_attrs(model="other")
    changed.to_netcdf(c / "sae" / "run" / "features.nc", engine="h5netcdf")
    (c / "sae" / "run" / "cfg.json").unlink()
    found = {r.path: r for r in compare_roots(a, c)}
    assert "model" in found["sae/run/features.nc"].detail and found["sae/run/cfg.json"].status == "missing"
