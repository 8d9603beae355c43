"""What survives each fix and control: the fraction of features with significant positive spatial
autocorrelation per feature set, layer and region, under one test after another, from one run.

Columns (each a fraction of the features with a finite Moran's I in that variant; BH over the
features of a region at ``ALPHA``, and I above E[I] = -1/(n-1)):

- ``before``: the old analysis: units mean-pooled *with* the attention-sink first token (rebuilt
  from the activations' ``sink``), BH over esda's folded ``p_sim``;
- ``pooling``: the sink left out, still BH over the folded ``p_sim``;
- ``one_sided``: the sink left out, BH over the one-sided ``p_greater`` (the test the report uses);
- ``shuffled``: that test on coordinates shuffled within each region (expected ~0);
- ``random_init``: that test on the same feature set of the random-init control model;
- ``residualised``: that test on residuals after one-hot admin-1 unit and prompt length;
- ``name_only``: that test on the same places prompted by their name alone;
- ``name_only_residualised``: both.

A companion (random-init model, name-only prompt set) is found in the study config: a model with
``random_init`` and the same ``spec``; a prompt set whose template is ``"{name}"`` and whose sampling
keys equal the main one's. Cells without their input are NaN ("–").
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.contracts import NAME_ONLY_TEMPLATE, is_main  # noqa: F401 (is_main: re-exported)
from mechflow.report.loaders import Study, feature_dim
from mechflow.spatial.fdr import fdr_bh

ALPHA = 0.05

#: column -> header (short) and its meaning (long), in table order
COLUMNS: dict[str, tuple[str, str]] = {
    "before": ("with sink, folded p", "first token pooled in, BH over esda's folded p_sim (the analysis before the fixes)"),
    "pooling": ("sink out, folded p", "first token left out of pooling, BH over the folded p_sim"),
    "one_sided": ("one-sided p", "first token left out, BH over the one-sided permutation p_greater (the report's test)"),
    "shuffled": ("shuffled coords", "the one-sided test on coordinates shuffled within each region"),
    "random_init": ("random-init model", "the one-sided test on the random-init control model"),
    "residualised": ("residualised", "the one-sided test after regressing out one-hot admin-1 and prompt length"),
    "name_only": ("name-only prompts", "the one-sided test on the same places prompted by name alone"),
    "name_only_residualised": ("name-only, residualised", "name-only prompts, residualised on admin-1 and length"),
}

#: dataset keys that must agree for a name-only companion (the same places)
SAMPLING_KEYS = ("source", "regions", "gazetteer", "min_population", "max_per_region", "seed", "path")


def _fraction(sig: xr.DataArray, I: xr.DataArray, region: str) -> float:
    valid = np.isfinite(I.sel(region=region).values)
    return float(sig.sel(region=region).values[valid].mean()) if valid.any() else np.nan


def _bh(p: xr.DataArray) -> xr.DataArray:
    p = p.transpose("region", ...)
    return p.copy(data=fdr_bh(p.values))


def fractions(ds: xr.Dataset, suffix: str = "", folded: bool = False) -> dict[str, float]:
    """Region -> fraction of features significant in one variant of a moran file.

    ``suffix``: ``""`` (the data), ``_shuffled``, ``_resid`` or ``_with_sink``; ``folded``: BH over the
    variant's folded ``p_sim`` instead of its ``q_greater``. Empty when the variant is not stored.
    """
    I_name, p_name = f"I{suffix}", (f"p_sim{suffix}" if folded else f"q_greater{suffix}")
    if I_name not in ds or p_name not in ds or int(ds.attrs.get("permutations", 0) or 0) == 0:
        return {}
    q = _bh(ds[p_name]) if folded else ds[p_name]
    sig = (q < ALPHA) & (ds[I_name] > ds["EI"])
    return {str(r): _fraction(sig, ds[I_name], str(r)) for r in ds["region"].values}


def random_companion(config: Mapping[str, Any], model: str) -> str | None:
    """The random-init control of ``model``: a model with ``random_init`` and the same spec."""
    models = config.get("models") or {}
    spec = (models.get(model) or {}).get("spec")
    for name in sorted(models):
        if name != model and models[name].get("random_init") and models[name].get("spec") == spec:
            return name
    return None


def name_only_companion(config: Mapping[str, Any], dataset: str) -> str | None:
    """The prompt set with the same places as ``dataset`` prompted by name alone (template ``"{name}"``)."""
    datasets = config.get("datasets") or {}
    main = datasets.get(dataset) or {}
    if str(main.get("template", "")).strip() == NAME_ONLY_TEMPLATE:
        return None
    for name in sorted(datasets):
        other = datasets[name]
        if name != dataset and str(other.get("template", "")).strip() == NAME_ONLY_TEMPLATE and all(
            other.get(k) == main.get(k) for k in SAMPLING_KEYS
        ):
            return name
    return None


def _label(e: Mapping[str, Any]) -> str:
    kind, run = e.get("kind"), e.get("run")
    return {"units": "units", "sae": f"SAE {run}", "snmf": f"semi-NMF {run}"}.get(str(kind), str(kind))


def evidence_table(study: Study) -> pd.DataFrame:
    """One row per main (dataset, model, hook, feature set, layer, region); one column per :data:`COLUMNS`
    (fractions in [0, 1], NaN where the variant or its companion is absent), plus ``n_features``.

    Computed once per study (the report's section and ``significance.md`` share it); a copy is returned."""
    return study.memo(("evidence_table",), lambda: _evidence_table(study)).copy()


def _evidence_table(study: Study) -> pd.DataFrame:
    config = study.config
    rows = []
    for e in study.entries["spatial"]:
        if not is_main(config, str(e["dataset"]), str(e["model"])):
            continue
        ds = study.moran(e)
        if ds is None:
            continue
        keys = dict(kind=e.get("kind"), hook=e.get("hook"), layer=e.get("layer"), run=e.get("run"))
        rand, name = random_companion(config, str(e["model"])), name_only_companion(config, str(e["dataset"]))
        companions = {}
        for col, (d, m) in (("random_init", (e["dataset"], rand)), ("name_only", (name, e["model"]))):
            other = study.find("spatial", dataset=d, model=m, **keys) if d and m else None
            companions[col] = study.moran(other) if other is not None else None
        cols = {
            "before": fractions(ds, "_with_sink", folded=True),
            "pooling": fractions(ds, folded=True),
            "one_sided": fractions(ds),
            "shuffled": fractions(ds, "_shuffled"),
            "random_init": fractions(companions["random_init"]) if companions["random_init"] is not None else {},
            "residualised": fractions(ds, "_resid"),
            "name_only": fractions(companions["name_only"]) if companions["name_only"] is not None else {},
            "name_only_residualised": (fractions(companions["name_only"], "_resid")
                                       if companions["name_only"] is not None else {}),
        }
        n_valid = np.isfinite(ds["I"].values).sum(axis=ds["I"].dims.index(feature_dim(ds)))
        for r, region in enumerate(ds["region"].values.astype(str)):
            rows.append({"dataset": e["dataset"], "model": e["model"], "hook": e.get("hook"), "feature_set": _label(e),
                         "layer": int(e["layer"]), "region": region, "n_features": int(np.atleast_1d(n_valid)[r]),
                         **{c: cols[c].get(region, np.nan) for c in COLUMNS}})
    df = pd.DataFrame(rows, columns=["dataset", "model", "hook", "feature_set", "layer", "region", "n_features", *COLUMNS])
    kind_rank = df["feature_set"].map(lambda v: 0 if v == "units" else 1 if v.startswith("SAE") else 2)
    return (df.assign(_kind=kind_rank)
            .sort_values(["dataset", "model", "hook", "_kind", "feature_set", "layer", "region"], kind="stable")
            .drop(columns="_kind").reset_index(drop=True))


#: Markdown's inline syntax (and the table's cell separator), backslash-escaped in a cell
_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_[]|~"})


def markdown_text(value: Any) -> str:
    """``value`` as literal text in a Markdown table cell: HTML escaped (``<script>`` renders as text, never as a tag),
    Markdown's inline syntax and ``|`` backslash-escaped, line breaks folded to spaces."""
    return html.escape(" ".join(str(value).split()), quote=False).translate(_MARKDOWN)


def _pct(v: float) -> str:
    return "–" if not np.isfinite(v) else f"{100 * v:.0f}%"


def to_markdown(df: pd.DataFrame) -> str:
    """The table as GitHub markdown (percentages), with a legend of the columns."""
    head = ["prompt set / model", "feature set", "layer", "region", "n", *(COLUMNS[c][0] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [markdown_text(f"{r.dataset} / {r.model}"), markdown_text(r.feature_set), str(r.layer), markdown_text(r.region),
                 str(r.n_features),
                 *(_pct(r[c]) for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    legend = [f"- **{h}**: {desc}." for h, desc in COLUMNS.values()]
    return "\n".join([*lines, "", f"Fraction of features with q < {ALPHA} (Benjamini-Hochberg over the features of a "
                      "region) and Moran's I above E[I]; every column uses the same KNN weights and permutations.",
                      *legend]) + "\n"
