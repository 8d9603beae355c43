"""Semi-NMF runs: loss curve, the top factors with their Moran's I, top prompts and top units, and maps."""

from __future__ import annotations

import numpy as np

from mechflow.report.figures import loss_figure
from mechflow.report.html import Page, Section, badge, fmt, join, table, tag
from mechflow.report.maps import feature_grid_figure
from mechflow.report.sections.context import Context
from mechflow.report.stats import significant_positive, top_features

N_TOP_PROMPTS = 5
N_TOP_UNITS = 3


def _i_text(region: str, value: float) -> str:
    return f"{region} {value:.3f}" if np.isfinite(value) else f"{region}: constant"


def build(ctx: Context, page: Page, sec: Section) -> None:
    have = ctx.available(sec, "snmf", "No semi-NMF runs in this study (add snmf.runs to the config).", "semi-NMF runs")
    if not have:
        return
    sec.add(tag("p", "Semi-NMF factorises a layer's activations A [units × prompts] ≈ F Gᵀ with sparse, mixed-sign "
                     "factor directions F [units × factors] and non-negative loadings G [prompts × factors]. Factors "
                     "are ranked by their mean Moran's I over the regions (the spatial analysis of G)."))
    for e in have:
        _run(ctx, page, e)


def _run(ctx: Context, page: Page, e) -> None:
    study = ctx.study
    ds = study.dataset(e["path"])
    title = ctx.entry_title(e)
    sub = page.section(f"Semi-NMF: {title}", f"snmf-{title}", level=3)
    loss = np.asarray(ds["loss"].values, dtype=np.float64) if "loss" in ds else np.array([])
    K = int(ds.sizes.get("factor", 0))
    sub.add(tag("p", f"{K} factors · sparsity {ds.attrs.get('sparsity', '?')} · {ds.attrs.get('level', 'prompt')} level · "
                     f"{max(loss.size - 1, 0)} iterations · final relative error {fmt(float(loss[-1]) if loss.size else None)} "
                     f"({ds.attrs.get('stop_reason', '?')})", cls="subtitle"))
    spatial = study.spatial_for("snmf", e)
    moran = study.moran(spatial) if spatial is not None else None
    G = ds["G"].transpose("prompt", "factor")
    Gv = np.asarray(G.values, dtype=np.float64)
    fids = [f.item() for f in ds["factor"].values]
    col_of = {f: i for i, f in enumerate(fids)}
    if moran is not None:
        order = top_features(moran, max(2 * ctx.top_n, 6))
    else:
        order = fids[: max(2 * ctx.top_n, 6)]
    dataset = str(e["dataset"])
    table_ = study.prompts(dataset)
    texts = (table_["text"].values if table_ is not None else G["text"].values).astype(str)
    rows_idx = ctx.rows_of(dataset, G["prompt"].values if "prompt" in G.coords else None, Gv.shape[0])
    sig = significant_positive(moran) if moran is not None else None
    F = np.asarray(ds["F"].transpose("unit", "factor").values, dtype=np.float64) if "F" in ds else None
    units = ds["unit"].values if "unit" in ds.coords else None
    rows = []
    for f in order:
        c = col_of[f]
        if "top_text" in ds:
            top = [str(t) for t in ds["top_text"].sel(factor=f).values[:N_TOP_PROMPTS]]
        else:
            v = Gv[rows_idx, c]
            top = [texts[j] for j in np.argsort(-v, kind="stable")[:N_TOP_PROMPTS]]
        Is = "–"
        if moran is not None:
            Is = join([badge(_i_text(r, float(moran['I'].sel(region=r, factor=f))),
                             "sig" if bool(sig.sel(region=r, factor=f)) else "") for r in moran["region"].values])
        tu = "–"
        if F is not None:
            col = F[:, c]
            best = np.argsort(-np.abs(col), kind="stable")[:N_TOP_UNITS]
            tu = ", ".join(f"u{units[j] if units is not None else j} ({col[j]:+.2f})" for j in best if col[j] != 0)
        rows.append((f, Is, " · ".join(top), tu))
    cols = ["factor", "Moran's I per region (red: significant)", "top prompts", "top units (weight in F)"]
    sub.add(table(cols, rows, numeric=[0]))
    if loss.size > 1:
        sub.add(page.figure(loss_figure(loss, "reconstruction error"),
                            "Relative squared reconstruction error by iteration (non-increasing by construction).",
                            f"snmf-loss-{title}", "semi-NMF loss"))
    geoms = [g for g in (ctx.geometry(dataset, r) for r in ctx.regions(dataset)) if g is not None]
    mapped = order[: ctx.top_n]
    if geoms and mapped:
        vals = [[Gv[rows_idx, col_of[f]][g.index] for g in geoms] for f in mapped]
        titles = [[f"factor {f} · {g.region}" for g in geoms] for f in mapped]
        sub.add(page.figure(feature_grid_figure(geoms, vals, titles, panel=2.2),
                            f"Loadings G of the top {len(mapped)} factors (rows) in each region (columns), as z-scores "
                            "within the region.", f"snmf-maps-{title}", "semi-NMF factor maps"))
