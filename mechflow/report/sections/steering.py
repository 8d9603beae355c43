"""Steering: the effect of each steering vector against its scale (target log-odds, KL to the unsteered model,
entropy) on held-out prompts, a table of the numbers, and the greedy generations at each scale."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from mechflow.report.html import Page, Section, fmt, pct, table, tag
from mechflow.report.plotting import new_figure, to_png
from mechflow.report.sections.context import Context

TARGET_COLORS = ("#d1495b", "#3b6ea8", "#2a9d8f", "#e07b39")


def build(ctx: Context, page: Page, sec: Section) -> None:
    study = ctx.study
    have = ctx.available(sec, "steering", "No steering results in this study (set steering.enabled: true and name "
                         "vectors under steering.vectors).", "steering results")
    if not have:
        return
    sec.add(tag("p", "A steering vector is added to the model's activations at one hook and layer, at every steered token, "
                     "with a range of scales; the next-token distribution after each held-out prompt is compared with the "
                     "unsteered model's. None of these prompts was used to make the vector."))
    for e in have:
        _one(page, study.dataset(e["path"]), e)


def _mean_ci(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over prompts (axis 1) and its 95% normal-approximation half-width, per scale."""
    n = max(1, x.shape[1])
    return x.mean(1), 1.96 * x.std(1, ddof=1 if n > 1 else 0) / np.sqrt(n)


def _label(e: Mapping[str, Any]) -> str:
    return f"{e.get('name')}: {e.get('dataset')} / {e.get('model')}"


def _describe(ds: xr.Dataset) -> str:
    a = ds.attrs
    if a.get("source") == "means":
        made = (f"the difference of means of {a.get('pooling', '?')}-pooled activations between {a.get('n_train_positive', '?')} "
                f"training prompts of {a.get('positive')} and {a.get('n_train_negative', '?')} of {a.get('negative')} "
                f"(text: {a.get('template')})")
    else:
        kind = "SAE decoder row" if a.get("source") == "sae" else "semi-NMF factor"
        made = f"{kind} {a.get('feature')} of run {a.get('run')}"
        if "top_moran_region" in a:
            made += f" (highest Moran's I: {fmt(float(a['top_moran_I']))} in {a['top_moran_region']})"
    unit = (f"scale 1 adds a vector of norm {fmt(float(a.get('unit_norm', np.nan)))}, the mean activation norm there"
            if a.get("scale_unit") == "activation_norm" else "scale 1 adds the vector as made")
    return (f"Vector: {made}, at {a.get('hook')} layer {a.get('layer')}; its norm is {fmt(float(a.get('vector_norm', np.nan)))}, "
            f"{unit}. Steered from token {a.get('from_position', 0)} on. Measured on {ds.sizes['prompt']} prompts "
            f"({a.get('eval_from', 'held out')}; region {a.get('eval_region', 'all')}; text: {a.get('eval_template')}).")


def effects_figure(ds: xr.Dataset, title: str) -> bytes:
    """Mean change of each target's log-probability and of the log-odds, mean KL to the unsteered model and mean
    entropy, against the scale (95% bands over prompts)."""
    fig = new_figure(12.0, 3.3)
    a, b, c = fig.subplots(1, 3)
    scale = ds["scale"].values
    targets = [str(t) for t in ds["target"].values]
    if "delta_log_odds" in ds:
        m, ci = _mean_ci(ds["delta_log_odds"].values)
        a.plot(scale, m, marker="o", ms=4, lw=2, color="#394252", label=f"log-odds {targets[0]!r} vs {targets[1]!r}")
        a.fill_between(scale, m - ci, m + ci, color="#394252", alpha=0.15, lw=0)
    for i, t in enumerate(targets):
        m, _ = _mean_ci(ds["delta_target_logprob"].values[:, :, i])
        a.plot(scale, m, ls="--", lw=1.3, color=TARGET_COLORS[i % len(TARGET_COLORS)], label=f"log P({t!r})")
    a.axhline(0, color="#9aa5b1", lw=0.8)
    a.set_xlabel(f"scale ({ds.attrs.get('scale_unit', '')})")
    a.set_ylabel("change from unsteered (nats)")
    a.set_title(f"{title}: target tokens", loc="left")
    a.legend(fontsize=7)
    m, ci = _mean_ci(ds["kl"].values)
    b.plot(scale, m, marker="o", ms=4, lw=2, color="#e07b39")
    b.fill_between(scale, np.maximum(m - ci, 0), m + ci, color="#e07b39", alpha=0.15, lw=0)
    b.set_xlabel("scale")
    b.set_ylabel("KL(unsteered ‖ steered), nats")
    b.set_title("divergence from the unsteered model", loc="left")
    m, ci = _mean_ci(ds["entropy"].values)
    c.plot(scale, m, marker="o", ms=4, lw=2, color="#2a9d8f", label="steered")
    c.fill_between(scale, m - ci, m + ci, color="#2a9d8f", alpha=0.15, lw=0)
    c.axhline(float(ds["clean_entropy"].mean()), color="#9aa5b1", lw=1, ls="--", label="unsteered")
    c.set_xlabel("scale")
    c.set_ylabel("entropy (nats)")
    c.set_title("next-token entropy", loc="left")
    c.legend(fontsize=7)
    return to_png(fig)


def effects_rows(ds: xr.Dataset) -> list[tuple]:
    """One row per scale: added norm, mean Δlog-odds and the fraction of prompts it moves up, KL, entropy, mean target
    probabilities, the most common top token."""
    rows = []
    for s in range(ds.sizes["scale"]):
        one = ds.isel(scale=s)
        odds = one["delta_log_odds"].values if "delta_log_odds" in ds else np.full(ds.sizes["prompt"], np.nan)
        probs = np.exp(one["target_logprob"].values).mean(0)
        top, n = Counter(one["top_token"].values.astype(str).tolist()).most_common(1)[0]
        rows.append((fmt(float(one["scale"])), fmt(float(one["added_norm"])), fmt(float(np.mean(odds))),
                     pct(float(np.mean(odds > 0))), fmt(float(one["kl"].mean())), fmt(float(np.median(one["kl"].values))),
                     fmt(float(one["entropy"].mean())), *[fmt(float(p)) for p in probs[:2]], f"{top!r} ({n})"))
    return rows


def _one(page: Page, ds: xr.Dataset, e: Mapping[str, Any]) -> None:
    title = _label(e)
    sub = page.section(f"Steering {title}", f"steering-{e.get('dataset')}-{e.get('model')}-{e.get('name')}", level=3)
    sub.add(tag("p", _describe(ds), cls="subtitle"))
    targets = [str(t) for t in ds["target"].values]
    sub.add(page.figure(effects_figure(ds, str(e.get("name"))),
                        f"{title}. Left: mean change from the unsteered model of the log-odds of {targets[0]!r} over "
                        f"{targets[1]!r} (solid, 95% band over prompts) and of each target's log-probability (dashed). "
                        "Middle: mean KL divergence of the steered next-token distribution from the unsteered one. "
                        "Right: mean entropy of the steered distribution (dashed: unsteered).",
                        f"steering-{e.get('dataset')}-{e.get('model')}-{e.get('name')}", f"steering effects, {title}"))
    headers = ["scale", "added norm", "Δ log-odds", "prompts moved up", "mean KL", "median KL", "entropy",
               *[f"P({t!r})" for t in targets[:2]], "top next token (prompts)"]
    sub.add(table(headers, effects_rows(ds), numeric=list(range(9))))
    if ds.sizes.get("sample", 0) and "generation" in ds:
        heads = ["scale", *[str(t) for t in ds["sample_text"].values]]
        gens = [(fmt(float(ds["scale"].values[s])), *[str(g) for g in ds["generation"].values[s]])
                for s in range(ds.sizes["scale"])]
        sub.add(tag("h4", f"Greedy generations (at most {ds.attrs.get('max_new_tokens', '?')} new tokens)"), table(heads, gens))
