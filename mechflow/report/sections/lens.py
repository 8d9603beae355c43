"""Reading the layers: latent-language curves (logit vs tuned lens), the tuned lens's KL by layer, and the
calibration of internal consistency."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from mechflow.report.html import Page, Section, fmt, pct, table, tag
from mechflow.report.plotting import new_figure, to_png
from mechflow.report.sections.context import Context

#: colours of the three latent-language roles and of the consistency scores
ROLE_COLORS = {"target": "#d1495b", "english": "#3b6ea8", "source": "#2a9d8f"}
SCORE_COLORS = {"consistency_logit": "#3b6ea8", "consistency_tuned": "#e07b39", "final_prob": "#6b7280"}
LENS_STYLE = {"logit": "-", "tuned": "--"}


def build(ctx: Context, page: Page, sec: Section) -> None:
    have = ctx.available(sec, "lens", "No lens results in this study (set lens.enabled: true; configs/lens.yaml is a "
                         "study of a few minutes).", "lens results")
    if not have:
        return
    sec.add(tag("p", "Each layer's residual stream at the answer position, decoded as the model decodes its last layer: "
                     "through the final norm and the unembedding (", tag("b", "logit lens"), "), or after a per-layer "
                     "affine translator fitted by KL to the final distribution on the study's own prompts (",
                     tag("b", "tuned lens"), ", Belrose et al. 2023). Solid lines: logit lens; dashed: tuned lens."))
    for kind, builder in (("tuned_lens", _tuned), ("latent_language", _latent), ("consistency", _consistency)):
        for e in have:
            if e.get("kind") == kind:
                builder(ctx, page, e)


def _plain_ticks(ax) -> None:
    """Plain y tick labels on a log / symlog axis (mathtext is off for the whole report)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _title(e: Mapping[str, Any]) -> str:
    return " / ".join(str(e[k]) for k in ("dataset", "model") if e.get(k) is not None)


# ---- tuned lens -------------------------------------------------------------------------------------


def _tuned(ctx: Context, page: Page, e: Mapping[str, Any]) -> None:
    ds = ctx.study.dataset(e["path"])
    title = _title(e)
    sub = page.section(f"Tuned lens: {title}", f"lens-tuned-{title}", level=3)
    layers = ds["layer"].values
    fig = new_figure(7.0, 3.0)
    ax = fig.subplots()
    for var, label, ls in (("kl_logit", "logit lens", "-"), ("kl_init", "tuned lens, start", ":"), ("kl_tuned", "tuned lens", "--")):
        ax.plot(layers, ds[var].values, ls=ls, marker="o", ms=3, lw=1.5, label=label)
    ax.set_yscale("symlog", linthresh=0.1)
    _plain_ticks(ax)
    ax.set_xlabel("layer")
    ax.set_ylabel("KL(final ‖ lens), nats")
    ax.legend(loc="lower left")
    ax.set_title(f"{title}: divergence from the model's own next-token distribution", loc="left")
    sub.add(page.figure(to_png(fig), f"Mean KL divergence of each layer's lens distribution from the final one on "
                                     f"{ds.attrs.get('n_holdout', '?')} held-out token positions ({ds.attrs.get('n_train', '?')} "
                                     "used to fit). Lower is a more faithful read-out of what the layer already predicts.",
                        f"lens-kl-{title}", f"tuned lens KL by layer, {title}"))
    mid = slice(len(layers) // 3, 2 * len(layers) // 3 or 1)
    rows = [(label, fmt(float(ds[v].mean())), fmt(float(ds[v].values[mid].mean())))
            for v, label in (("kl_logit", "logit lens"), ("kl_init", "tuned lens, start"), ("kl_tuned", "tuned lens"))]
    sub.add(table(["lens", "mean KL (nats)", "mean KL, middle third of layers"], rows, numeric=[1, 2]))


# ---- latent language -------------------------------------------------------------------------------


def _mean_ci(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over prompts (axis 0) and its 95% normal-approximation half-width."""
    n = max(1, p.shape[0])
    return p.mean(0), 1.96 * p.std(0, ddof=1 if n > 1 else 0) / np.sqrt(n)


def latent_language_figure(ds: xr.Dataset, title: str) -> bytes:
    """Mean probability of the answer in the target language, English and the source language by layer
    (solid: logit lens, dashed: tuned lens; 95% bands), and the mean entropy."""
    fig = new_figure(12.0, 3.4)
    a, r, b = fig.subplots(1, 3, width_ratios=[1.5, 1, 0.8])
    layers = ds["layer"].values
    for lens in ds["lens"].values:
        ls = LENS_STYLE.get(str(lens), ":")
        for role in ds["language"].values:
            p = np.exp(ds["logprob"].sel(lens=lens, language=role).values.astype(np.float64))  # [prompt, layer]
            m, ci = _mean_ci(p)
            c = ROLE_COLORS.get(str(role), "#444")
            a.plot(layers, m, ls=ls, color=c, lw=1.7, label=f"{role} ({lens} lens)")
            a.fill_between(layers, m - ci, m + ci, color=c, alpha=0.12, lw=0)
            rank = ds["rank"].sel(lens=lens, language=role).values.astype(np.float64)
            r.plot(layers, np.median(rank, 0) + 1, ls=ls, color=c, lw=1.5)
        h, _ = _mean_ci(ds["entropy"].sel(lens=lens).values.astype(np.float64))
        b.plot(layers, h, ls=ls, color="#394252", lw=1.6, label=f"{lens} lens")
    r.set_yscale("log")
    _plain_ticks(r)
    r.invert_yaxis()
    r.set_xlabel("layer")
    r.set_ylabel("median rank + 1 (1 = top token)")
    r.set_title("rank of the answer tokens", loc="left")
    a.set_ylim(bottom=0)
    a.set_xlabel("layer")
    a.set_ylabel("probability of the answer tokens")
    a.set_title(f"{title}: which language's word each layer predicts", loc="left")
    a.legend(fontsize=7, ncol=2, loc="upper left")
    b.set_xlabel("layer")
    b.set_ylabel("entropy (nats)")
    b.set_title("next-token entropy", loc="left")
    b.legend(fontsize=7)
    return to_png(fig)


def _latent(ctx: Context, page: Page, e: Mapping[str, Any]) -> None:
    ds = ctx.study.dataset(e["path"])
    title = _title(e)
    sub = page.section(f"Latent language: {title}", f"lens-latent-{title}", level=3)
    n = ds.sizes["prompt"]
    pairs = sorted({f"{s}→{t}" for s, t in zip(ds["source_language"].values, ds["target_language"].values)})
    sub.add(tag("p", f"{n} few-shot word-translation prompts ({', '.join(pairs)}; Wendler et al. 2024), read at the last "
                     f"token; answer tokens: {ds.attrs.get('answer_token_mode', 'first')} token of each word "
                     f"({ds.attrs.get('dropped_overlapping', 0)} prompts left out because two roles share a token). "
                     f"The model translates {pct(float(ds['correct'].mean()))} of them correctly (its top-1 next token "
                     "is the target word's). A rise of the English curve in the middle layers before the target "
                     "curve takes over is the \"latent English\" of the paper.", cls="subtitle"))
    sub.add(page.figure(latent_language_figure(ds, title),
                        f"{title}: mean next-token probability of the answer in the target language (red), of the same "
                        "concept in English (blue) and in the source language (green), by layer; bands: 95% intervals of "
                        "the mean over prompts. Middle: median rank of the answer tokens among the whole vocabulary (top = "
                        "1). Right: mean entropy of the lens distribution.",
                        f"lens-latent-{title}", f"latent-language curves, {title}"))
    rows = []
    for lens in ds["lens"].values:
        p = np.exp(ds["logprob"].sel(lens=lens).values.astype(np.float64)).mean(0)  # [layer, language]
        roles = list(ds["language"].values)
        en, tg = p[:, roles.index("english")], p[:, roles.index("target")]
        peak = int(np.argmax(en))
        first_target = int(np.argmax(tg >= en)) if (tg >= en).any() else None
        rows.append((str(lens), peak, fmt(float(en[peak])), fmt(float(tg[peak])), fmt(float(tg[-1])), fmt(float(en[-1])),
                     "–" if first_target is None else first_target))
    sub.add(table(["lens", "layer of peak English", "P(English) there", "P(target) there", "P(target), last layer",
                   "P(English), last layer", "first layer target ≥ English"], rows, numeric=[1, 2, 3, 4, 5, 6]))
    per_pair = []
    for pair in pairs:
        s, t = pair.split("→")
        sel = (ds["source_language"].values == s) & (ds["target_language"].values == t)
        lp = np.exp(ds["logprob"].isel(prompt=np.flatnonzero(sel)).sel(lens=ds["lens"].values[0]).values.astype(np.float64))
        en = lp[:, :, list(ds["language"].values).index("english")].mean(0)
        per_pair.append((pair, int(sel.sum()), pct(float(ds["correct"].values[sel].mean())), int(np.argmax(en)), fmt(float(en.max()))))
    sub.add(tag("details", tag("summary", f"By language pair ({ds['lens'].values[0]} lens)"),
                table(["pair", "prompts", "accuracy", "layer of peak English", "peak P(English)"], per_pair, numeric=[1, 2, 3, 4])))


# ---- internal consistency --------------------------------------------------------------------------


def _score_label(score: str) -> str:
    if score.startswith("consistency_"):
        return f"internal consistency ({score.split('_', 1)[1]} lens)"
    return "final-layer option probability"


def consistency_figure(ds: xr.Dataset, title: str) -> bytes:
    """Reliability diagram of each confidence score, the distribution of internal consistency for right and
    wrong answers, and the agreement of each layer's latent answer with the final one."""
    fig = new_figure(12.0, 3.5)
    a, b, c = fig.subplots(1, 3)
    a.plot([0, 1], [0, 1], color="#9aa5b1", lw=0.8)
    for i, score in enumerate(ds["score"].values):
        s = str(score)
        cnt = ds["bin_count"].sel(score=s).values
        ok = cnt > 0
        conf = ds["bin_confidence"].sel(score=s).values[ok]
        acc = ds["bin_accuracy"].sel(score=s).values[ok]
        a.plot(conf, acc, marker="os^"[i % 3], ms=4, lw=1.5, color=SCORE_COLORS.get(s, "#444"),
               label=f"{_score_label(s)}, ECE {float(ds['ece'].sel(score=s)):.3f}")
    a.set_xlim(0, 1)
    a.set_ylim(0, 1)
    a.set_xlabel("confidence (bin mean)")
    a.set_ylabel("accuracy")
    a.set_title(f"{title}: calibration", loc="left")
    a.legend(fontsize=6.5, loc="upper left")
    lens0 = "logit" if "logit" in ds["lens"].values else str(ds["lens"].values[0])
    ic = ds["consistency"].sel(lens=lens0).values
    ok = ds["correct"].values.astype(bool)
    bins = np.linspace(0, 1, 11)
    b.hist([ic[ok], ic[~ok]], bins=bins, color=["#2a9d8f", "#d1495b"], label=[f"right ({ok.sum()})", f"wrong ({(~ok).sum()})"])
    b.set_xlabel(f"internal consistency ({lens0} lens)")
    b.set_ylabel("questions")
    b.set_title("consistency of right and wrong answers", loc="left")
    b.legend(fontsize=7)
    final = ds["final"].values
    for lens in ds["lens"].values:
        agree = ds["latent"].sel(lens=lens).values == final[:, None]  # [prompt, layer]
        for sel, color, label in ((ok, "#2a9d8f", "right"), (~ok, "#d1495b", "wrong")):
            if sel.any():
                c.plot(ds["layer"].values, agree[sel].mean(0), ls=LENS_STYLE.get(str(lens), ":"), color=color, lw=1.5,
                       label=f"{label}, {lens} lens")
    c.set_ylim(0, 1.02)
    c.set_xlabel("layer")
    c.set_ylabel("latent answer = final answer")
    c.set_title("agreement by layer", loc="left")
    c.legend(fontsize=7)
    return to_png(fig)


def _consistency(ctx: Context, page: Page, e: Mapping[str, Any]) -> None:
    ds = ctx.study.dataset(e["path"])
    title = _title(e)
    sub = page.section(f"Internal consistency: {title}", f"lens-consistency-{title}", level=3)
    n = ds.sizes["prompt"]
    example = str(ds["question"].values[0]) if n else ""
    sub.add(tag("p", f"{n} multiple-choice questions (e.g. “{example}”), each read at the token after “Answer:”. A layer's "
                     "latent answer is the option letter its lens rates highest; internal consistency is the fraction of "
                     f"layers ({ds.attrs.get('layers_used', 'all')}) whose latent answer equals the model's final answer "
                     f"(Xie et al. 2024). The model answers {pct(float(ds['correct'].mean()))} correctly.", cls="subtitle"))
    sub.add(page.figure(consistency_figure(ds, title),
                        f"{title}. Left: accuracy against confidence in equal-width bins, for internal consistency and for "
                        "the final-layer probability of the chosen option (the diagonal is perfect calibration). Middle: "
                        "internal consistency of right and wrong answers. Right: fraction of questions whose latent answer "
                        "at each layer equals the final one.", f"lens-consistency-{title}", f"consistency calibration, {title}"))
    rows = [(_score_label(str(s)), fmt(float(ds["ece"].sel(score=s))), fmt(float(ds["auroc"].sel(score=s))),
             fmt(float(ds["consistency"].sel(lens=str(s).split("_", 1)[1]).mean())) if str(s).startswith("consistency_")
             else fmt(float(ds["final_prob"].mean())))
            for s in ds["score"].values]
    sub.add(table(["confidence score", "ECE", "AUROC (right vs wrong)", "mean"], rows, numeric=[1, 2, 3]))
    if "vote_majority" in ds:
        vrows = [("greedy answer (no reasoning)", pct(float(ds["correct"].mean()))),
                 ("single sampled path", pct(float(ds["accuracy_sampled"]))),
                 (f"majority vote of {ds.sizes['sample']} paths", pct(float(ds["accuracy_majority"])))]
        vrows += [(f"consistency-weighted vote ({lens} lens)", pct(float(ds["accuracy_weighted"].sel(lens=lens))))
                  for lens in ds["lens"].values]
        sub.add(tag("h4", "Voting over sampled reasoning paths"), table(["answer", "accuracy"], vrows, numeric=[1]))
