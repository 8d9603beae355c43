"""The HTML report: a small synthetic study with every kind of result; sections, embedded images,
escaping of user text, missing inputs, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mechflow.io import write_dataarray, write_dataset
from mechflow.report import build_report
from mechflow.spatial.analysis import spatial_analysis

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
SECTION_IDS = ["summary", "runtime", "config", "moran", "regions", "probes", "sae", "snmf"]
BOXES = {"GB": (-4.0, 0.5, 50.5, 55.0), "IT": (8.0, 16.0, 38.0, 45.5), "NYMETRO": (-75.0, -73.0, 40.0, 41.5)}
CRS = {"GB": "EPSG:27700", "IT": "EPSG:25832", "NYMETRO": "EPSG:32618"}


def make_study(root: Path, n_per: int = 40, layers=(0, 1, 2), units: int = 12, n_features: int = 16,
               n_factors: int = 4, permutations: int = 19, evil: bool = True, control_model: bool = True,
               regions=("GB", "NYMETRO")) -> dict:
    """Write a synthetic study (prompts, activations, spatial, probes, SAE, semi-NMF, benchmarks) under
    ``root``; return its report manifest. Unit 0 and feature 0 follow latitude (spatially smooth)."""
    rng = np.random.default_rng(0)
    regions = list(regions)
    lon = np.concatenate([rng.uniform(*BOXES[r][:2], n_per) for r in regions])
    lat = np.concatenate([rng.uniform(*BOXES[r][2:], n_per) for r in regions])
    region = np.repeat(regions, n_per)
    n = lon.size
    text = np.array([f"Place {i}, Shire" for i in range(n)], dtype=object)
    if evil:
        text[int(np.argmax(lat))] = f"Evil {EVIL} town"  # the top prompt of feature 0 and factor 0
        text[5] = "Cost $5 and $x^2$ {braces} town"  # mathtext must not parse placenames
    coords = {"prompt": np.arange(n), "text": ("prompt", text.astype(str)), "latitude": ("prompt", lat),
              "longitude": ("prompt", lon), "region": ("prompt", region), "place_id": ("prompt", np.arange(n))}
    write_dataset(xr.Dataset(coords=coords), root / "prompts.nc")
    models = ["m", "m-random"] if control_model else ["m"]
    params = dict(k=5, transform="r", permutations=permutations, seed=0, crs={}, lisa_top_n=2, shuffled_control=True)
    manifest: dict = {"prompts": [{"dataset": "d", "path": str(root / "prompts.nc")}], "activations": [], "spatial": [],
                      "probes": [], "sae": [], "snmf": [], "benchmarks": []}
    smooth = (lat - lat.mean()) / lat.std()
    for model in models:
        acts = rng.normal(size=(n, len(layers), units)).astype(np.float32)
        if model == "m":
            acts[:, :, 0] += 2 * smooth[:, None]
        act = xr.DataArray(acts, dims=("prompt", "layer", "unit"), name="activations",
                           coords={**coords, "layer": list(layers), "unit": np.arange(units)},
                           attrs={"model": model, "hook": "resid"})
        write_dataarray(act, root / f"act_{model}.nc")
        manifest["activations"].append({"dataset": "d", "model": model, "hook": "resid", "path": str(root / f"act_{model}.nc")})
        for layer in layers:
            d = root / f"spatial_{model}_units_{layer}"
            moran, lisa = spatial_analysis(act.sel(layer=layer, drop=True), params)
            write_dataset(moran, d / "moran.nc")
            write_dataset(lisa, d / "lisa.nc")
            manifest["spatial"].append({"dataset": "d", "model": model, "hook": "resid", "layer": layer, "kind": "units",
                                        "run": None, "moran": str(d / "moran.nc"), "lisa": str(d / "lisa.nc")})
        from mechflow.probes import probe_dataset

        probes = probe_dataset(act, lon, lat, region, CRS, n_folds=3)
        write_dataset(probes, root / f"probes_{model}.nc")
        manifest["probes"].append({"dataset": "d", "model": model, "hook": "resid", "path": str(root / f"probes_{model}.nc")})
    layer = layers[len(layers) // 2]
    run = f"topk{EVIL}" if evil else "topk"
    feats = np.maximum(rng.normal(size=(n, n_features)) - 0.5, 0)
    feats[:, 0] = np.maximum(smooth, 0) * 3
    feats[region == "GB", 1] = 0  # silent in one region: its map says so
    fa = xr.DataArray(feats.astype(np.float32), dims=("prompt", "feature"), name="features",
                      coords={**coords, "feature": np.arange(n_features)})
    sae_dir = root / "sae"
    write_dataarray(fa, sae_dir / "features.nc")
    steps = np.arange(10, 110, 10)
    write_dataset(xr.Dataset({"loss": ("step", 1 / steps), "fvu": ("step", 0.5 / np.sqrt(steps)),
                              "l0": ("step", np.full(steps.size, 4.0)), "dead_fraction": ("step", np.linspace(0.3, 0.05, steps.size)),
                              "lr": ("step", np.full(steps.size, 1e-3))}, coords={"step": steps}), sae_dir / "training.nc")
    (sae_dir / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_in": units, "d_sae": n_features,
                                                  "mechflow": {"run": {"arch": "topk", "k": 4}}}))
    manifest["sae"].append({"dataset": "d", "model": "m", "hook": "resid", "layer": layer, "run": run, "dir": str(sae_dir)})
    G = np.abs(rng.normal(size=(n, n_factors)))
    G[:, 0] += np.maximum(smooth, 0)
    G /= np.linalg.norm(G, axis=0)
    F = rng.normal(size=(units, n_factors)) * (rng.uniform(size=(units, n_factors)) < 0.3)
    snmf = xr.Dataset({"F": (("unit", "factor"), F), "G": (("prompt", "factor"), G), "loss": ("iteration", [1.0, 0.5, 0.4])},
                      coords={**coords, "unit": np.arange(units), "factor": np.arange(n_factors), "iteration": np.arange(3)},
                      attrs={"sparsity": 0.3, "level": "prompt", "stop_reason": "tol"})
    write_dataset(snmf, root / "snmf.nc")
    manifest["snmf"].append({"dataset": "d", "model": "m", "hook": "resid", "layer": layer, "run": "k4", "path": str(root / "snmf.nc")})
    for kind, values, r in (("sae", fa, run), ("snmf", snmf["G"], "k4")):
        d = root / f"spatial_{kind}"
        moran, lisa = spatial_analysis(values, params)
        write_dataset(moran, d / "moran.nc")
        write_dataset(lisa, d / "lisa.nc")
        manifest["spatial"].append({"dataset": "d", "model": "m", "hook": "resid", "layer": layer, "kind": kind, "run": r,
                                    "moran": str(d / "moran.nc"), "lisa": str(d / "lisa.nc")})
    for rule, s in (("extract", 12.5), ("spatial", 3.25), ("sae", 40.0)):
        p = root / f"bench_{rule}.tsv"
        p.write_text(f"s\th:m:s\tmax_rss\tmax_vms\n{s}\t0:00:{int(s):02d}\t{100 + s:.1f}\t-\n")
        manifest["benchmarks"].append({"rule": rule, "job": f"{rule}/d", "path": str(p)})
    config = {"models": {"m": {"spec": f"package:x/{EVIL}" if evil else "package:x/m"}},
              "spatial": {"k": 5}, "report": {"top_n": 2}}
    if control_model:
        config["models"]["m-random"] = {"spec": "package:x/m", "random_init": True}
    manifest["study"] = {"title": f"Study {EVIL}" if evil else "Study", "config": config, "config_digest": "abc123",
                         "versions": {"mechflow": "0.1.0", "numpy": np.__version__}, "top_n": 2}
    return manifest


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def page(study, tmp_path_factory) -> Path:
    return build_report(study, tmp_path_factory.mktemp("report"))


def _img_sources(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)


def _section_ids(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def _check_images(html: str, base: Path) -> int:
    from PIL import Image

    sources = _img_sources(html)
    for src in sources:
        if src.startswith("data:"):
            assert src.startswith("data:image/png;base64,"), src[:40]
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
        else:
            data = (base / src).read_bytes()
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 50
        img.verify()
    return len(sources)


def test_page_has_every_section_valid_images_and_no_errors(page):
    html = page.read_text(encoding="utf-8")
    ids = _section_ids(html)
    for sid in SECTION_IDS:
        assert sid in ids, f"section {sid} missing"
        assert f'href="#{sid}"' in html  # listed in the table of contents
    assert len(ids) == len(set(ids))
    assert "note note-error" not in html, re.findall(r'note-error">([^<]*)', html)
    n_img = _check_images(html, page.parent)
    pngs = sorted((page.parent / "figures").glob("*.png"))
    assert n_img >= 15 and len(pngs) == n_img  # every embedded figure is also a file
    assert page.stat().st_size < 15e6
    # the central comparison and its controls are all there
    for text in ("units", "SAE", "semi-NMF", "random-init m-random", "shuffled", "feature 0", "Low-Low"):
        assert text in html, text
    assert html.count('class="card"') == 2  # top_n feature cards


def test_user_text_is_escaped_never_markup(page):
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert ESCAPED in html  # title, model spec, run name and the placename show as text
    assert f"Evil {ESCAPED} town" in html  # the placename (a top prompt of a feature card or factor)
    assert f"<title>Study {ESCAPED}</title>" in html


def test_missing_results_are_said_not_fatal(study, tmp_path):
    partial = {"study": study["study"], "prompts": study["prompts"],
               "sae": [{**study["sae"][0], "dir": str(tmp_path / "nowhere")}]}
    html = build_report(partial, tmp_path / "r").read_text(encoding="utf-8")
    assert "note note-error" not in html
    assert "No spatial results in this study" in html and "No probe results in this study" in html
    assert "None of the listed SAE runs is available yet" in html and "No semi-NMF runs in this study" in html
    assert 'id="missing"' in html and str(tmp_path / "nowhere") in html
    assert _check_images(html, tmp_path / "r") >= 1  # the places map still renders

    empty = build_report({}, tmp_path / "e").read_text(encoding="utf-8")
    assert "note note-error" not in empty and "No prompt set is available" in empty
    assert set(SECTION_IDS) - {"runtime", "config"} <= set(_section_ids(empty)) | {"runtime", "config"}


def test_rebuild_replaces_figures_and_rejects_bad_manifests(study, tmp_path):
    out = tmp_path / "r"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "stale.png").write_bytes(b"old")
    only = {"study": study["study"], "prompts": study["prompts"]}
    build_report(only, out)
    assert not (out / "figures" / "stale.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    with pytest.raises(ValueError, match="unknown manifest section"):
        build_report({"spatail": []}, tmp_path / "x")
    with pytest.raises(ValueError, match="list of entries"):
        build_report({"spatial": {"moran": "x"}}, tmp_path / "x")


def test_significance_and_top_features_are_vectorised_right():
    from mechflow.report.stats import (
        q_source,
        region_summary,
        significant_positive,
        significant_positive_control,
        top_features,
    )

    ds = xr.Dataset({"I": (("region", "unit"), [[0.5, 0.1, -0.2, np.nan]]),
                     "EI": (("region", "unit"), [[-0.01] * 4]),
                     "q_greater": (("region", "unit"), [[0.01, 0.2, 0.01, np.nan]]),
                     "q_bh": (("region", "unit"), [[0.9, 0.01, 0.9, np.nan]]),  # older folded q: ignored
                     "I_shuffled": (("region", "unit"), [[0.0, 0.02, 0.01, np.nan]]),
                     "q_greater_shuffled": (("region", "unit"), [[0.5, 0.01, 0.9, np.nan]])},
                    coords={"region": ["GB"], "unit": [7, 8, 9, 10]}, attrs={"permutations": 99})
    assert significant_positive(ds).values.tolist() == [[True, False, False, False]]  # unit 9: negative I
    assert q_source(ds) == "q_greater"
    s = region_summary(ds, "GB", top_n=2)
    assert s["n_valid"] == 3 and s["frac_sig"] == pytest.approx(1 / 3) and s["frac_sig_control"] == pytest.approx(1 / 3)
    assert [t[0] for t in s["top"]] == [7, 8] and top_features(ds, 5) == [7, 8, 9]
    # an older file (folded q_bh, analytically tested control): read and named as such, control not compared
    old = ds.drop_vars(["q_greater", "q_greater_shuffled"]).assign(
        q_bh_norm_shuffled=ds["q_greater_shuffled"])
    assert q_source(old) == "q_bh (folded p_sim)" and significant_positive_control(old) is None
    assert np.isnan(region_summary(old, "GB")["frac_sig_control"])


def test_maps_handle_odd_placenames_and_tiny_regions():
    from mechflow.report.maps import overview_figure, region_geometry

    lon, lat = np.array([-1.0, -1.1, -0.9, -1.05]), np.array([52.0, 52.1, 52.05, 51.9])
    geom = region_geometry(lon, lat, np.arange(4), "GB", "EPSG:27700", k=8)
    assert geom.k == 3 and geom.xy.shape == (4, 2) and geom.neighbors.shape == (4, 3)
    png, edges = overview_figure(geom, ["$x^2$ {a}, b", "50$", "a_b^c", "<b>x</b>"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and edges >= 3
    fallback = region_geometry(lon, lat, np.arange(4), "XX", None, k=2)  # no CRS: cos(lat)-scaled degrees, metres
    assert fallback.crs is None and np.ptp(fallback.xy[:, 1]) == pytest.approx(0.2 * np.pi / 180 * 6_371_008.8)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium; "
                                              "make test installs it where apt is available)")
def test_page_renders_in_headless_chromium(page, tmp_path):
    from PIL import Image

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = page.resolve().as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   capture_output=True, timeout=120, check=True)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    assert len(img.getcolors(1 << 20) or []) > 200  # text, tiles and a figure, not a blank page
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert set(SECTION_IDS) <= set(_section_ids(dom))
    assert "<script" not in dom.lower() and ESCAPED in dom
    assert _img_sources(dom) == _img_sources(page.read_text(encoding="utf-8"))
