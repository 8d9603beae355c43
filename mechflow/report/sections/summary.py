"""Study summary: key numbers, prompt sets, models, runs, runtime per rule, config digest and versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mechflow.io import open_dataset
from mechflow.report.figures import runtime_figure
from mechflow.report.html import Markup, Page, Section, fmt, note, table, tag
from mechflow.report.loaders import read_benchmark
from mechflow.report.sections.context import Context
from mechflow.report.sections.sae import sae_cfg


def _tile(value, key) -> Markup:
    return tag("div", tag("div", value, cls="v"), tag("div", key, cls="k"), cls="tile")


def _layers_of(ctx: Context, entry) -> list[int]:
    """Layers held by an activations file (read from its coordinate, lazily)."""
    if not ctx.study.exists("activations", entry.get("path")):
        return []
    with open_dataset(ctx.study.path(entry["path"])) as ds:
        return [int(v) for v in ds["layer"].values] if "layer" in ds.coords else []


def _compact(layers: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> '0–3, 7'."""
    if not layers:
        return "–"
    out, start, prev = [], layers[0], layers[0]
    for v in [*layers[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}–{prev}" if prev - start >= 2 else ", ".join(str(x) for x in range(start, prev + 1)))
        if v is not None:
            start = prev = v
    return ", ".join(out)


def benchmarks_per_rule(ctx: Context) -> pd.DataFrame | None:
    """Rows per rule: jobs, total_s (mean over repeats, summed over jobs), max_s, peak_rss_mb."""
    rows = []
    for b in ctx.study.entries["benchmarks"]:
        if not ctx.study.exists("benchmarks", b.get("path")):
            continue
        df = read_benchmark(ctx.study.path(b["path"]))
        rows.append({"rule": str(b.get("rule") or Path(b["path"]).stem), "s": float(df["s"].mean()),
                     "rss": float(df["max_rss"].max()) if "max_rss" in df and df["max_rss"].notna().any() else np.nan})
    if not rows:
        return None
    df = pd.DataFrame(rows)
    return (df.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), max_s=("s", "max"), peak_rss_mb=("rss", "max"))
            .reset_index().sort_values("total_s", ascending=False))


def build(ctx: Context, page: Page, sec: Section) -> None:
    study = ctx.study
    cfg = study.config
    # ---- prompt sets ---------------------------------------------------------------------
    region_rows, n_places, n_regions = [], 0, 0
    for d in study.datasets:
        t = study.prompts(d)
        if t is None:
            continue
        counts = t["region"].value_counts().sort_index()
        n_places += len(t)
        n_regions += len(counts)
        for r, n in counts.items():
            crs = study.crs_of(ctx.crs_source(d), r)
            region_rows.append((d, r, fmt(int(n)), crs or "lon/lat scaled by cos(latitude)"))
    # ---- models and hooks ----------------------------------------------------------------
    models = cfg.get("models") or {}
    act_rows = []
    for e in study.entries["activations"]:
        layers = _layers_of(ctx, e)
        m = str(e.get("model"))
        spec = (models.get(m) or {}).get("spec", "")
        act_rows.append((m, "random init (control)" if study.is_control_model(m) else "trained", spec,
                         e.get("hook", ""), _compact(layers) if layers else "not available"))
    spatial_layers = sorted({int(e["layer"]) for e in study.entries["spatial"] if e.get("layer") is not None})
    sae, snmf = study.entries["sae"], study.entries["snmf"]
    bench = None
    try:
        bench = benchmarks_per_rule(ctx)
    except (OSError, ValueError) as err:
        sec.add(note(f"Benchmark files could not be read: {err}", "error"))
    tiles = [
        _tile(fmt(n_places) if n_places else "–", "places"),
        _tile(n_regions or "–", "regions"),
        _tile(len({str(e.get('model')) for e in study.entries['activations']} | set(models)) or "–", "models"),
        _tile(_compact(spatial_layers), "layers analysed"),
        _tile(len(study.entries["spatial"]), "feature sets analysed"),
        _tile(len(sae), "SAE runs"),
        _tile(len(snmf), "semi-NMF runs"),
        _tile(f"{bench['total_s'].sum() / 60:.1f} min" if bench is not None else "–", "compute time"),
    ]
    sec.add(tag("div", *tiles, cls="tiles"))
    sec.add(tag("p", "Per region: places, the spatial weights graph and maps of the features with the largest "
                     "Moran's I. The central comparison, the distribution of Moran's I of raw units against SAE "
                     "features and semi-NMF factors, is in ", tag("a", "Spatial autocorrelation", href="#moran"), "."))
    if region_rows:
        sec.add(tag("h4", "Prompt sets"), table(["dataset", "region", "places", "map projection"], region_rows, numeric=[2]))
    else:
        sec.add(note("No prompt set is available: maps and region counts are missing."))
    if act_rows:
        sec.add(tag("h4", "Models and activations"),
                table(["model", "weights", "spec", "hook", "layers extracted"], act_rows))
    elif models:
        sec.add(tag("h4", "Models"), table(["model", "weights", "spec"],
                                            [(m, "random init (control)" if study.is_control_model(m) else "trained",
                                              (s or {}).get("spec", "")) for m, s in models.items()]))
        sec.add(note("No activation files are available yet."))
    run_rows = []
    for e in sae:
        c = sae_cfg(ctx, e)
        arch = c.get("architecture") or (c.get("mechflow") or {}).get("arch", "")
        k = c.get("k") or (c.get("activation_fn_kwargs") or {}).get("k") or ((c.get("mechflow") or {}).get("run") or {}).get("k", "")
        run_rows.append(("SAE", e.get("run"), ctx.entry_title(e), f"{arch}, {c.get('d_sae', '?')} features" + (f", k = {k}" if k else "")))
    for e in snmf:
        ds = study.dataset(e["path"]) if study.exists("snmf", e.get("path")) else None
        desc = "not available" if ds is None else (
            f"{ds.sizes.get('factor', '?')} factors, sparsity {ds.attrs.get('sparsity', '?')}, "
            f"{ds.attrs.get('level', 'prompt')} level")
        run_rows.append(("semi-NMF", e.get("run"), ctx.entry_title(e), desc))
    sec.add(tag("h4", "Decomposition runs"))
    sec.add(table(["method", "run", "model / hook / layer", "settings"], run_rows) if run_rows
            else note("No SAE or semi-NMF runs in this study."))
    # ---- runtime -------------------------------------------------------------------------
    rt = page.section("Runtime per rule", "runtime", level=3)
    if bench is None:
        rt.add(note("No benchmark files: runtimes appear after a Snakemake run (each rule's benchmark: file)."))
    else:
        rt.add(page.figure(runtime_figure(bench), Markup(
            f"Wall time of each rule summed over its {int(bench['jobs'].sum())} jobs, from Snakemake's "
            "<code>benchmark:</code> files (mean over repeats). The longest bar is where a bigger study spends its time."),
            "runtime", "runtime per rule"))
        rt.add(table(["rule", "jobs", "total (s)", "longest job (s)", "peak RSS (MB)"],
                     [(r.rule, r.jobs, f"{r.total_s:,.1f}", f"{r.max_s:,.1f}", fmt(r.peak_rss_mb, 4))
                      for r in bench.itertuples()], numeric=[1, 2, 3, 4]))
    # ---- provenance ----------------------------------------------------------------------
    pv = page.section("Configuration and versions", "config", level=3)
    digest = study.study.get("config_digest")
    pv.add(tag("p", "Config digest ", tag("code", digest or "not recorded"), ". Every result file carries the "
                    "digest of the parameters that produced it (attribute ", tag("code", "config_digest"), ")."))
    versions = study.study.get("versions") or {}
    if versions:
        pv.add(table(["package", "version"], sorted((str(k), str(v)) for k, v in versions.items())))
    else:
        pv.add(note("Package versions were not recorded."))
    if cfg:
        pv.add(tag("details", tag("summary", "Full configuration"), tag("pre", _dump(cfg))))


def _dump(cfg) -> str:
    try:
        import yaml

        return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except Exception:  # noqa: BLE001 (no PyYAML, or a value it cannot represent): JSON serves as well
        return json.dumps(cfg, indent=2, default=str, ensure_ascii=False)


__all__ = ["build", "benchmarks_per_rule"]
