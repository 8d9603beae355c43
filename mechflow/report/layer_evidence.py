"""Layer-level evidence: how much spatial structure a whole layer carries, under each control.

One row per main (prompt set, model, hook, feature set, layer, region) and layer statistic
(:data:`mechflow.spatial.layer_tests.LAYER_STATS`); for each variant (:data:`VARIANTS`) the statistic's
excess over its permutation null, the interval ``[obs - null 97.5%, obs - null 2.5%]`` and the
permutation p-value, read from the ``layer_*`` variables of ``moran.nc`` (written by the spatial step).
The name-only and random-init variants come from the companion prompt set / model
(:func:`mechflow.report.evidence.name_only_companion`, :func:`~mechflow.report.evidence.random_companion`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.contracts import is_main
from mechflow.report.evidence import markdown_text, name_only_companion, random_companion
from mechflow.report.loaders import Study

#: variant -> (header, meaning); the moran file and suffix each reads are in :func:`_variants`
VARIANTS: dict[str, tuple[str, str]] = {
    "template": ("template", "the prompts with the template (the main prompt set)"),
    "residualised": ("residualised", "the same, each unit residualised on one-hot admin-1 and prompt length; its "
                                     "permutations move places only within their admin-1 unit (residuals sum to zero "
                                     "within each unit, which free permutations ignore: a conservative null)"),
    "name_only": ("name-only", "the same places prompted by name alone (pooled prompt)"),
    "name_only_last": ("name-only, last name token", "name-only prompts, raw units at the name's last token"),
    "name_only_mean": ("name-only, mean of name tokens", "name-only prompts, raw units averaged over the name's tokens "
                                                         "(its first, the attention sink, included)"),
    "name_only_residualised": ("name-only, residualised", "name-only prompts, residualised on admin-1 and length "
                                                          "(permutations within admin-1 units)"),
    "shuffled": ("shuffled coords", "the template prompts on coordinates shuffled within each region (a calibration "
                                    "check: p should be uniform, the excess near 0)"),
    "random_init": ("random-init model", "the template prompts through the random-init control model"),
}

#: statistic -> what it is (for the legend)
STATS: dict[str, str] = {
    "mean_I": "mean Moran's I over the units",
    "pc_I": "mean Moran's I of the leading principal components of the standardised units (at most 10)",
    "frac_p05": "fraction of units with one-sided permutation p < 0.05 (5% expected without signal)",
    "pi1": "Storey's estimate of the share of units with any positive autocorrelation (lambda 0.5)",
}

FIELDS = ("obs", "null_mean", "excess", "excess_lo", "excess_hi", "p", "perms")


def _read(ds: xr.Dataset | None, suffix: str, region: str, stat: str) -> dict[str, float]:
    if ds is None or f"layer_p{suffix}" not in ds or region not in ds["region"].values:
        return dict.fromkeys(FIELDS, np.nan)
    sel = dict(region=region, layer_stat=stat)
    return {f: float(ds[f"layer_{f}{suffix}"].sel(sel)) for f in FIELDS}


def layer_table(study: Study) -> pd.DataFrame:
    """Long table: one row per main entry, region, statistic and variant, with :data:`FIELDS` (NaN where a
    variant is absent). Computed once per study; a copy is returned."""
    return study.memo(("layer_table",), lambda: _layer_table(study)).copy()


def _variants(study: Study, e: Mapping[str, Any], ds: xr.Dataset) -> dict[str, tuple[xr.Dataset | None, str]]:
    config = study.config
    keys = dict(kind=e.get("kind"), hook=e.get("hook"), layer=e.get("layer"), run=e.get("run"))
    rand, name = random_companion(config, str(e["model"])), name_only_companion(config, str(e["dataset"]))
    other = {}
    for col, (d, m) in (("random_init", (e["dataset"], rand)), ("name_only", (name, e["model"]))):
        found = study.find("spatial", dataset=d, model=m, **keys) if d and m else None
        other[col] = study.moran(found) if found is not None else None
    for position in ("last", "mean"):  # raw units at the name's positions (spatial.name_positions)
        found = (study.find("spatial", dataset=name, model=e["model"], **dict(keys, run=f"name_{position}"))
                 if name and e.get("kind") == "units" and not e.get("run") else None)
        other[f"name_only_{position}"] = study.moran(found) if found is not None else None
    return {"template": (ds, ""), "residualised": (ds, "_resid"), "name_only": (other["name_only"], ""),
            "name_only_last": (other["name_only_last"], ""), "name_only_mean": (other["name_only_mean"], ""),
            "name_only_residualised": (other["name_only"], "_resid"), "shuffled": (ds, "_shuffled"),
            "random_init": (other["random_init"], "")}


def _label(e: Mapping[str, Any]) -> str:
    kind, run = e.get("kind"), e.get("run")
    return {"units": "units", "sae": f"SAE {run}", "snmf": f"semi-NMF {run}"}.get(str(kind), str(kind))


def _layer_table(study: Study) -> pd.DataFrame:
    rows = []
    for e in study.entries["spatial"]:
        if not is_main(study.config, str(e["dataset"]), str(e["model"])):
            continue
        ds = study.moran(e)
        if ds is None or "layer_p" not in ds:
            continue
        variants = _variants(study, e, ds)
        for region in ds["region"].values.astype(str):
            for stat in STATS:
                for var, (vds, suffix) in variants.items():
                    rows.append({"dataset": e["dataset"], "model": e["model"], "hook": e.get("hook"),
                                 "feature_set": _label(e), "layer": int(e["layer"]), "region": region, "stat": stat,
                                 "variant": var, **_read(vds, suffix, region, stat)})
    return pd.DataFrame(rows, columns=["dataset", "model", "hook", "feature_set", "layer", "region", "stat", "variant",
                                       *FIELDS])


def _num(v: float, stat: str) -> str:
    return f"{100 * v:+.1f}pp" if stat in ("frac_p05", "pi1") else f"{v:+.4f}"


def cell(r: Mapping[str, Any]) -> str:
    """``excess [lo, hi] p`` of one row (statistic in percentage points for the fractions), or ``–``."""
    if not np.isfinite(r["p"]):
        return "–" if not np.isfinite(r["obs"]) else f"obs {r['obs']:.4f}, no null"
    stat = str(r["stat"])
    return f"{_num(r['excess'], stat)} [{_num(r['excess_lo'], stat)}, {_num(r['excess_hi'], stat)}] p={r['p']:.3g}"


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per entry, region and statistic; one column per variant (:func:`cell` strings)."""
    if df.empty:
        return pd.DataFrame()
    keys = ["dataset", "model", "hook", "feature_set", "layer", "region", "stat"]
    df = df.assign(cell=[cell(r) for _, r in df.iterrows()])
    out = df.pivot_table(index=keys, columns="variant", values="cell", aggfunc="first", sort=False).reset_index()
    return out[[*keys, *[v for v in VARIANTS if v in out.columns]]]


def calibration(df: pd.DataFrame, alpha: float = 0.05) -> tuple[int, int]:
    """(count of shuffled-coordinate layer p-values <= ``alpha``, count of finite ones): under the null about
    ``alpha`` of them."""
    p = df.loc[df["variant"] == "shuffled", "p"].to_numpy(dtype=float)
    p = p[np.isfinite(p)]
    return int((p <= alpha).sum()), int(p.size)


def to_markdown(df: pd.DataFrame) -> str:
    """The layer table as GitHub markdown, with its legend and the shuffled control's calibration."""
    w = wide(df)
    if w.empty:
        return "No layer-level tests in this study's spatial results.\n"
    variants = [v for v in VARIANTS if v in w.columns]
    head = ["prompt set / model", "feature set", "layer", "region", "statistic", *(VARIANTS[v][0] for v in variants)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in w.iterrows():
        lines.append("| " + " | ".join([markdown_text(f"{r.dataset} / {r.model}"), markdown_text(r.feature_set), str(r.layer),
                                        markdown_text(r.region),
                                        str(r.stat), *(str(r[v]) if isinstance(r[v], str) else "–" for v in variants)])
                     + " |")
    k, m = calibration(df)
    perms = df["perms"].to_numpy(dtype=float)
    perms = sorted({int(p) for p in perms[np.isfinite(perms)]})
    legend = [f"- **{s}**: {d}." for s, d in STATS.items()] + [f"- **{VARIANTS[v][0]}**: {VARIANTS[v][1]}." for v in variants]
    return "\n".join([
        "## Layer-level tests", "",
        "Whole-layer statistics against their null under joint permutations of the places (one permutation moves "
        "every unit's values together, so the null keeps the correlation between units). Each cell: the excess of "
        "the statistic over its null mean, [observed - null 97.5%, observed - null 2.5%] (the null's 95% range carried "
        "over to the excess), and the permutation p-value (1 + #{null >= observed}) / (P + 1); fractions in "
        f"percentage points. Permutations: {', '.join(map(str, perms)) or '–'} (see `layer_perms` in moran.nc).",
        "", *lines, "",
        f"Calibration: {k} of {m} shuffled-coordinate layer p-values are <= 0.05 (about {0.05 * m:.1f} expected "
        "without signal; the count statistics' p-values are conservative under ties).",
        "", *legend]) + "\n"
