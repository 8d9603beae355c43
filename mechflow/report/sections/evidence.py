"""What survives the controls: the fraction of significant features under each fix and control, one
table per prompt set and model (see :mod:`mechflow.report.evidence`), and what the numbers allow."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mechflow.report import layer_evidence
from mechflow.report.evidence import ALPHA, COLUMNS, evidence_table
from mechflow.report.html import Markup, Page, Section, note, pct, table, tag
from mechflow.report.sections.context import Context


def claims(df: pd.DataFrame) -> list[str]:
    """Plain sentences of what the raw-unit rows show (medians over layers and regions)."""
    units = df[df["feature_set"] == "units"]
    if units.empty:
        return []
    med = {c: float(np.nanmedian(units[c])) if units[c].notna().any() else np.nan for c in COLUMNS}
    out = [f"Median over layers and regions, raw units: {pct(med['one_sided'])} significant with the report's test, "
           f"{pct(med['before'])} with the analysis before the fixes (first token pooled in, folded p), and "
           f"{pct(med['shuffled'])} on shuffled coordinates."]
    if np.isfinite(med["random_init"]):
        out.append(f"The random-init control model reaches {pct(med['random_init'])}: autocorrelation of this size "
                   "needs no trained weights, so it says the prompts differ by place, not that the model knows geography.")
    if np.isfinite(med["residualised"]):
        out.append(f"After regressing out the template (admin-1 unit and prompt length) {pct(med['residualised'])} "
                   "remain: that much structure lies inside admin-1 units and is not explained by prompt length.")
    if np.isfinite(med["name_only"]):
        out.append(f"Prompted by the name alone, {pct(med['name_only'])} are significant "
                   f"({pct(med['name_only_residualised'])} after residualising): this is the part no template can carry.")
    return out


def build(ctx: Context, page: Page, sec: Section) -> None:
    df = evidence_table(ctx.study)
    if df.empty:
        sec.add(note("No spatial results of a trained model to compare with controls."))
        return
    sec.add(tag("p", f"Fraction of features with significant positive spatial autocorrelation (Benjamini–Hochberg "
                     f"q < {ALPHA} over the features of a region, and I above E[I]) under one test or control after "
                     "another, from this one run. Read across a row: each column changes one thing. A dash means the "
                     "study has no such variant (e.g. no name-only prompt set, or the SAE was trained on one model)."))
    sec.add(tag("ul", *[tag("li", tag("b", head), ": ", desc) for head, desc in COLUMNS.values()]))
    for (dataset, model), part in df.groupby(["dataset", "model"], sort=False):
        rows = [(r["feature_set"] + (f" [{r['hook']}]" if df["hook"].nunique() > 1 else ""), r["layer"], r["region"],
                 f"{r['n_features']:,}", *(Markup(f"<b>{pct(r[c])}</b>") if c == "one_sided" else pct(r[c]) for c in COLUMNS))
                for _, r in part.iterrows()]
        sub = page.section(f"{dataset} / {model}: significant fraction under each control", f"evidence-{dataset}-{model}", 3)
        sub.add(table(["feature set", "layer", "region", "features", *(h for h, _ in COLUMNS.values())], rows,
                      numeric=list(range(1, 4 + len(COLUMNS)))))
        sentences = claims(part)
        if sentences:
            sub.add(tag("p", " ".join(sentences)))
    _layer_tables(ctx, page, sec)


def _layer_tables(ctx: Context, page: Page, sec: Section) -> None:
    """The layer-level tests (:mod:`mechflow.report.layer_evidence`), one table per prompt set and model."""
    df = layer_evidence.layer_table(ctx.study)
    if df.empty:
        return
    sub = page.section("Layer-level tests: how much geography a whole layer carries", "evidence-layers", 3)
    sub.add(tag("p", "Per-unit tests with BH over hundreds of units find a few strong features, not a weak signal "
                     "spread over many. These statistics of the whole layer are compared with their null under joint "
                     "permutations of the places (one permutation moves every unit together, so the null keeps the "
                     "correlation between units). Each cell: excess over the null mean [observed − null 97.5%, "
                     "observed − null 2.5%], the permutation p-value and q (Benjamini-Hochberg over the layers and regions of the "
                     "same column, statistic and feature set); fractions in percentage points. "
                     + layer_evidence.calibration_text(df)),
            tag("ul", *[tag("li", tag("b", s), ": ", d) for s, d in layer_evidence.STATS.items()],
                *[tag("li", tag("b", h), ": ", d) for h, d in layer_evidence.VARIANTS.values()]))
    w = layer_evidence.wide(df)
    variants = [v for v in layer_evidence.VARIANTS if v in w.columns]
    for (dataset, model), part in w.groupby(["dataset", "model"], sort=False):
        rows = [(r["feature_set"], r["layer"], r["region"], r["stat"],
                 *(r[v] if isinstance(r[v], str) else "–" for v in variants)) for _, r in part.iterrows()]
        sub.add(tag("h4", f"{dataset} / {model}"),
                table(["feature set", "layer", "region", "statistic", *(layer_evidence.VARIANTS[v][0] for v in variants)],
                      rows, numeric=[1]))
