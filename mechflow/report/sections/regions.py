"""Per region: the places, the spatial weights graph, and for the features with the largest Moran's I
a map of their activation and their LISA cluster map."""

from __future__ import annotations

import numpy as np

from mechflow.report.html import Markup, Page, Section, note, tag
from mechflow.report.loaders import feature_dim
from mechflow.report.maps import feature_maps_figure, overview_figure
from mechflow.report.plotting import LISA_COLORS
from mechflow.report.sections.context import Context
from mechflow.report.stats import top_features

LISA_ALPHA = 0.05
FEATURE_WORD = {"unit": "unit", "feature": "feature", "factor": "factor"}


def _legend() -> Markup:
    items = [("HH", "High-High"), ("HL", "High-Low"), ("LH", "Low-High"), ("LL", "Low-Low"), ("ns", "not significant")]
    return tag("div", *[tag("span", Markup(f'<span class="sw" style="background:{LISA_COLORS[c]}"></span>'), label)
                        for c, label in items], cls="legend")


def map_sets(ctx: Context, dataset: str, region: str) -> tuple[list[dict], list[dict]]:
    """The feature sets to map in a region, in priority order, and those left out (beyond ``max_map_sets``).

    Order: SAE runs, semi-NMF runs, raw units at an SAE's layer, then the units of the layers with the
    largest Moran's I; random-init control models last.
    """
    study = ctx.study
    cands = []
    sae_layers = {(e.get("model"), e.get("hook"), int(e["layer"])) for e in study.entries["spatial"]
                  if e.get("kind") == "sae" and e.get("dataset") == dataset}
    for e in study.entries["spatial"]:
        if e.get("dataset") != dataset:
            continue
        m = study.moran(e)
        if m is None or region not in m["region"].values:
            continue
        I = m["I"].sel(region=region).values
        best = float(np.nanmax(I)) if np.isfinite(I).any() else -np.inf
        control = study.is_control_model(str(e.get("model")))
        kind = e.get("kind")
        tier = 0 if kind == "sae" else 1 if kind == "snmf" else 2 if (e.get("model"), e.get("hook"), int(e["layer"])) in sae_layers else 3
        cands.append(((control, tier, -best), e))
    cands.sort(key=lambda t: t[0])
    chosen = [e for _, e in cands[: ctx.max_map_sets]]
    return chosen, [e for _, e in cands[ctx.max_map_sets:]]


LISA_RULE = "BH-FDR 5% over places"
LISA_RULE_OLD = "folded pseudo p < 0.05, uncorrected; older file"
LEGEND_TITLE = {LISA_RULE: "BH-FDR 5%\nover places", LISA_RULE_OLD: "p_sim < 0.05\n(uncorrected)"}


def _lisa_for(ctx: Context, e, dataset: str, region: str, ids: list, rows: np.ndarray):
    """(q, p, rule): cluster codes and a p-like array ``[n_region_places, N]`` of the mapped features
    (0 where ``significant``, BH over the places per feature, else 1; from ``p_sim`` for older files
    without ``significant``) and the rule's caption text; None without a LISA file."""
    lisa = ctx.study.lisa(e)
    if lisa is None or region not in lisa["region"].values:
        return None
    fdim = feature_dim(lisa)
    sub = lisa.sel(region=region)
    have = set(sub[fdim].values.tolist())
    new = "significant" in sub
    n = rows.size
    q = np.zeros((n, len(ids)), dtype=np.int64)
    p = np.ones((n, len(ids)))
    prows = ctx.rows_of(dataset, sub["prompt"].values if "prompt" in sub.coords else None, sub.sizes["prompt"])[rows]
    for j, fid in enumerate(ids):
        if fid in have:
            one = sub.sel({fdim: fid})
            q[:, j] = np.asarray(one["q"].values)[prows]
            if new:
                p[:, j] = np.where(np.asarray(one["significant"].values, dtype=bool)[prows], 0.0, 1.0)
            else:
                p[:, j] = np.nan_to_num(np.asarray(one["p_sim"].values, dtype=np.float64)[prows], nan=1.0)
    return q, p, LISA_RULE if new else LISA_RULE_OLD


def build(ctx: Context, page: Page, sec: Section) -> None:
    study = ctx.study
    datasets = [d for d in study.datasets if study.prompts(d) is not None]
    if not datasets:
        sec.add(note("No prompt set is available, so there is nothing to map."))
        return
    sec.add(tag("p", "Maps are drawn in each region's projected CRS (metres) over coastlines (solid), country borders "
                     "(dashed; Natural Earth 1:10m) and, in the US, state lines (dotted; US Census 1:500k). "
                     "Activation maps colour each place by the feature's value as a z-score within the region (red "
                     "above the regional mean, blue below): the deviations Moran's I "
                     "correlates between neighbours. LISA cluster maps show where local Moran's I is significant "
                     f"({LISA_RULE}: Benjamini-Hochberg over the places of the region, per feature, of the "
                     "two-sided conditional-permutation p-value): hot spots (High-High), cold spots (Low-Low) "
                     "and spatial outliers."),
            _legend())
    for dataset in datasets:
        table = study.prompts(dataset)
        for region in ctx.regions(dataset):
            title = region if len(datasets) == 1 else f"{dataset}: {region}"
            sub = page.section(title, f"region-{dataset}-{region}", level=3)
            geom = ctx.geometry(dataset, region)
            if geom is None:
                sub.add(note(f"Region {region} cannot be mapped: {ctx.geometry_error(dataset, region)}"))
                continue
            texts = table["text"].values[geom.index]
            png, edges = overview_figure(geom, texts)
            proj = geom.crs or "lon/lat scaled by cos(latitude)"
            sub.add(tag("p", f"{geom.n:,} places · projection {proj} · k = {geom.k} neighbours · "
                             f"{geom.n_duplicates} duplicate coordinate(s)", cls="subtitle"))
            sub.add(page.figure(png, f"Left: the {geom.n:,} places of {region} (a few labelled for orientation). "
                                     f"Right: the {geom.k}-nearest-neighbour graph ({edges:,} undirected edges) that "
                                     "every spatial statistic of this region uses.",
                                f"places-{dataset}-{region}", f"places and KNN graph of {region}"))
            chosen, rest = map_sets(ctx, dataset, region)
            if not chosen:
                sub.add(note("No spatial results for this region yet: feature maps appear once Moran's I is computed."))
                continue
            for e in chosen:
                _feature_maps(ctx, page, sub, e, dataset, region, geom)
            if rest:
                names = ", ".join(f"{ctx.series_label(e)} (layer {e['layer']})" for e in rest)
                sub.add(note(f"Not mapped, to keep the page small ({len(rest)} more feature set(s)): {names}. "
                             "Set report.max_map_sets to map more.", "info"))


def _feature_maps(ctx: Context, page: Page, sub: Section, e, dataset: str, region: str, geom) -> None:
    m = ctx.study.moran(e)
    fdim = feature_dim(m)
    ids = top_features(m, ctx.top_n, region)
    heading = f"{ctx.series_label(e)} · {e.get('hook')} layer {e['layer']}"
    sub.add(tag("h4", heading))
    if not ids:
        sub.add(note("Every feature is constant in this region: nothing to map."))
        return
    try:
        values = ctx.study.source_values(e, ids)
    except (FileNotFoundError, KeyError, ValueError) as err:
        sub.add(note(f"Values not available for maps: {err}"))
        return
    vdim = feature_dim(values)
    rows = ctx.rows_of(dataset, values["prompt"].values if "prompt" in values.coords else None,
                       values.sizes["prompt"])[geom.index]
    V = np.asarray(values.transpose("prompt", vdim).values, dtype=np.float64)[rows]
    I = m["I"].sel(region=region)
    titles = [f"{FEATURE_WORD.get(fdim, fdim)} {fid} · I = {float(I.sel({fdim: fid})):.3f}" for fid in ids]
    lisa = _lisa_for(ctx, e, dataset, region, ids, geom.index)
    rule = lisa[2] if lisa is not None else ""
    png = feature_maps_figure(geom, V, titles, lisa[:2] if lisa is not None else None, LISA_ALPHA,
                              legend_title=LEGEND_TITLE.get(rule, ""))
    word = FEATURE_WORD.get(fdim, fdim)
    of = "" if e.get("kind") == "units" else f" of {ctx.series_label(e)}"
    cap = (f"The {len(ids)} {word}s{of} ({e.get('model')}, {e.get('hook')} layer {e['layer']}) "
           f"with the largest Moran's I in {region}. Top: activation as a z-score within {region}. ")
    cap += (f"Bottom: LISA clusters ({rule})." if lisa is not None
            else "No LISA file for this feature set (spatial.lisa_top_n = 0).")
    sub.add(page.figure(png, cap, f"maps-{dataset}-{region}-{ctx.series_key(e)}-{e['layer']}",
                        f"maps of top {word}s in {region}"))


__all__ = ["build", "map_sets"]
