"""Matplotlib figures of the report (Agg backend), returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, TwoSlopeNorm  # noqa: E402

LISA_COLOURS = {1: "#d7191c", 4: "#fdae61", 2: "#abd9e9", 3: "#2c7bb6", 0: "#cccccc"}
LISA_LABELS = {1: "HH", 4: "HL", 2: "LH", 3: "LL", 0: "not significant"}
KIND_COLOURS = {"units": "#7f7f7f", "sae": "#1f77b4", "snmf": "#d62728", "shuffled": "#bcbd22", "random": "#9467bd"}

plt.rcParams.update({"figure.dpi": 96, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                     "axes.titlesize": 10, "axes.titleweight": "bold"})


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _hull(ax, xy: np.ndarray) -> None:
    """Region outline: the convex hull of the points."""
    from scipy.spatial import ConvexHull

    if len(xy) < 3:
        return
    try:
        hull = ConvexHull(xy)
    except Exception:  # degenerate (collinear) points: no outline
        return
    ring = np.r_[hull.vertices, hull.vertices[:1]]
    ax.plot(xy[ring, 0] / 1000, xy[ring, 1] / 1000, color="#555555", lw=0.8, zorder=1)


def _map_axes(ax, title: str) -> None:
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.set_xlabel("easting (km)")
    ax.set_ylabel("northing (km)")


def places_map(xy: np.ndarray, neighbours: np.ndarray | None, region: str, crs: str) -> bytes:
    """Places (projected metres) and their KNN graph."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, graph in zip(axes, (False, True)):
        _hull(ax, xy)
        if graph and neighbours is not None:
            from matplotlib.collections import LineCollection

            segs = np.stack([np.repeat(xy, neighbours.shape[1], 0), xy[neighbours.ravel()]], 1) / 1000
            ax.add_collection(LineCollection(segs, colors="#1f77b4", linewidths=0.3, alpha=0.5, rasterized=True))
        ax.scatter(xy[:, 0] / 1000, xy[:, 1] / 1000, s=3, c="#222222", rasterized=True, zorder=2)
        _map_axes(ax, f"{region}: {len(xy)} places" if not graph else f"{region}: {neighbours.shape[1]}-nearest-neighbour graph")
    fig.suptitle(f"projected in {crs}", fontsize=8, color="#666666")
    return to_png(fig)


def feature_maps(xy: np.ndarray, panels: list[dict]) -> bytes:
    """Rows of (activation map, LISA cluster map) per feature. panel: title, values [n], q [n] or None, p [n]."""
    rows = len(panels)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.2 * rows), squeeze=False)
    for (ax_v, ax_l), panel in zip(axes, panels):
        v = np.asarray(panel["values"], dtype=float)
        lo, hi = np.nanmin(v), np.nanmax(v)
        centre = float(np.nanmedian(v))
        norm = TwoSlopeNorm(vcenter=centre, vmin=min(lo, centre - 1e-9), vmax=max(hi, centre + 1e-9))
        _hull(ax_v, xy)
        order = np.argsort(np.abs(v - centre))
        sc = ax_v.scatter(xy[order, 0] / 1000, xy[order, 1] / 1000, c=v[order], s=6, cmap="RdBu_r", norm=norm,
                          rasterized=True, zorder=2)
        fig.colorbar(sc, ax=ax_v, shrink=0.8, label="activation")
        _map_axes(ax_v, panel["title"])
        _hull(ax_l, xy)
        if panel.get("q") is not None:
            q = np.asarray(panel["q"]).astype(int)
            sig = np.asarray(panel["p"]) < 0.05
            cls = np.where(sig, q, 0)
            for c in (0, 1, 4, 2, 3):
                m = cls == c
                if m.any():
                    ax_l.scatter(xy[m, 0] / 1000, xy[m, 1] / 1000, s=6, c=LISA_COLOURS[c], rasterized=True,
                                 label=f"{LISA_LABELS[c]} ({int(m.sum())})", zorder=2 if c else 1)
            ax_l.legend(loc="best", fontsize=7, markerscale=2, frameon=False)
            _map_axes(ax_l, "LISA clusters (p_sim < 0.05)")
        else:
            ax_l.axis("off")
            ax_l.text(0.5, 0.5, "no LISA computed for this feature", ha="center", va="center", color="#888888")
    return to_png(fig)


def moran_distributions(groups: dict[str, np.ndarray], title: str) -> bytes:
    """Overlaid histograms of Moran's I for several feature sets (units, SAE, semi-NMF, controls)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    finite = [v[np.isfinite(v)] for v in groups.values() if np.isfinite(v).any()]
    if not finite:
        ax.text(0.5, 0.5, "no finite Moran's I", ha="center")
        return to_png(fig)
    lo, hi = min(f.min() for f in finite), max(f.max() for f in finite)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 40)
    for name, vals in groups.items():
        vals = vals[np.isfinite(vals)]
        if vals.size:
            kind = name.split(" ")[0]
            ax.hist(vals, bins=bins, density=True, histtype="stepfilled", alpha=0.35,
                    color=KIND_COLOURS.get(kind, None), label=f"{name} (n={vals.size}, median {np.median(vals):.3f})")
            ax.hist(vals, bins=bins, density=True, histtype="step", color=KIND_COLOURS.get(kind, None), lw=1)
    ax.axvline(0, color="#444444", lw=0.6, ls=":")
    ax.set_xlabel("Moran's I")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False)
    return to_png(fig)


def probe_curves(layers: np.ndarray, series: dict[str, dict[str, np.ndarray]], region: str) -> bytes:
    """R^2 and median error by layer, one line per fold scheme (and model)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.3))
    for name, s in series.items():
        ls = "-" if name.endswith("random") else "--"
        a1.plot(s["layer"], s["r2"], ls, marker="o", ms=3, label=name)
        a2.plot(s["layer"], s["km"], ls, marker="o", ms=3, label=name)
    a1.set_ylabel("R² (x/y)")
    a2.set_ylabel("median error (km)")
    for a in (a1, a2):
        a.set_xlabel("layer")
        a.grid(alpha=0.3)
    a1.set_title(f"{region}: location probe R²")
    a2.set_title(f"{region}: median great-circle error")
    a1.legend(fontsize=7, frameon=False)
    return to_png(fig)


def training_curves(step: np.ndarray, metrics: dict[str, np.ndarray], title: str) -> bytes:
    names = [m for m in ("loss", "fvu", "l0", "dead_fraction") if m in metrics]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(step, metrics[name], color="#1f77b4", lw=1)
        ax.set_title(name)
        ax.set_xlabel("step")
        if name == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return to_png(fig)


def histogram(values: np.ndarray, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(3.2, 2.2))
    v = values[np.isfinite(values)]
    ax.hist(v[v != 0] if (v != 0).any() else v, bins=30, color="#1f77b4", alpha=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("activation (non-zero)")
    return to_png(fig)


def runtime_bars(rules: list[str], seconds: list[float]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rules) + 0.8))
    y = np.arange(len(rules))
    ax.barh(y, seconds, color="#1f77b4")
    ax.set_yticks(y, rules)
    ax.set_xlabel("wall time (s, summed over jobs)")
    ax.invert_yaxis()
    return to_png(fig)


__all__ = ["to_png", "places_map", "feature_maps", "moran_distributions", "probe_curves", "training_curves",
           "histogram", "runtime_bars", "ListedColormap"]
