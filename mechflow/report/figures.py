"""Charts of the report (everything that is not a map): Moran's I distributions, probes, SAE
training curves, activation histograms, semi-NMF loss and runtimes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.patches import Patch

from mechflow.report.plotting import KIND_COLORS, new_figure, to_png

REGION_COLORS = ("#3b6ea8", "#d1495b", "#2a9d8f", "#edae49", "#8e5bb5", "#66a182", "#7f6a55")


@dataclass
class Series:
    """One feature set's Moran's I at one layer of one region.

    I: ``[n_features]``; I_control: the shuffled-coordinates control ``[n_features]`` or None;
    frac_sig / frac_sig_control: fraction significant with positive autocorrelation (q < 0.05).
    """

    key: str
    label: str
    color: str
    layer: int
    I: np.ndarray
    I_control: np.ndarray | None
    frac_sig: float
    frac_sig_control: float
    hatch: str | None = None


def _violin(ax, values: np.ndarray, pos: float, width: float, color: str, alpha: float = 0.6,
            hatch: str | None = None) -> None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return
    if v.size < 3 or np.ptp(v) < 1e-12:
        ax.plot([pos - width / 2, pos + width / 2], [np.median(v)] * 2, color=color, lw=2)
        return
    parts = ax.violinplot([v], positions=[pos], widths=width, showextrema=False, showmedians=False)
    for body in parts["bodies"]:
        body.set_facecolor(color)
        body.set_edgecolor(color)
        body.set_alpha(alpha)
        body.set_linewidth(0.6)
        if hatch:
            body.set_hatch(hatch)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    ax.vlines(pos, q1, q3, color="#1f2430", lw=1.6, zorder=3)
    ax.scatter([pos], [med], s=9, color="white", edgecolors="#1f2430", linewidths=0.6, zorder=4)
    ax.scatter([pos], [v.max()], s=8, marker="_", color=color, zorder=3)


def _layout(series: Sequence[Series], layers: Sequence[int], keys: Sequence[str]):
    """x position and slot width of each (layer, key) present."""
    pos = {}
    for li, layer in enumerate(layers):
        here = [k for k in keys if any(s.layer == layer and s.key == k for s in series)]
        slot = 0.84 / max(len(here), 1)
        for i, k in enumerate(here):
            pos[(layer, k)] = (li + (i - (len(here) - 1) / 2) * slot, slot)
    return pos


def moran_figure(panels: Sequence[tuple[str, Sequence[Series]]]) -> bytes:
    """One row per region: left, violins of Moran's I per layer and feature set with the shuffled
    control as a thin grey violin beside each; right, fraction significant (bars) with the control's
    fraction as a black tick."""
    n = len(panels)
    fig = new_figure(11.0, 2.75 * n + 0.55)
    gs = fig.add_gridspec(n, 2, width_ratios=[1.75, 1])
    keys, labels, colors, hatches = [], {}, {}, {}
    for _, ss in panels:
        for s in ss:
            if s.key not in keys:
                keys.append(s.key)
                labels[s.key], colors[s.key], hatches[s.key] = s.label, s.color, s.hatch
    any_control = False
    for r, (region, ss) in enumerate(panels):
        layers = sorted({s.layer for s in ss})
        pos = _layout(ss, layers, keys)
        a = fig.add_subplot(gs[r, 0])
        b = fig.add_subplot(gs[r, 1], sharex=a)
        for s in ss:
            x, slot = pos[(s.layer, s.key)]
            if s.I_control is not None:
                any_control = True
                _violin(a, s.I, x - slot * 0.14, slot * 0.62, s.color, hatch=s.hatch)
                _violin(a, s.I_control, x + slot * 0.33, slot * 0.26, KIND_COLORS["control"], alpha=0.45)
            else:
                _violin(a, s.I, x, slot * 0.8, s.color, hatch=s.hatch)
            b.bar(x, s.frac_sig, width=slot * 0.8, color=s.color, alpha=0.85, hatch=s.hatch,
                  edgecolor="white" if not s.hatch else "#ffffff", linewidth=0.5)
            if slot >= 0.2 and len(ss) <= 24 and np.isfinite(s.frac_sig):
                b.text(x, s.frac_sig + 0.02, f"{100 * s.frac_sig:.0f}%", ha="center", va="bottom", fontsize=6.5,
                       color="#394252")
            if np.isfinite(s.frac_sig_control):
                b.plot([x - slot * 0.4, x + slot * 0.4], [s.frac_sig_control] * 2, color="#1f2430", lw=1.4)
        a.axhline(0, color="#9aa5b1", lw=0.8, zorder=0)
        for ax in (a, b):
            ax.set_xticks(range(len(layers)))
            ax.set_xticklabels([str(v) for v in layers])
            ax.set_xlim(-0.55, len(layers) - 0.45)
            ax.grid(axis="x", visible=False)
        a.set_ylabel("Moran's I")
        a.set_title(f"{region}: Moran's I per feature", loc="left")
        b.set_ylim(0, 1.02)
        b.set_ylabel("fraction significant")
        b.set_title(f"{region}: q < 0.05, I > E[I]", loc="left")
        b.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
        if r == n - 1:
            a.set_xlabel("layer")
            b.set_xlabel("layer")
    handles = [Patch(facecolor=colors[k], alpha=0.7, hatch=hatches[k], label=labels[k]) for k in keys]
    if any_control:
        handles.append(Patch(facecolor=KIND_COLORS["control"], alpha=0.5, label="shuffled coordinates (control)"))
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 4), fontsize=8)
    return to_png(fig)


def probe_figure(ds: xr.Dataset, title: str) -> bytes:
    """R^2 of x/y and median error (km) by layer: one colour per region, solid random folds, dashed
    spatially blocked folds."""
    fig = new_figure(11.0, 3.1)
    a, b = fig.subplots(1, 2)
    layers = ds["layer"].values
    for i, region in enumerate(ds["region"].values):
        c = REGION_COLORS[i % len(REGION_COLORS)]
        for scheme, ls, mk in (("random", "-", "o"), ("spatial", "--", "s")):
            if scheme not in ds["scheme"].values:
                continue
            sel = ds.sel(region=region, scheme=scheme)
            a.plot(layers, sel["r2_xy"].values, ls=ls, marker=mk, ms=3.5, color=c, lw=1.5)
            b.plot(layers, sel["median_km"].values, ls=ls, marker=mk, ms=3.5, color=c, lw=1.5)
    a.set_ylabel("R² (x, y)")
    a.set_ylim(min(-0.05, float(np.nanmin(ds["r2_xy"].values)) - 0.05) if np.isfinite(ds["r2_xy"].values).any() else -0.05, 1.0)
    a.axhline(0, color="#9aa5b1", lw=0.8)
    b.set_ylabel("median error (km)")
    b.set_ylim(bottom=0)
    for ax in (a, b):
        ax.set_xlabel("layer")
    a.set_title(f"{title}: R² of the location probe", loc="left")
    b.set_title("median great-circle error", loc="left")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=REGION_COLORS[i % len(REGION_COLORS)], lw=2, label=str(r))
               for i, r in enumerate(ds["region"].values)]
    handles += [Line2D([], [], color="#394252", ls="-", marker="o", ms=3.5, label="random folds"),
                Line2D([], [], color="#394252", ls="--", marker="s", ms=3.5, label="spatially blocked folds")]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return to_png(fig)


def plain_log(ax) -> None:
    """Log-scale y axis with plain tick labels (mathtext is off for the whole report)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def training_figure(runs: Sequence[tuple[str, xr.Dataset]]) -> bytes:
    """SAE training curves: loss, FVU, L0 and dead fraction against step, one line per run."""
    metrics = [("loss", "loss", True), ("fvu", "FVU", False), ("l0", "L0 (active features)", False),
               ("dead_fraction", "dead fraction", False)]
    fig = new_figure(11.0, 2.7)
    axes = fig.subplots(1, 4)
    for i, (label, ds) in enumerate(runs):
        c = REGION_COLORS[i % len(REGION_COLORS)]
        for ax, (var, _name, _logy) in zip(axes, metrics):
            if var in ds:
                ax.plot(ds["step"].values, ds[var].values, color=c, lw=1.5, label=label)
    for ax, (var, name, logy) in zip(axes, metrics):
        ax.set_title(name, loc="left")
        ax.set_xlabel("step")
        values = [ds[var].values for _, ds in runs if var in ds and ds[var].size]
        if logy and values and all((v > 0).all() for v in values) and max(v.max() for v in values) > 10 * min(v.min() for v in values):
            plain_log(ax)
    axes[1].set_ylim(bottom=0)
    axes[3].set_ylim(-0.02, 1.02)
    if len(runs) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(runs), 4))
    return to_png(fig)


def draw_histogram(ax, values: np.ndarray) -> None:
    """Histogram of a feature's activations (non-zero values; the share of zeros in the title)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    nz = v[v != 0]
    zero = 1 - nz.size / max(v.size, 1)
    ax.hist(nz if nz.size else v, bins=30, color=KIND_COLORS["sae"], alpha=0.85)
    ax.set_xlabel("activation" + (f"  ({100 * zero:.0f}% zero, not shown)" if zero > 0 and nz.size else ""))
    ax.set_ylabel("prompts")
    ax.yaxis.get_major_locator().set_params(integer=True)


def loss_figure(loss: np.ndarray, title: str) -> bytes:
    """Semi-NMF relative reconstruction error by iteration (log scale)."""
    fig = new_figure(4.2, 2.4)
    ax = fig.subplots()
    ax.plot(np.arange(loss.size), loss, color=KIND_COLORS["snmf"], lw=1.6)
    if np.all(loss > 0) and loss.max() / loss.min() > 10:
        plain_log(ax)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("iteration")
    ax.set_ylabel("||A − FGᵀ||² / ||A||²")
    ax.set_title(title, loc="left")
    return to_png(fig)


def runtime_figure(per_rule: pd.DataFrame) -> bytes:
    """Horizontal bars: total wall time per rule (seconds), annotated with the job count."""
    df = per_rule.sort_values("total_s")
    fig = new_figure(7.0, 0.26 * len(df) + 0.75)
    ax = fig.subplots()
    y = np.arange(len(df))
    ax.barh(y, df["total_s"].values, color="#3b6ea8", alpha=0.85, height=0.58)
    ax.set_yticks(y)
    ax.set_yticklabels(df["rule"].astype(str).values)
    ax.grid(axis="y", visible=False)
    xmax = float(df["total_s"].max()) if len(df) else 1.0
    for yi, (t, j) in enumerate(zip(df["total_s"].values, df["jobs"].values)):
        ax.text(t + xmax * 0.01, yi, f"{t:,.1f} s · {j} job{'s' if j != 1 else ''}", va="center", fontsize=7.5,
                color="#394252")
    ax.set_xlim(0, xmax * 1.25 if xmax > 0 else 1)
    ax.set_xlabel("wall time, summed over jobs (s)")
    return to_png(fig)
