"""SAE runs: training curves, a summary per run, and a feature card per top feature (its top
prompts, activation histogram and maps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mechflow.report.figures import draw_histogram, training_figure
from mechflow.report.html import Markup, Page, Section, badge, fmt, join, note, pct, table, tag
from mechflow.report.maps import feature_grid_figure
from mechflow.report.sections.context import Context
from mechflow.report.stats import significant_positive, top_features

N_TOP_PROMPTS = 8


def sae_cfg(ctx: Context, e) -> dict:
    """The run's cfg.json (SAELens fields + a ``mechflow`` section), or {} when absent."""
    p = Path(str(e["dir"])) / "cfg.json"
    if not ctx.study.exists("sae", p):
        return {}
    try:
        return json.loads(ctx.study.path(p).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def build(ctx: Context, page: Page, sec: Section) -> None:
    study = ctx.study
    have = ctx.available(sec, "sae", "No SAE runs in this study (add sae.runs to the config).", "SAE runs",
                         file_of=lambda e: Path(str(e["dir"])) / "training.nc")
    if not have:
        return
    runs = [(ctx.entry_title(e), study.dataset(Path(str(e["dir"])) / "training.nc")) for e in have]
    sec.add(page.figure(training_figure(runs),
                        "Training curves against step: loss (log scale), fraction of variance unexplained (FVU; 0 = "
                        "perfect reconstruction), L0 (mean number of active features per input) and the fraction "
                        "of dead features (never active in the recent window).", "sae-training", "SAE training curves"))
    rows, held_out = [], False
    for (title, hist), e in zip(runs, have):
        c = sae_cfg(ctx, e)
        run = (c.get("mechflow") or {}).get("run") or {}
        metrics = (c.get("mechflow") or {}).get("metrics") or {}
        last = {v: float(hist[v].values[-1]) if v in hist and hist.sizes.get("step", 0) else np.nan
                for v in ("loss", "fvu", "l0", "dead_fraction")}
        train, val = metrics.get("train") or {}, metrics.get("val") or {}
        held_out |= bool(val)

        def both(key: str, fn=fmt, train=train, val=val, last=last) -> str:
            t = train.get(key, last.get(key, np.nan))
            return f"{fn(t)} / {fn(val[key])}" if key in val else fn(t)

        rows.append((title, c.get("architecture") or run.get("arch", "–"), fmt(c.get("d_in")), fmt(c.get("d_sae")),
                     run.get("k", (c.get("activation_fn_kwargs") or {}).get("k", "–")),
                     fmt(int(hist["step"].values[-1]) if hist.sizes.get("step", 0) else None),
                     fmt(last["loss"]), both("fvu"), both("l0"), both("dead_fraction", pct),
                     both("dense_fraction", pct) if "dense_fraction" in train or "dense_fraction" in val else "–"))
    suffix = " (train / held-out)" if held_out else ""
    sec.add(table(["run", "architecture", "d_in", "features", "k", "steps", "final loss", f"FVU{suffix}", f"L0{suffix}",
                   f"dead{suffix}", f"dense{suffix}"], rows, numeric=[2, 3, 4, 5, 6, 7, 8, 9, 10]))
    sec.add(tag("p", "Held-out: prompts of the run's validation split (val_fraction, drawn by the run's seed: "
                     "whole blocks of pooled vectors, or, for token-level runs (sae.level: tokens), whole prompts "
                     "with all their tokens, the metrics then per token; never trained on), evaluated with the "
                     "final weights. A held-out FVU far above the training "
                     "FVU means the dictionary memorised its training prompts. Dense: features active on more than 10% "
                     "of inputs." if held_out else
                     "No validation split (set val_fraction in the run): these numbers are on training data only.",
                cls="subtitle"))
    _corpus_table(ctx, sec, have, runs)
    _splice_table(ctx, sec, have)
    for e in have:
        _cards(ctx, page, e)


def _corpus_table(ctx: Context, sec: Section, entries, runs) -> None:
    """Held-out corpus metrics of the runs trained on a text corpus (``sae.level: corpus``; training.nc ``heldout_*``)."""
    rows = []
    for e, (title, hist) in zip(entries, runs):
        if "heldout_fvu" not in hist:
            continue
        corpus = str(sae_cfg(ctx, e).get("metadata", {}).get("dataset_path", "") or hist.attrs.get("dataset", ""))
        rows.append((title, corpus, fmt(int(hist["heldout_tokens"])), fmt(float(hist["heldout_fvu"])),
                     fmt(float(hist["heldout_l0"])), pct(float(hist["heldout_dead_fraction"])),
                     pct(float(hist["heldout_dense_fraction"]))))
    if not rows:
        return
    sec.add(tag("h4", "Held-out corpus tokens"),
            table(["run", "corpus", "tokens", "FVU", "L0", "dead", "dense"], rows, numeric=[2, 3, 4, 5, 6]),
            tag("p", "SAEs trained on a text corpus (sae.level: corpus), evaluated with the final weights on every token "
                     "(but position 0, the attention sink) of the corpus's held-out documents, never trained on. Dead: "
                     "never active on those tokens; dense: active on more than 10% of them. Their placename features "
                     "(features.nc) come from prompts the SAE never saw.", cls="subtitle"))


def _splice_table(ctx: Context, sec: Section, entries) -> None:
    """Loss recovered per run where the workflow spliced the SAE into its model: on held-out prompts (``splice.nc``)
    and, for runs trained on a text corpus, on every token of its held-out windows (``corpus_splice.nc``)."""
    study = ctx.study
    rows, splits, trained_on, corpora = [], set(), set(), set()
    for e in entries:
        for key in ("splice", "corpus_splice"):
            if not e.get(key) or not study.exists("sae", e[key]):
                continue
            ds = study.dataset(e[key])
            if key == "corpus_splice":
                corpora.add(str(ds.attrs.get("corpus", "?")))
                on = f"corpus held-out tokens ({ds.attrs.get('corpus', '?')}, {ds.sizes.get('window', 0)} windows)"
            else:
                splits.add(str(ds.attrs.get("split", "?")))
                trained_on.add(str(ds.attrs.get("sae_trained_on", "")))
                on = f"prompts ({ds.attrs.get('split', '?')}, {ds.sizes.get('prompt', 0)})"
            rows.append((ctx.entry_title(e), on, fmt(int(ds["n_predictions"])), fmt(float(ds["ce_clean"])),
                         fmt(float(ds["ce_spliced"])), fmt(float(ds["ce_zero"])),
                         Markup(f"<b>{pct(float(ds['loss_recovered']))}</b>"), fmt(float(ds["kl_spliced"])),
                         fmt(float(ds["kl_zero"]))))
    if not rows:
        return
    scored = [f"prompts from the run's {' / '.join(sorted(splits))} split"] if splits else []
    if corpora:
        scored.append(f"held-out windows of the text corpus the SAE trained on ({', '.join(sorted(corpora))}: documents "
                      "none of whose tokens it saw; a seeded sample of at most sae.corpus_splice_windows)")
    sec.add(tag("h4", "Loss recovered in the model"),
            table(["run", "scored on", "predictions", "CE clean", "CE spliced", "CE zero-ablated", "loss recovered",
                   "KL spliced", "KL zero"], rows, numeric=[2, 3, 4, 5, 6, 7, 8]),
            tag("p", f"Next-token cross-entropy (nats per predicted token) of {' and of '.join(scored)}, with the "
                     "residual stream after the SAE's layer replaced by its reconstruction (spliced) or by zeros, at "
                     "every real token but the one pooling leaves out (the attention sink; position 0 of a corpus window), "
                     "which keeps its clean activation and whose own prediction is scored; "
                     "loss recovered = (CE zero − CE spliced) / (CE zero − CE clean), KL in nats from the clean model. "
                     + ("These SAEs were trained on mean-pooled prompt vectors, not on single tokens, so the splice "
                        "tests them outside their training distribution: a low number says a pooled dictionary is "
                        "not a model of the token-level residual stream." if trained_on & {"mean", "max"} else ""),
                cls="subtitle"))


def _cards(ctx: Context, page: Page, e) -> None:
    study = ctx.study
    title = ctx.entry_title(e)
    sub = page.section(f"Feature cards: {title}", f"sae-cards-{title}", level=3)
    feats_path = Path(str(e["dir"])) / "features.nc"
    if not study.exists("sae", feats_path):
        sub.add(note("features.nc is not available: no feature cards."))
        return
    feats = study.dataset(feats_path)["features"].transpose("prompt", "feature")
    spatial = study.spatial_for("sae", e)
    moran = study.moran(spatial) if spatial is not None else None
    X = np.asarray(feats.values, dtype=np.float64)
    if moran is not None:
        ids = top_features(moran, ctx.top_n)
        why = "largest mean Moran's I over the regions"
    else:  # no spatial analysis: the most variable features
        ids = [feats["feature"].values[i].item() for i in np.argsort(-X.var(0), kind="stable")[: ctx.top_n]]
        why = "largest variance (no spatial analysis of this run)"
    sub.add(tag("p", f"The {len(ids)} features with the {why}: each card lists the prompts that activate it most, "
                     "the histogram of its activations and its map in every region."))
    dataset = str(e["dataset"])
    table_ = study.prompts(dataset)
    texts = (table_["text"].values if table_ is not None else feats["text"].values).astype(str)
    regions_col = (table_["region"].values if table_ is not None else feats["region"].values).astype(str)
    rows = ctx.rows_of(dataset, feats["prompt"].values if "prompt" in feats.coords else None, X.shape[0])
    geoms = [g for g in (ctx.geometry(dataset, r) for r in ctx.regions(dataset)) if g is not None]
    sig = significant_positive(moran) if moran is not None else None
    col_of = {f.item() if hasattr(f, "item") else f: i for i, f in enumerate(feats["feature"].values)}
    for fid in ids:
        v = X[rows, col_of[fid]]  # per prompt of the table
        order = np.argsort(-v, kind="stable")[:N_TOP_PROMPTS]
        badges = []
        if moran is not None:
            for r in moran["region"].values:
                I = float(moran["I"].sel(region=r, feature=fid))
                s = bool(sig.sel(region=r, feature=fid))
                badges.append(badge(f"{r} I = {I:.3f}" if np.isfinite(I) else f"{r}: constant", "sig" if s else ""))
        active = float((v != 0).mean())
        badges.append(badge(f"active on {100 * active:.1f}% of prompts"))
        body = [tag("h4", f"feature {fid}"), tag("div", join(badges))]
        if geoms:
            png = feature_grid_figure(
                geoms, [[v[g.index] for g in geoms]], [[g.region for g in geoms]],
                leads=[lambda ax, v=v: draw_histogram(ax, v)], lead_titles=["activations"], panel=2.35)
            body.append(page.figure(png, f"Feature {fid}: histogram of its activations and its maps (z-score within "
                                         "each region).", f"sae-card-{title}-{fid}", f"feature {fid} card"))
        else:
            body.append(note("No region geometry to map this feature."))
        body.append(tag("div", f"Top {len(order)} prompts", cls="k"))
        body.append(prompt_list([(texts[j], regions_col[j], float(v[j])) for j in order]))
        sub.add(tag("div", *body, cls="card"))


def prompt_list(items) -> Markup:
    """An ordered list of (prompt text, region, value), in two columns."""
    return tag("ol", *[tag("li", tag("span", t), tag("span", f" · {r} · {fmt(val)}", cls="ctrl"))
                       for t, r, val in items], cls="prompts")


__all__ = ["build", "sae_cfg", "prompt_list"]
