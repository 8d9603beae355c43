"""Location probes: R^2 and median error (km) by layer, random vs spatially blocked folds."""

from __future__ import annotations

import numpy as np

from mechflow.report.figures import probe_figure
from mechflow.report.html import Page, Section, fmt, table, tag
from mechflow.report.sections.context import Context


def build(ctx: Context, page: Page, sec: Section) -> None:
    study = ctx.study
    entries = ctx.available(sec, "probes", "No probe results in this study (enable probes in the config).",
                            "probe results")
    if not entries:
        return
    ds0 = study.dataset(entries[0]["path"])
    sec.add(tag("p", "Cross-validated ridge regression from each layer's pooled activations to the places' projected "
                     f"x/y ({ds0.attrs.get('n_folds', '?')} folds; out-of-fold predictions pooled). ",
                     tag("b", "Random folds"), " mix neighbouring places between training and test; ",
                     tag("b", "spatially blocked folds"), " hold out whole clusters of places, so the gap between "
                     "the two is how much a probe leans on spatial leakage rather than on a map the model encodes."))
    entries.sort(key=lambda e: (study.is_control_model(str(e.get("model"))), str(e.get("dataset")), str(e.get("model"))))
    for e in entries:
        ds = study.dataset(e["path"])
        title = ctx.entry_title({**e, "layer": None})
        if study.is_control_model(str(e.get("model"))):
            title += " (random-init control)"
        sub = page.section(f"Probes: {title}", f"probes-{title}", level=3)
        sub.add(page.figure(probe_figure(ds, title),
                            f"{title}: R² of x/y (left; 1 = perfect, 0 = predicting the mean) and median great-circle "
                            "error in km (right) by layer. Solid: random folds; dashed: spatially blocked folds; "
                            "one colour per region.", f"probes-{title}", f"location probes of {title}"))
        rows, full = [], []
        for region in ds["region"].values:
            r = ds.sel(region=region)
            sp = r.sel(scheme="spatial") if "spatial" in r["scheme"].values else r.isel(scheme=0)
            rd = r.sel(scheme="random") if "random" in r["scheme"].values else r.isel(scheme=0)
            r2 = sp["r2_xy"].values
            best = int(np.nanargmax(r2)) if np.isfinite(r2).any() else 0
            def null(scheme, i):  # the same probe on shuffled coordinates (older files lack it)
                return fmt(float(scheme["r2_xy_null"].values[i])) if "r2_xy_null" in scheme else "–"

            rows.append((str(region), int(r["n"]) if "n" in r else "–", int(r["layer"].values[best]),
                         fmt(float(rd["r2_xy"].values[best])), null(rd, best), fmt(float(sp["r2_xy"].values[best])),
                         null(sp, best), fmt(float(rd["median_km"].values[best])), fmt(float(sp["median_km"].values[best]))))
            for i, layer in enumerate(r["layer"].values):
                full.append((str(region), int(layer), fmt(float(rd["r2_xy"].values[i])), null(rd, i),
                             fmt(float(sp["r2_xy"].values[i])), null(sp, i),
                             fmt(float(rd["median_km"].values[i])), fmt(float(sp["median_km"].values[i]))))
        sub.add(tag("h4", "Best layer per region (by R² on spatially blocked folds)"),
                tag("p", "Null: the same probes (same folds, same penalty rule) fitted to the coordinates shuffled among "
                         "the region's places; a probe's R² means something only above its null."),
                table(["region", "places", "best layer", "R² random", "null R² random", "R² blocked", "null R² blocked",
                       "median km random", "median km blocked"], rows, numeric=[1, 2, 3, 4, 5, 6, 7, 8]),
                tag("details", tag("summary", "Every layer"),
                    table(["region", "layer", "R² random", "null R² random", "R² blocked", "null R² blocked",
                           "median km random", "median km blocked"], full, numeric=[1, 2, 3, 4, 5, 6, 7])))
