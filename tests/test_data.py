"""Prompt sets: GeoNames regions, templates, CSV / xarray sources, validation."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from mechflow.data import PromptSetError, build_prompts
from mechflow.io import write_dataset


def test_geonames_regions_counts_and_contract():
    kept = build_prompts({"regions": ["GB", "IT", "NYMETRO"], "duplicates": "keep"})
    # cities500: every place with an admin-1 of the region (GB's 2 Cyprus bases have none)
    assert collections.Counter(kept["region"].values.tolist()) == {"GB": 5911, "IT": 11854, "NYMETRO": 3527}
    ds = build_prompts({"regions": ["GB", "IT", "NYMETRO"]})  # the default drops places that repeat a text or point
    counts = collections.Counter(ds["region"].values.tolist())
    assert counts == {"GB": 5660, "IT": 11718, "NYMETRO": 3442}
    assert ds.attrs["duplicates"] == "drop" and ds.attrs["duplicates_found"] == (5911 + 11854 + 3527) - sum(counts.values())
    assert ds["latitude"].dtype == np.float64 and ds["place_id"].dtype == np.int64
    gb = ds.where(ds["region"] == "GB", drop=True)
    assert gb["latitude"].min() > 49 and gb["longitude"].max() < 2.1
    assert set(t.split(", ")[-1] for t in gb["text"].values) == {"England", "Scotland", "Wales", "Northern Ireland"}


def test_template_sampling_and_population_filter():
    cfg = {"regions": ["IT"], "template": "{name} ({admin1_name_local}, {country})", "min_population": 5000,
           "max_per_region": 50, "seed": 1}
    a, b = build_prompts(cfg), build_prompts(cfg)
    assert a.sizes["prompt"] == 50 and a["text"].values.tolist() == b["text"].values.tolist()
    assert (a["population"] >= 5000).all()
    assert all(t.endswith(", IT)") for t in a["text"].values)
    assert build_prompts({**cfg, "seed": 2})["text"].values.tolist() != a["text"].values.tolist()
    milan = build_prompts({"regions": ["IT"], "min_population": 1_000_000})
    assert "Milan, Lombardy" in milan["text"].values.tolist()


def test_unknown_template_field_and_empty_set_are_errors():
    with pytest.raises(PromptSetError, match="unknown field"):
        build_prompts({"regions": ["GB"], "template": "{city}"})
    with pytest.raises(PromptSetError, match="empty"):
        build_prompts({"regions": ["GB"], "min_population": 10**9})
    with pytest.raises(PromptSetError, match="unknown region preset"):
        build_prompts({"regions": ["ATLANTIS"]})


def test_inline_region():
    ds = build_prompts({"regions": [{"name": "ie", "country": "IE", "crs": "EPSG:2157"}], "template": "{name}, Ireland"})
    assert ds.sizes["prompt"] > 100 and set(ds["region"].values) == {"ie"}


def test_csv_source_and_bad_rows(tmp_path):
    good = tmp_path / "p.csv"
    good.write_text("text,latitude,longitude,region\nLeeds,53.8,-1.55,GB\n\"Bari, <b>\",41.1,16.9,IT\n")
    ds = build_prompts({"source": "csv", "path": str(good)})
    assert ds["text"].values.tolist() == ["Leeds", "Bari, <b>"] and ds["place_id"].values.tolist() == [-1, -1]
    nan = tmp_path / "nan.csv"
    nan.write_text("text,latitude,longitude,region\nLeeds,,-1.55,GB\nYork,inf,1,GB\n")
    with pytest.raises(PromptSetError, match="2 prompt\\(s\\) have non-finite coordinates"):
        build_prompts({"source": "csv", "path": str(nan)})
    empty = tmp_path / "empty.csv"
    empty.write_text("text,latitude,longitude,region\n")
    with pytest.raises(PromptSetError, match="empty"):
        build_prompts({"source": "csv", "path": str(empty)})
    cols = tmp_path / "cols.csv"
    cols.write_text("text,lat,lon\nx,1,2\n")
    with pytest.raises(PromptSetError, match="missing column"):
        build_prompts({"source": "csv", "path": str(cols)})
    out = tmp_path / "range.csv"
    out.write_text("text,latitude,longitude,region\nx,95,2,GB\n")
    with pytest.raises(PromptSetError, match="out of range"):
        build_prompts({"source": "csv", "path": str(out)})


def test_xarray_source_roundtrip(tmp_path):
    ds = build_prompts({"regions": ["NYMETRO"], "max_per_region": 20})
    write_dataset(ds, tmp_path / "p.nc")
    again = build_prompts({"source": "xarray", "path": str(tmp_path / "p.nc"), "max_per_region": 5})
    assert again.sizes["prompt"] == 5 and set(again["text"].values) <= set(ds["text"].values)
