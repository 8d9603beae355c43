"""The HTML report: built from a small synthetic study; escaping; sections; renders in Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mechflow.analysis import spatial_analysis
from mechflow.io import write_dataarray, write_dataset
from mechflow.probes import probe_dataset
from mechflow.report import build_report

EVIL = "<script>alert(1)</script>"
SECTION_IDS = ["summary", "places", "moran", "maps", "probes", "sae", "snmf"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A two-region study with every kind of result, built from synthetic data in a few seconds."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    n_per, units = 40, 12
    lon = np.r_[rng.uniform(-3, 0, n_per), rng.uniform(-75, -73, n_per)]
    lat = np.r_[rng.uniform(51, 54, n_per), rng.uniform(40, 42, n_per)]
    region = np.array(["GB"] * n_per + ["NYMETRO"] * n_per)
    text = np.array([f"Place {i}, Shire" for i in range(2 * n_per)], dtype=object)
    text[3] = f"Evil {EVIL} town"
    coords = {"prompt": np.arange(2 * n_per), "text": ("prompt", text.astype(str)), "latitude": ("prompt", lat),
              "longitude": ("prompt", lon), "region": ("prompt", region), "place_id": ("prompt", np.arange(2 * n_per))}
    prompts = xr.Dataset(coords=coords)
    write_dataset(prompts, root / "prompts.nc")
    acts = rng.normal(size=(2 * n_per, 3, units)).astype(np.float32)
    acts[:, :, 0] += lat[:, None] - lat.mean()  # one spatially structured unit
    act = xr.DataArray(acts, dims=("prompt", "layer", "unit"), name="activations",
                       coords={**coords, "layer": [0, 1, 2], "unit": np.arange(units)}, attrs={"model": "m", "hook": "resid"})
    write_dataarray(act, root / "act.nc")
    params = dict(k=5, transform="r", permutations=19, seed=0, crs={}, lisa_top_n=2, shuffled_control=True)
    feats = xr.DataArray(np.maximum(rng.normal(size=(2 * n_per, 16)), 0).astype(np.float32), dims=("prompt", "feature"),
                         coords={**coords, "feature": np.arange(16)}, name="features")
    sae_dir = root / "sae"
    write_dataarray(feats, sae_dir / "features.nc")
    write_dataset(xr.Dataset({v: ("step", rng.uniform(0.1, 1, 5)) for v in ("loss", "fvu", "l0", "dead_fraction", "lr")},
                             coords={"step": np.arange(0, 50, 10)}), sae_dir / "training.nc")
    (sae_dir / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_sae": 16, "k": 4}))
    G = np.abs(rng.normal(size=(2 * n_per, 3)))
    snmf = xr.Dataset({"F": (("unit", "factor"), rng.normal(size=(units, 3))), "G": (("prompt", "factor"), G),
                       "loss": ("iteration", [1.0, 0.5, 0.4]),
                       "top_text": (("factor", "rank"), np.array([[text[i] for i in np.argsort(-G[:, f])[:3]] for f in range(3)]))},
                      coords={**coords, "unit": np.arange(units), "factor": np.arange(3), "iteration": np.arange(3)})
    write_dataset(snmf, root / "snmf.nc")
    spatial = []
    for kind, values, run in (("units", act.sel(layer=1, drop=True), None), ("sae", feats, "topk"), ("snmf", snmf["G"], "k3")):
        moran, lisa = spatial_analysis(values, params)
        d = root / f"spatial_{kind}"
        write_dataset(moran, d / "moran.nc")
        write_dataset(lisa, d / "lisa.nc")
        spatial.append({"dataset": "d", "model": "m", "hook": "resid", "layer": 1, "kind": kind, "run": run,
                        "moran": str(d / "moran.nc"), "lisa": str(d / "lisa.nc")})
    probes = probe_dataset(act, lon, lat, region, {"GB": "EPSG:27700", "NYMETRO": "EPSG:32618"}, n_folds=3)
    write_dataset(probes, root / "probes.nc")
    bench = root / "bench.tsv"
    bench.write_text("s\th:m:s\tmax_rss\n1.5\t0:00:01\t100\n")
    return {
        "study": {"title": f"Study {EVIL}", "config": {"models": {"m": {"spec": f"package:x/{EVIL}"}}, "extract": {"hooks": ["resid"]},
                  "spatial": {"k": 5}}, "config_digest": "abc", "versions": {"mechflow": "0"}, "top_n": 2},
        "prompts": [{"dataset": "d", "path": str(root / "prompts.nc")}],
        "activations": [{"dataset": "d", "model": "m", "hook": "resid", "path": str(root / "act.nc")}],
        "spatial": spatial,
        "probes": [{"dataset": "d", "model": "m", "hook": "resid", "path": str(root / "probes.nc")}],
        "sae": [{"dataset": "d", "model": "m", "hook": "resid", "layer": 1, "run": "topk", "dir": str(sae_dir)}],
        "snmf": [{"dataset": "d", "model": "m", "hook": "resid", "layer": 1, "run": "k3", "path": str(root / "snmf.nc")}],
        "benchmarks": [{"rule": "extract", "job": "extract/d", "path": str(bench)}],
    }


@pytest.fixture(scope="module")
def page(study, tmp_path_factory) -> Path:
    return build_report(study, tmp_path_factory.mktemp("report"))


def _img_sources(html: str) -> list[str]:
    return re.findall(r'<img[^>]*src="([^"]+)"', html) + re.findall(r"<img[^>]*src='([^']+)'", html)


def test_report_has_every_section_and_valid_embedded_images(page):
    html = page.read_text()
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html and f'href="#{sid}"' in html
    sources = _img_sources(html)
    assert len(sources) >= 10
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    pngs = sorted((page.parent / "figures").glob("*.png"))
    assert len(pngs) >= 8 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "class=\"missing\"" not in html  # every section had data


def test_user_text_is_escaped_never_markup(page):
    html = page.read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # title, model spec and the placename show as text
    assert "Evil &lt;script&gt;" in html


def test_missing_results_are_reported_not_fatal(tmp_path, study):
    partial = {"study": study["study"], "prompts": study["prompts"]}
    html = build_report(partial, tmp_path).read_text()
    assert html.count('class="missing"') >= 4 and "No SAE runs yet" in html and "No spatial results yet" in html


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (make test installs it with apt as root)")
def test_report_renders_in_headless_chromium(page, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    url = page.resolve().as_uri()
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom
    assert "<script" not in dom.lower()
    assert len(_img_sources(dom)) == len(_img_sources(page.read_text()))
