"""Assemble the study report: one self-contained HTML page (figures embedded) plus the PNG files."""

from __future__ import annotations

import base64
import html
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechflow.io import atomic_write_bytes, atomic_write_text, load_dataset
from mechflow.report import figures

CSS = """
:root { --ink:#1d2430; --muted:#5b6573; --line:#e3e7ee; --accent:#1f6feb; --bg:#f7f8fb; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink); background:var(--bg); }
nav { position: fixed; top:0; left:0; bottom:0; width: 230px; padding: 20px 16px; background:#fff; border-right:1px solid var(--line); overflow-y:auto; }
nav h1 { font-size: 15px; margin: 0 0 12px; }
nav a { display:block; color:var(--muted); text-decoration:none; padding:3px 6px; border-radius:4px; font-size:13px; }
nav a:hover { background: var(--bg); color: var(--accent); }
main { margin-left: 230px; padding: 24px 40px 80px; max-width: 1180px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding: 18px 24px; margin: 0 0 22px; }
h2 { margin-top: 0; font-size: 20px; }
h3 { font-size: 16px; margin: 22px 0 8px; }
p.caption, figcaption { color: var(--muted); font-size: 13px; }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; background:#fff; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.missing { color: #9a6700; background: #fff8c5; border: 1px solid #f0d36a; border-radius: 6px; padding: 8px 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card ol { margin: 4px 0; padding-left: 20px; font-size: 13px; }
code { background: var(--bg); padding: 1px 4px; border-radius: 4px; font-size: 12px; }
"""

SECTIONS = (("summary", "Study summary"), ("places", "Places and spatial weights"), ("moran", "Moran's I: units vs features"),
            ("maps", "Maps of the top features"), ("probes", "Location probes"), ("sae", "Sparse autoencoders"),
            ("snmf", "Semi-NMF factors"))


def esc(value: Any) -> str:
    """HTML-escape any value (user text never enters the page unescaped)."""
    return html.escape(str(value), quote=True)


class Page:
    """Collects sections and figures; figures are embedded and also written as PNG files."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.sections: dict[str, list[str]] = defaultdict(list)
        self.figures: dict[str, bytes] = {}

    def add(self, section: str, fragment: str) -> None:
        self.sections[section].append(fragment)

    def figure(self, section: str, name: str, png: bytes, caption: str) -> None:
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        while name in self.figures:
            name += "_"
        self.figures[name] = png
        data = base64.b64encode(png).decode()
        self.add(section, f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{esc(caption)}</figcaption></figure>")

    def missing(self, section: str, what: str) -> None:
        self.add(section, f'<p class="missing">{esc(what)}</p>')

    def render(self, title: str) -> str:
        nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in SECTIONS)
        body = "".join(
            f'<section id="{sid}"><h2>{esc(name)}</h2>{"".join(self.sections.get(sid, []))}</section>' for sid, name in SECTIONS
        )
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
                f"<body><nav><h1>{esc(title)}</h1>{nav}</nav><main><h1>{esc(title)}</h1>{body}</main></body></html>")


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _exists(path: Any) -> bool:
    return bool(path) and Path(path).exists()


# ---------------------------------------------------------------------------------------------


def _summary(page: Page, manifest: Mapping[str, Any]) -> None:
    study = manifest.get("study", {})
    config = study.get("config", {})
    rows = []
    for entry in manifest.get("prompts", []):
        if _exists(entry["path"]):
            ds = load_dataset(entry["path"])
            counts = pd.Series(ds["region"].values.astype(str)).value_counts().sort_index()
            rows.append((entry["dataset"], ", ".join(f"{r}: {n}" for r, n in counts.items()), int(ds.sizes["prompt"])))
    page.add("summary", "<h3>Prompt sets</h3>" + table(["dataset", "places per region", "prompts"], rows, [2]))
    models = [(name, m.get("spec", ""), "random init (control)" if m.get("random_init") else "trained", m.get("dtype", ""))
              for name, m in config.get("models", {}).items()]
    page.add("summary", "<h3>Models</h3>" + table(["model", "spec", "weights", "dtype"], models))
    ext = config.get("extract", {})
    page.add("summary", "<h3>Extraction and analyses</h3>" + table(["setting", "value"], [
        ("hooks", ", ".join(ext.get("hooks", []))), ("layers", ext.get("layers", "")), ("pooling", ext.get("pooling", "")),
        ("SAE runs", ", ".join(f"{e['run']} ({e['hook']} L{e['layer']})" for e in manifest.get("sae", [])) or "none"),
        ("semi-NMF runs", ", ".join(f"{e['run']} ({e['hook']} L{e['layer']})" for e in manifest.get("snmf", [])) or "none"),
        ("spatial weights", f"{config.get('spatial', {}).get('k', '')}-nearest neighbours, transform "
                            f"{config.get('spatial', {}).get('transform', '')}, {config.get('spatial', {}).get('permutations', '')} permutations"),
        ("config digest", study.get("config_digest", "")),
    ]))
    versions = study.get("versions", {})
    if versions:
        page.add("summary", "<h3>Versions</h3>" + table(["package", "version"], sorted(versions.items())))
    bench = defaultdict(float)
    jobs = defaultdict(int)
    for b in manifest.get("benchmarks", []):
        try:
            df = pd.read_csv(b["path"], sep="\t")
            bench[b["rule"]] += float(df["s"].mean())
            jobs[b["rule"]] += 1
        except (OSError, KeyError, ValueError, pd.errors.ParserError):
            continue
    if bench:
        rules = sorted(bench, key=bench.get, reverse=True)
        page.add("summary", "<h3>Runtime per rule</h3>" + table(
            ["rule", "jobs", "wall time (s)"], [(r, jobs[r], f"{bench[r]:.1f}") for r in rules], [1, 2]))
        page.figure("summary", "runtime", figures.runtime_bars(rules, [bench[r] for r in rules]),
                    "Wall time per rule, summed over its jobs (from Snakemake's benchmark files).")
    else:
        page.missing("summary", "No benchmark files found: runtimes appear after a Snakemake run.")


def _places(page: Page, manifest: Mapping[str, Any], crs_of) -> dict:
    """Maps of places and KNN graphs per dataset and region; returns projected coordinates per (dataset, region)."""
    from mechflow.spatial import knn_weights

    k = int(manifest.get("study", {}).get("config", {}).get("spatial", {}).get("k", 8))
    geo: dict = {}
    for entry in manifest.get("prompts", []):
        if not _exists(entry["path"]):
            page.missing("places", f"prompt set {entry['dataset']} is not available")
            continue
        ds = load_dataset(entry["path"])
        regions = ds["region"].values.astype(str)
        for region in sorted(set(regions)):
            idx = np.flatnonzero(regions == region)
            crs = crs_of(region)
            lon, lat = ds["longitude"].values[idx], ds["latitude"].values[idx]
            if crs is None or idx.size <= k:
                page.missing("places", f"{entry['dataset']} / {region}: no CRS or too few places for {k} neighbours")
                continue
            w = knn_weights(lon, lat, k=k, crs=crs)
            nb = np.array([w.neighbors[i] for i in range(idx.size)])
            geo[(entry["dataset"], region)] = (idx, w.xy)
            page.figure("places", f"places_{entry['dataset']}_{region}", figures.places_map(w.xy, nb, region, crs),
                        f"{entry['dataset']} / {region}: {idx.size} places ({getattr(w, 'n_duplicates', 0)} duplicate "
                        f"coordinates) and the {k}-nearest-neighbour graph used for every spatial statistic.")
    return geo


def _significant(ds, region: str) -> tuple[float, int]:
    """Fraction (and count) of non-constant features with q_bh < 0.05 and I > E[I] in a region."""
    sub = ds.sel(region=region)
    I, q = sub["I"].values, sub["q_bh"].values
    ok = np.isfinite(I)
    if not ok.any():
        return float("nan"), 0
    sig = ok & (q < 0.05) & (I > sub["EI"].values)
    return float(sig.sum() / ok.sum()), int(sig.sum())


def _moran(page: Page, manifest: Mapping[str, Any]) -> dict:
    spatial = [e for e in manifest.get("spatial", []) if _exists(e["moran"])]
    if not spatial:
        page.missing("moran", "No spatial results yet (enable spatial in the config).")
        return {}
    loaded = {id(e): load_dataset(e["moran"]) for e in spatial}
    page.add("moran", "<p class='caption'>Global Moran's I of every raw unit, SAE feature and semi-NMF factor, per region, "
                      "on k-nearest-neighbour weights. <b>Significant</b> = Benjamini–Hochberg q &lt; 0.05 over the features "
                      "of a region (from permutation p-values) and I above its expectation. Controls: the same units with "
                      "coordinates shuffled within each region, and a model of the same architecture with random weights.</p>")
    rows = []
    by_layer = defaultdict(list)
    for e in spatial:
        by_layer[(e["dataset"], e["hook"], int(e["layer"]))].append(e)
    for (dataset, hook, layer), entries in sorted(by_layer.items()):
        regions = sorted({str(r) for e in entries for r in loaded[id(e)]["region"].values})
        for region in regions:
            groups = {}
            for e in entries:
                ds = loaded[id(e)]
                if region not in ds["region"].values:
                    continue
                label = f"{e['kind']} {e['model']}" + (f" {e['run']}" if e.get("run") else "")
                random_model = "random" in e["model"]
                key = ("random " + label) if random_model and e["kind"] == "units" else label
                groups[key] = ds["I"].sel(region=region).values
                if e["kind"] == "units" and "I_shuffled" in ds and not random_model:
                    groups[f"shuffled {e['model']} (control)"] = ds["I_shuffled"].sel(region=region).values
                frac, count = _significant(ds, region)
                I = ds["I"].sel(region=region).values
                top = np.argsort(-np.where(np.isfinite(I), I, -np.inf))[:5]
                fdim = [d for d in ds["I"].dims if d != "region"][0]
                ids = ds[fdim].values[top]
                rows.append((dataset, region, hook, layer, e["model"], e["kind"] + (f" {e['run']}" if e.get("run") else ""),
                             int(np.isfinite(I).sum()), f"{100 * frac:.1f}%" if np.isfinite(frac) else "–",
                             _fmt(float(np.nanmedian(I)) if np.isfinite(I).any() else np.nan),
                             ", ".join(f"{i} ({I[t]:.2f})" for i, t in zip(ids, top))))
            page.figure("moran", f"moran_{dataset}_{hook}_L{layer}_{region}",
                        figures.moran_distributions(groups, f"{dataset} / {region} / {hook} layer {layer}"),
                        f"Distribution of Moran's I in {region}, {hook} layer {layer}: raw units vs SAE features vs "
                        f"semi-NMF factors, with the controls.")
    page.add("moran", "<h3>Significant positive autocorrelation (q &lt; 0.05) and top features by I</h3>" + table(
        ["dataset", "region", "hook", "layer", "model", "features", "n (non-constant)", "significant", "median I",
         "top 5 by I (id (I))"], rows, [3, 6, 7, 8]))
    return loaded


def _top_maps(page: Page, manifest: Mapping[str, Any], geo: dict, top_n: int) -> None:
    from mechflow.analysis import load_feature_set

    spatial = [e for e in manifest.get("spatial", []) if _exists(e["moran"])]
    focus = {(e["dataset"], e["model"], e["hook"], int(e["layer"])) for e in spatial if e["kind"] in ("sae", "snmf")}
    if not focus:  # no decompositions: the units of each model's middle analysed layer
        layers = sorted({int(e["layer"]) for e in spatial})
        mid = layers[len(layers) // 2] if layers else None
        focus = {(e["dataset"], e["model"], e["hook"], mid) for e in spatial}
    chosen = [e for e in spatial if (e["dataset"], e["model"], e["hook"], int(e["layer"])) in focus]
    if not chosen:
        page.missing("maps", "No spatial results to map yet.")
        return
    page.add("maps", f"<p class='caption'>For the {top_n} features with the largest Moran's I in each region: activation "
                     "per place (diverging colours centred on the median) and the LISA cluster map (HH red, HL orange, "
                     "LH light blue, LL blue, not significant grey).</p>")
    for e in chosen:
        kind = e["kind"]
        path = {"units": next((a["path"] for a in manifest.get("activations", []) if (a["dataset"], a["model"], a["hook"]) ==
                               (e["dataset"], e["model"], e["hook"])), None)}.get(kind)
        if kind == "sae":
            path = str(Path(next((s["dir"] for s in manifest.get("sae", []) if s["run"] == e["run"] and s["dataset"] == e["dataset"]
                                  and s["model"] == e["model"] and int(s["layer"]) == int(e["layer"])), "")) / "features.nc")
        elif kind == "snmf":
            path = next((s["path"] for s in manifest.get("snmf", []) if s["run"] == e["run"] and s["dataset"] == e["dataset"]
                         and s["model"] == e["model"] and int(s["layer"]) == int(e["layer"])), None)
        if not _exists(path):
            continue
        values = load_feature_set(path, kind, int(e["layer"]))
        fdim = values.dims[1]
        moran = load_dataset(e["moran"])
        lisa = load_dataset(e["lisa"]) if _exists(e.get("lisa")) else None
        label = f"{e['model']} {e['hook']} L{e['layer']} {kind}" + (f" {e['run']}" if e.get("run") else "")
        page.add("maps", f"<h3>{esc(e['dataset'])}: {esc(label)}</h3>")
        for region in [str(r) for r in moran["region"].values]:
            if (e["dataset"], region) not in geo:
                continue
            idx, xy = geo[(e["dataset"], region)]
            I = moran["I"].sel(region=region).values
            top = np.argsort(-np.where(np.isfinite(I), I, -np.inf))[:top_n]
            top = [t for t in top if np.isfinite(I[t])]
            panels = []
            for t in top:
                fid = moran[fdim].values[t]
                p = {"title": f"{region} {fdim} {fid}: I = {I[t]:.3f}", "values": values.isel({fdim: t}).values[idx],
                     "q": None, "p": None}
                if lisa is not None and fdim in lisa.dims and fid in lisa[fdim].values and region in lisa["region"].values:
                    sub = lisa.sel(region=region, **{fdim: fid})
                    if bool(lisa["selected"].sel(region=region, **{fdim: fid})):
                        p["q"], p["p"] = sub["q"].values[idx], sub["p_sim"].values[idx]
                panels.append(p)
            if panels:
                page.figure("maps", f"map_{e['dataset']}_{label}_{region}", figures.feature_maps(xy, panels),
                            f"{e['dataset']} / {region}: top {len(panels)} {fdim}s of {label} by Moran's I.")


def _probes(page: Page, manifest: Mapping[str, Any]) -> None:
    entries = [e for e in manifest.get("probes", []) if _exists(e["path"])]
    if not entries:
        page.missing("probes", "No probe results yet (enable probes in the config).")
        return
    page.add("probes", "<p class='caption'>Ridge regression from each layer's pooled activations to projected x/y; "
                       "out-of-fold R² and median great-circle error. Random folds vs spatially blocked folds: a gap between "
                       "them is spatial leakage (nearby places in training and test).</p>")
    by_dataset = defaultdict(list)
    for e in entries:
        by_dataset[(e["dataset"], e["hook"])].append(e)
    for (dataset, hook), group in sorted(by_dataset.items()):
        loaded = [(e["model"], load_dataset(e["path"])) for e in group]
        regions = sorted({str(r) for _, ds in loaded for r in ds["region"].values})
        for region in regions:
            series = {}
            rows = []
            for model, ds in loaded:
                if region not in ds["region"].values:
                    continue
                sub = ds.sel(region=region)
                for scheme in sub["scheme"].values:
                    s = sub.sel(scheme=scheme)
                    series[f"{model} {scheme}"] = {"layer": s["layer"].values, "r2": s["r2_xy"].values, "km": s["median_km"].values}
                    best = int(np.nanargmax(s["r2_xy"].values))
                    rows.append((model, str(scheme), int(s["layer"].values[best]), _fmt(float(s["r2_xy"].values[best])),
                                 _fmt(float(s["median_km"].values[best]), 1)))
            page.figure("probes", f"probes_{dataset}_{hook}_{region}", figures.probe_curves(None, series, region),
                        f"{dataset} / {region} / {hook}: probe R² and median error by layer (solid: random folds, dashed: spatial folds).")
            page.add("probes", table(["model", "folds", "best layer", "R² (x/y)", "median error (km)"], rows, [2, 3, 4]))


def _feature_card(title: str, texts: list[str], vals: list[float], hist_png: bytes) -> str:
    items = "".join(f"<li>{esc(t)} <span style='color:#5b6573'>({v:.3g})</span></li>" for t, v in zip(texts, vals))
    data = base64.b64encode(hist_png).decode()
    return (f"<div class='card'><b>{esc(title)}</b><ol>{items}</ol>"
            f"<img alt='activation histogram' src='data:image/png;base64,{data}'></div>")


def _sae(page: Page, manifest: Mapping[str, Any], moran: dict, top_n: int) -> None:
    entries = [e for e in manifest.get("sae", []) if _exists(Path(e["dir"]) / "training.nc")]
    if not entries:
        page.missing("sae", "No SAE runs yet (add sae.runs to the config).")
        return
    for e in entries:
        d = Path(e["dir"])
        cfg = json.loads((d / "cfg.json").read_text()) if (d / "cfg.json").exists() else {}
        hist = load_dataset(d / "training.nc")
        metrics = {v: hist[v].values for v in ("loss", "fvu", "l0", "dead_fraction") if v in hist}
        title = f"{e['dataset']} / {e['model']} / {e['hook']} layer {e['layer']} / {e['run']}"
        page.add("sae", f"<h3>{esc(title)}</h3>")
        final = {k: _fmt(float(v[-1]), 4) for k, v in metrics.items() if len(v)}
        page.add("sae", table(["architecture", "d_sae", "k", "final loss", "final FVU", "final L0", "dead fraction"], [(
            cfg.get("architecture", ""), cfg.get("d_sae", ""), cfg.get("k", cfg.get("activation_fn_kwargs", {}).get("k", "")),
            final.get("loss", "–"), final.get("fvu", "–"), final.get("l0", "–"), final.get("dead_fraction", "–"))]))
        page.figure("sae", f"sae_training_{title}", figures.training_curves(hist["step"].values, metrics, title),
                    f"Training curves of {title}: loss, fraction of variance unexplained, L0 and dead fraction.")
        feats = load_dataset(d / "features.nc")["features"]
        m = next((load_dataset(s["moran"]) for s in manifest.get("spatial", []) if s["kind"] == "sae" and s["run"] == e["run"]
                  and s["dataset"] == e["dataset"] and s["model"] == e["model"] and int(s["layer"]) == int(e["layer"])
                  and _exists(s["moran"])), None)
        if m is not None:
            best = m["I"].max("region").values
            top = [int(t) for t in np.argsort(-np.where(np.isfinite(best), best, -np.inf))[:top_n] if np.isfinite(best[t])]
            why = "largest Moran's I in any region"
        else:
            top = [int(t) for t in np.argsort(-(feats.values > 0).mean(0))[:top_n]]
            why = "most frequently active"
        cards = []
        texts = feats["text"].values.astype(str)
        for t in top:
            col = feats.isel(feature=t).values
            order = np.argsort(-col)[:8]
            ttl = f"feature {int(feats['feature'].values[t])}" + (f": max I = {best[t]:.3f}" if m is not None else "")
            cards.append(_feature_card(ttl, [texts[i] for i in order], [float(col[i]) for i in order],
                                       figures.histogram(col, f"feature {int(feats['feature'].values[t])}, "
                                                              f"active on {100 * (col > 0).mean():.1f}% of prompts")))
        page.add("sae", f"<p class='caption'>Feature cards: the {len(top)} features with the {why}: their top prompts "
                        f"and activation histogram (maps in the section above).</p><div class='cards'>{''.join(cards)}</div>")


def _snmf(page: Page, manifest: Mapping[str, Any], top_n: int) -> None:
    entries = [e for e in manifest.get("snmf", []) if _exists(e["path"])]
    if not entries:
        page.missing("snmf", "No semi-NMF runs yet (add snmf.runs to the config).")
        return
    for e in entries:
        ds = load_dataset(e["path"])
        title = f"{e['dataset']} / {e['model']} / {e['hook']} layer {e['layer']} / {e['run']}"
        page.add("snmf", f"<h3>{esc(title)}</h3><p class='caption'>{int(ds.sizes['factor'])} factors, final relative loss "
                         f"{_fmt(float(ds['loss'].values[-1]), 4)} after {int(ds.sizes['iteration']) - 1} iterations.</p>")
        m = next((load_dataset(s["moran"]) for s in manifest.get("spatial", []) if s["kind"] == "snmf" and s["run"] == e["run"]
                  and s["dataset"] == e["dataset"] and s["model"] == e["model"] and int(s["layer"]) == int(e["layer"])
                  and _exists(s["moran"])), None)
        K = int(ds.sizes["factor"])
        if m is not None:
            best = m["I"].max("region").values
            order = [int(t) for t in np.argsort(-np.where(np.isfinite(best), best, -np.inf))[: max(top_n * 2, 6)]]
        else:
            order = list(range(min(K, max(top_n * 2, 6))))
        rows = []
        for f in order:
            texts = ds["top_text"].sel(factor=f).values.astype(str)[:5] if "top_text" in ds else []
            moran_txt = ", ".join(f"{r}: {float(m['I'].sel(region=r, factor=f)):.3f}" for r in m["region"].values) if m is not None else "–"
            rows.append((f, moran_txt, "; ".join(texts)))
        page.add("snmf", table(["factor", "Moran's I per region", "top prompts"], rows, [0]))


def build_report(manifest: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/figures/*.png``; return the HTML path.

    ``manifest`` lists the study's files (see the report rule); every section is optional and the
    page says what is not available.
    """
    from mechflow.data.regions import region_crs

    t0 = time.time()
    out_dir = Path(out_dir)
    study = manifest.get("study", {})
    top_n = int(study.get("top_n", study.get("config", {}).get("report", {}).get("top_n", 4)))
    overrides = study.get("config", {}).get("spatial", {}).get("crs", {}) or {}

    def crs_of(region: str) -> str | None:
        try:
            return region_crs(region, overrides)
        except ValueError:
            return None

    page = Page(out_dir)
    _summary(page, manifest)
    geo = _places(page, manifest, crs_of)
    moran = _moran(page, manifest)
    _top_maps(page, manifest, geo, top_n)
    _probes(page, manifest)
    _sae(page, manifest, moran, top_n)
    _snmf(page, manifest, top_n)
    page.add("summary", f"<p class='caption'>Report built in {time.time() - t0:.1f} s.</p>")
    for name, png in page.figures.items():
        atomic_write_bytes(out_dir / "figures" / f"{name}.png", png)
    html_path = out_dir / "index.html"
    atomic_write_text(html_path, page.render(str(study.get("title", "mechflow study"))))
    return html_path
