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
from scipy import stats

from mechflow.contracts import is_main
from mechflow.report.evidence import markdown_text, name_only_companion, random_companion
from mechflow.report.loaders import Study
from mechflow.spatial.fdr import fdr_bh

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
    "shuffled": ("shuffled coords", "a calibration check: the template prompts' coordinates shuffled within each "
                                    "region (spatial.shuffles times, independently), each shuffle's layer statistic "
                                    "tested as if observed against the template prompts' own permutation null; the cell "
                                    "gives how many shuffles reach p <= 0.05 (about 5% expected) and the one-sided KS "
                                    "test of their p-values against uniform (small: p-values too small too often)"),
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
#: the shuffled control's columns over its shuffles: how many, how many with p <= :data:`ALPHA`, the one-sided KS p
SHUFFLE_COLUMNS = ("n_shuffles", "shuffles_p05", "shuffles_ks_p")
ALPHA = 0.05


def _read(ds: xr.Dataset | None, suffix: str, region: str, stat: str) -> dict[str, float]:
    if ds is None or f"layer_p{suffix}" not in ds or region not in ds["region"].values:
        return dict.fromkeys(FIELDS + SHUFFLE_COLUMNS, np.nan)
    sel = dict(region=region, layer_stat=stat)
    out = {f: float(ds[f"layer_{f}{suffix}"].sel(sel)) for f in FIELDS}
    out.update(dict.fromkeys(SHUFFLE_COLUMNS, np.nan))
    if suffix == "_shuffled" and "layer_shuffle_p" in ds:
        out.update(shuffle_summary(ds["layer_shuffle_p"].sel(sel).values))
    return out


def shuffle_summary(p: np.ndarray) -> dict[str, float]:
    """:data:`SHUFFLE_COLUMNS` of one cell's shuffle p-values: their count, how many are <= :data:`ALPHA`, and the
    one-sided Kolmogorov-Smirnov p against Uniform(0, 1) (alternative: their CDF lies above the uniform's somewhere,
    i.e. small p-values come too often; conservative p-values, as the unit counts' under ties, do not count against
    it). The shuffles share the data's null sample, which makes the KS p slightly small (a stricter check)."""
    p = np.asarray(p, dtype=np.float64)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return dict.fromkeys(SHUFFLE_COLUMNS, np.nan)
    return {"n_shuffles": float(p.size), "shuffles_p05": float((p <= ALPHA).sum()),
            "shuffles_ks_p": float(stats.kstest(p, "uniform", alternative="greater").pvalue)}


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
    df = pd.DataFrame(rows, columns=["dataset", "model", "hook", "feature_set", "layer", "region", "stat", "variant",
                                     *FIELDS, *SHUFFLE_COLUMNS])
    return with_q(df)


#: the cells one BH adjustment pools: every layer and region of one prompt set, model, feature set, statistic and variant
FAMILY = ["dataset", "model", "hook", "feature_set", "stat", "variant"]


def with_q(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``q``: Benjamini-Hochberg over the layers and regions of each :data:`FAMILY` (the cells a claim
    such as "layer L of region R carries signal" is chosen from); NaN for the shuffled control (its first shuffle's
    p answers no question) and where p is NaN."""
    q = np.full(len(df), np.nan)
    for _, idx in df.groupby(FAMILY, dropna=False, sort=False).groups.items():
        rows = df.loc[idx]
        if rows["variant"].iloc[0] == "shuffled":
            continue
        q[df.index.get_indexer(idx)] = fdr_bh(rows["p"].to_numpy(dtype=float))
    return df.assign(q=q)


def _num(v: float, stat: str) -> str:
    return f"{100 * v:+.1f}pp" if stat in ("frac_p05", "pi1") else f"{v:+.4f}"


def cell(r: Mapping[str, Any]) -> str:
    """``excess [lo, hi] p`` of one row (statistic in percentage points for the fractions), or ``–``; for the shuffled
    control with its shuffles, ``k/R p<=0.05, KS p=...``."""
    if np.isfinite(r.get("n_shuffles", np.nan)):
        return f"{int(r['shuffles_p05'])}/{int(r['n_shuffles'])} p<=0.05, KS p={r['shuffles_ks_p']:.2g}"
    if not np.isfinite(r["p"]):
        return "–" if not np.isfinite(r["obs"]) else f"obs {r['obs']:.4f}, no null"
    stat = str(r["stat"])
    q = r.get("q", np.nan)
    return (f"{_num(r['excess'], stat)} [{_num(r['excess_lo'], stat)}, {_num(r['excess_hi'], stat)}] p={r['p']:.3g}"
            + (f" q={q:.2g}" if np.isfinite(q) else ""))


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per entry, region and statistic; one column per variant (:func:`cell` strings)."""
    if df.empty:
        return pd.DataFrame()
    keys = ["dataset", "model", "hook", "feature_set", "layer", "region", "stat"]
    df = df.assign(cell=[cell(r) for _, r in df.iterrows()])
    out = df.pivot_table(index=keys, columns="variant", values="cell", aggfunc="first", sort=False).reset_index()
    return out[[*keys, *[v for v in VARIANTS if v in out.columns]]]


def _complete(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the columns a table written before the shuffles and q (or by hand) lacks, as NaN."""
    missing = [c for c in (*SHUFFLE_COLUMNS, "q") if c not in df.columns]
    return df.assign(**dict.fromkeys(missing, np.nan)) if missing else df


def calibration(df: pd.DataFrame) -> tuple[int, int]:
    """(count of shuffled-coordinate layer p-values <= :data:`ALPHA`, count of finite ones) over every shuffle of every
    cell (one per cell where a file has no shuffles): under the null about :data:`ALPHA` of them."""
    df = _complete(df)
    rows = df.loc[df["variant"] == "shuffled"]
    many = np.isfinite(rows["n_shuffles"].to_numpy(dtype=float))
    single = rows.loc[~many, "p"].to_numpy(dtype=float)
    single = single[np.isfinite(single)]
    return (int((single <= ALPHA).sum()) + int(rows.loc[many, "shuffles_p05"].sum()),
            int(single.size) + int(rows.loc[many, "n_shuffles"].sum()))


def ks_flags(df: pd.DataFrame, level: float = 0.01) -> tuple[int, int]:
    """(cells whose shuffles' one-sided KS p < ``level``, cells with shuffles): about ``level`` of them by chance
    (more: the cells share their data's null and, across statistics and layers, their shuffles)."""
    ks = _complete(df).loc[df["variant"] == "shuffled", "shuffles_ks_p"].to_numpy(dtype=float)
    ks = ks[np.isfinite(ks)]
    return int((ks < level).sum()), int(ks.size)


def calibration_text(df: pd.DataFrame) -> str:
    """The shuffled control's calibration in one sentence (the report's HTML and markdown say the same)."""
    k, m = calibration(df)
    if m == 0:
        return "Calibration: no shuffled-coordinate control in these files."
    f, c = ks_flags(df)
    ks = (f" The one-sided KS test of each cell's shuffle p-values against uniform is below 0.01 in {f} of {c} cells "
          f"(about {0.01 * c:.1f} expected)." if c else "")
    return (f"Calibration: {k} of {m} shuffled-coordinate layer p-values are <= 0.05 ({100 * k / m:.1f}%; 5% expected "
            f"without signal; the count statistics' p-values are conservative under ties).{ks}")


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
    perms = df["perms"].to_numpy(dtype=float)
    perms = sorted({int(p) for p in perms[np.isfinite(perms)]})
    legend = [f"- **{s}**: {d}." for s, d in STATS.items()] + [f"- **{VARIANTS[v][0]}**: {VARIANTS[v][1]}." for v in variants]
    return "\n".join([
        "## Layer-level tests", "",
        "Whole-layer statistics against their null under joint permutations of the places (one permutation moves "
        "every unit's values together, so the null keeps the correlation between units). Each cell: the excess of "
        "the statistic over its null mean, [observed - null 97.5%, observed - null 2.5%] (the null's 95% range carried "
        "over to the excess), the permutation p-value (1 + #{null >= observed}) / (P + 1) and q, Benjamini-Hochberg "
        "over the layers and regions of the same column, statistic and feature set; fractions in "
        f"percentage points. Permutations: {', '.join(map(str, perms)) or '–'} (see `layer_perms` in moran.nc).",
        "", *lines, "", calibration_text(df), "", *legend]) + "\n"
