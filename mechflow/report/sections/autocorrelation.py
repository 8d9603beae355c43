"""Spatial autocorrelation: Moran's I of raw units vs SAE features vs semi-NMF factors, per layer and
region, beside their controls; fraction significant after FDR; tables of the top features."""

from __future__ import annotations

import numpy as np

from mechflow.report.figures import Series, moran_figure
from mechflow.report.html import Markup, Page, Section, badge, fmt, join, note, pct, table, tag
from mechflow.report.loaders import feature_dim
from mechflow.report.sections.context import Context
from mechflow.report.stats import q_source, region_summary

KIND_ORDER = {"units": 0, "sae": 1, "snmf": 2}
ID_PREFIX = {"unit": "u", "feature": "f", "factor": "φ"}


def _order(ctx: Context, e) -> tuple:
    return (int(e.get("layer") or 0), ctx.study.is_control_model(str(e.get("model"))), KIND_ORDER.get(e.get("kind"), 9),
            str(e.get("run")), str(e.get("model")), str(e.get("hook")))


def fmt_i(v: float) -> str:
    """Moran's I to three decimals (NaN as an en dash)."""
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _legend_order(ctx: Context, e) -> tuple:
    return (ctx.study.is_control_model(str(e.get("model"))), KIND_ORDER.get(e.get("kind"), 9), str(e.get("run")),
            str(e.get("model")), str(e.get("hook")))


def build(ctx: Context, page: Page, sec: Section) -> None:
    study = ctx.study
    entries = [e for e in study.entries["spatial"] if study.moran(e) is not None]
    if not study.entries["spatial"]:
        sec.add(note("No spatial results in this study (enable spatial in the config)."))
        return
    if not entries:
        sec.add(note("None of the listed spatial results is available yet."))
        return
    any_ds = study.moran(entries[0])
    perms = int(any_ds.attrs.get("permutations", 0) or 0)
    sec.add(tag("p", "Global Moran's I of every raw unit, SAE feature and semi-NMF factor, per region, on "
                     f"{any_ds.attrs.get('k', '?')}-nearest-neighbour weights (transform "
                     f"{any_ds.attrs.get('transform', '?')}) in each region's projected CRS. ",
                     tag("b", "Significant"), " means positive autocorrelation (I above its expectation E[I] = "
                     "−1/(n−1)) with Benjamini–Hochberg q < 0.05 over the features of a region "
                     f"({'from ' + str(perms) + ' permutations' if perms else 'from the normal approximation'}). "
                     "Controls: the same features with coordinates shuffled within each region (no spatial "
                     "structure by construction), and, where the study has one, a model of the same "
                     "architecture with random weights."))
    n_feat = max(study.moran(e).sizes.get(feature_dim(study.moran(e)), 0) for e in entries)
    if perms and n_feat / (perms + 1) > 0.05:
        sec.add(note(f"With {perms} permutations the smallest p-value is 1/{perms + 1}; over {n_feat:,} features "
                     "Benjamini–Hochberg reaches q < 0.05 only when many features sit at that floor, so the "
                     "fractions below are conservative. Raise spatial.permutations (e.g. 999) for a finer test.", "info"))
    for dataset in [d for d in study.datasets if any(e["dataset"] == d for e in entries)]:
        ds_entries = sorted([e for e in entries if e["dataset"] == dataset], key=lambda e: _order(ctx, e))
        regions = sorted({str(r) for e in ds_entries for r in study.moran(e)["region"].values})
        panels, tables = [], {}
        for region in regions:
            series, rows = [], []
            for e in ds_entries:
                m = study.moran(e)
                if region not in m["region"].values:
                    continue
                s = region_summary(m, region, top_n=5)
                I = m["I"].sel(region=region).values
                color, hatch = ctx.series_style(e)
                series.append(Series(
                    key=ctx.series_key(e), label=ctx.series_label(e), color=color, layer=int(e["layer"]), I=I,
                    I_control=m["I_shuffled"].sel(region=region).values if "I_shuffled" in m else None,
                    frac_sig=s["frac_sig"], frac_sig_control=s["frac_sig_control"], hatch=hatch))
                prefix = ID_PREFIX.get(feature_dim(m), "")
                top = join([badge(f"{prefix}{fid} · {val:.3f}", "sig" if is_sig else "") for fid, val, is_sig in s["top"]])
                sig_cell = Markup(f"<b>{pct(s['frac_sig'])}</b>") if np.isfinite(s["frac_sig"]) else "–"
                rows.append((e["layer"], ctx.series_label(e), fmt(s["n_valid"]),
                             join([fmt_i(s["median_I"]), tag("span", f" ({fmt_i(s['median_I_control'])})", cls="ctrl")]),
                             fmt_i(s["max_I"]),
                             join([sig_cell, tag("span", f" ({pct(s['frac_sig_control'])})", cls="ctrl")]), top))
            rank = {ctx.series_key(e): _legend_order(ctx, e) for e in ds_entries}
            panels.append((region, sorted(series, key=lambda x: (rank[x.key], x.layer))))
            tables[region] = rows
        label = f" ({dataset})" if len(study.datasets) > 1 else ""
        target = sec if len(study.datasets) == 1 else page.section(f"{dataset}: Moran's I by layer", f"moran-{dataset}", 3)
        target.add(page.figure(moran_figure(panels), Markup(
            f"<b>Moran's I by layer{label}.</b> Left: each violin is the distribution of Moran's I over the "
            "features of one feature set (white dot: median, black bar: interquartile range, tick: maximum); the "
            "thin grey violin beside it is the same features on shuffled coordinates. Right: the fraction of "
            "features with significant positive autocorrelation (bars: one-sided permutation test "
            "p = (#{I_sim ≥ I} + 1)/(P + 1), Benjamini-Hochberg q < 0.05 over the features of a region) and the "
            "same fraction on shuffled coordinates (black tick, expected near 0), tested the same way, as are "
            "the random-init control models (hatched)."),
            f"moran-{dataset}", "Moran's I distributions per layer"))
        for region in regions:
            sub = page.section(f"{region}: significance and top features" + label, f"moran-{dataset}-{region}", level=3)
            sub.add(table(["layer", "feature set", "features", "median I (shuffled)", "max I",
                           "significant (shuffled)", "top 5 by I (red: significant)"],
                          tables[region], numeric=[0, 2, 3, 4, 5]))
        used = {q_source(study.moran(e)) for e in ds_entries}
        target.add(tag("p", f"q-values from {', '.join(sorted(used))}. Ids: u = unit, f = SAE feature, "
                            "φ = semi-NMF factor.", cls="subtitle"))
