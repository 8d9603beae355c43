"""Point maps of a region over a basemap: places, the KNN weights graph, activations and LISA clusters.

Maps are drawn in the region's projected CRS (metres) with the KNN weights the study used
(:func:`mechflow.spatial.knn_weights`); where no CRS is known, in lon/lat scaled by cos(latitude)
(equal aspect, also metres: the equirectangular projection at the region's mean latitude). Under the places:
coastlines, country borders and admin-1 boundaries where a shipped source has them
(:func:`mechflow.spatial.basemap.basemap_layers`), projected into that CRS and clipped to the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D

from mechflow.contracts import EARTH_RADIUS_M
from mechflow.report.plotting import DIVERGING, LISA_CODES, LISA_COLORS, map_grid, new_figure, to_png
from mechflow.spatial.basemap import basemap_layers


@dataclass
class RegionGeometry:
    """Projected places of one region and their KNN graph.

    index: positions of the region's prompts in the dataset ``[n]``; xy: ``[n, 2]`` metres;
    neighbors: ``[n, k]`` indices into the region's places; bounds: (xmin, xmax, ymin, ymax) of the places padded by
    3% of the larger side, metres; basemap: {layer: polylines [m, 2] metres} of
    :func:`mechflow.spatial.basemap.basemap_layers` (coastline, border, admin1) around the places.
    """

    region: str
    index: np.ndarray
    xy: np.ndarray
    neighbors: np.ndarray
    bounds: tuple[float, float, float, float]
    crs: str | None
    k: int
    n_duplicates: int
    basemap: dict[str, list[np.ndarray]]

    @property
    def n(self) -> int:
        return int(self.index.size)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the map, metres."""
        return self.bounds

    @property
    def aspect(self) -> float:
        """Height / width of the region's extent."""
        x0, x1, y0, y1 = self.extent
        return (y1 - y0) / max(x1 - x0, 1.0)


def region_geometry(lon, lat, index, region: str, crs: str | None, k: int = 8) -> RegionGeometry:
    """Project a region's places (WGS84 degrees) and build its KNN graph (k neighbours, as the study)."""
    from mechflow.spatial.weights import count_duplicates, knn_indices, knn_weights

    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    n = lon.size
    if n < 2:
        raise ValueError(f"region {region!r} has {n} place(s); a map needs at least 2")
    k_eff = int(min(k, n - 1))
    xy = None
    if crs:
        try:
            w = knn_weights(lon, lat, k=k_eff, crs=crs, transform="r")
            xy = np.asarray(w.xy)
            nb = np.array([w.neighbors[i] for i in range(n)], dtype=np.int64)
            dup = int(w.n_duplicates)
        except ValueError:
            xy, crs = None, None
    map_crs = crs
    if xy is None:  # equirectangular, equal aspect at the region's mean latitude
        lat0 = np.radians(np.nanmean(lat))
        xy = np.column_stack([np.radians(lon) * np.cos(lat0), np.radians(lat)]) * EARTH_RADIUS_M
        nb = knn_indices(xy, k_eff)
        dup = count_duplicates(xy)
        map_crs = f"+proj=eqc +lat_ts={np.degrees(lat0):.10f} +lon_0=0 +R={EARTH_RADIUS_M} +units=m +no_defs"
    bounds = padded_bounds(xy)
    x0, x1, y0, y1 = bounds
    return RegionGeometry(region, np.asarray(index), xy, nb, bounds, crs, k_eff, dup,
                          basemap_layers(map_crs, (x0, y0, x1, y1), margin=BASEMAP_MARGIN))


#: how far beyond the map's extent the basemap lines run (fraction of its larger side; the axes add 4%)
BASEMAP_MARGIN = 0.06
#: basemap layer -> line style, drawn under everything else
BASEMAP_STYLE: dict[str, dict] = {
    "coastline": {"colors": "#5f6b7a", "linewidths": 0.7, "linestyles": "solid", "zorder": 0.3},
    "border": {"colors": "#7a8494", "linewidths": 0.7, "linestyles": (0, (4, 2)), "zorder": 0.2},
    "admin1": {"colors": "#a3acb9", "linewidths": 0.5, "linestyles": (0, (1.5, 1.5)), "zorder": 0.1},
}


def padded_bounds(xy: np.ndarray, pad: float = 0.03) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of the points ``xy`` [n, 2], widened by ``pad`` of the larger side (at least 1 m)."""
    pts = np.asarray(xy, dtype=np.float64)
    (x0, y0), (x1, y1) = np.nanmin(pts, 0), np.nanmax(pts, 0)
    d = pad * max(x1 - x0, y1 - y0, 1.0)
    return float(x0 - d), float(x1 + d), float(y0 - d), float(y1 + d)


def draw_basemap(ax, geom: RegionGeometry) -> dict[str, int]:
    """The region's basemap lines (coastline, border, admin1) under the places; lines drawn per layer."""
    drawn = {}
    for layer, style in BASEMAP_STYLE.items():
        lines = geom.basemap.get(layer, [])
        if lines:
            ax.add_collection(LineCollection(lines, label=layer, gid=f"basemap-{layer}", **style))
        drawn[layer] = len(lines)
    return drawn


# ---- drawing on one axes -------------------------------------------------------------------
def _frame(ax, geom: RegionGeometry, scale: bool = True) -> None:
    draw_basemap(ax, geom)
    x0, x1, y0, y1 = geom.extent
    px, py = 0.04 * (x1 - x0 + 1), 0.04 * (y1 - y0 + 1)
    ax.set_xlim(x0 - px, x1 + px)
    ax.set_ylim(y0 - py, y1 + py)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)
    if scale:
        scale_bar(ax, geom)


def scale_bar(ax, geom: RegionGeometry) -> None:
    """A scale bar about a quarter of the map's width (1, 2 or 5 x 10^k km) at the lower left."""
    x0, x1, y0, y1 = geom.extent
    target = (x1 - x0) / 4 / 1000
    if target <= 0:
        return
    mag = 10 ** np.floor(np.log10(target))
    km = max(m * mag for m in (1, 2, 5) if m * mag <= target) if target >= mag else mag
    xs, ys = x0, y0 - 0.015 * (y1 - y0)
    ax.plot([xs, xs + km * 1000], [ys, ys], color="#394252", lw=2, solid_capstyle="butt", zorder=5)
    label = f"{km:g} km"
    ax.text(xs, ys + 0.015 * (y1 - y0), label, fontsize=7, color="#394252", va="bottom", ha="left", zorder=5)


def _marker_size(n: int) -> float:
    return float(np.clip(4000.0 / max(n, 1), 4.5, 36.0))


def draw_values(ax, geom: RegionGeometry, values: np.ndarray, lim: float = 2.5):
    """Points coloured by the values' z-score within the region (diverging, clipped at +-lim);
    extremes drawn last. Returns the scatter (for a colour bar)."""
    v = np.asarray(values, dtype=np.float64)
    sd = np.nanstd(v) if np.isfinite(v).any() else 0.0
    _frame(ax, geom)
    if not sd > 0:  # constant here (a feature silent in this region): grey points; callers say so in the title
        ax.scatter(geom.xy[:, 0], geom.xy[:, 1], c="#c3cad6", s=_marker_size(geom.n) * 0.6, linewidths=0,
                   rasterized=True, zorder=2)
        return None
    z = np.nan_to_num((v - np.nanmean(v)) / sd)
    order = np.argsort(np.abs(z), kind="stable")
    return ax.scatter(geom.xy[order, 0], geom.xy[order, 1], c=z[order], cmap=DIVERGING,
                      norm=TwoSlopeNorm(0.0, -lim, lim), s=_marker_size(geom.n), linewidths=0.25,
                      edgecolors=(0.2, 0.25, 0.3, 0.35), rasterized=True, zorder=2)


def draw_lisa(ax, geom: RegionGeometry, q: np.ndarray, p: np.ndarray, alpha: float = 0.05) -> dict[str, int]:
    """LISA cluster map: HH/HL/LH/LL where ``p < alpha`` (p: a local p- or q-value, or 0/1 from a
    significance mask), grey otherwise.
    Returns the count of places per class."""
    q = np.asarray(q, dtype=np.int64)
    sig = np.asarray(p, dtype=np.float64) < alpha
    names = np.array(["ns"] + [LISA_CODES[c] for c in (1, 2, 3, 4)])
    labels = np.where(sig & (q >= 1) & (q <= 4), names[np.clip(q, 0, 4)], "ns")
    _frame(ax, geom)
    s = _marker_size(geom.n)
    counts = {}
    for name in ("ns", "LH", "HL", "LL", "HH"):  # significant classes on top
        m = labels == name
        counts[name] = int(m.sum())
        if m.any():
            ax.scatter(geom.xy[m, 0], geom.xy[m, 1], c=LISA_COLORS[name], s=s if name != "ns" else s * 0.7,
                       linewidths=0, rasterized=True, zorder=3 if name != "ns" else 2)
    return counts


def draw_graph(ax, geom: RegionGeometry) -> int:
    """The KNN weights graph (each undirected edge once); returns the number of edges."""
    i = np.repeat(np.arange(geom.n), geom.neighbors.shape[1])
    j = geom.neighbors.ravel()
    pairs = np.unique(np.sort(np.column_stack([i, j]), axis=1), axis=0)
    _frame(ax, geom)
    segs = np.stack([geom.xy[pairs[:, 0]], geom.xy[pairs[:, 1]]], axis=1)
    ax.add_collection(LineCollection(segs, colors="#5b7bb0", linewidths=0.35, alpha=0.55, rasterized=True, zorder=1))
    ax.scatter(geom.xy[:, 0], geom.xy[:, 1], s=_marker_size(geom.n) * 0.35, c="#1f2430", linewidths=0,
               rasterized=True, zorder=2)
    return int(pairs.shape[0])


def spread_sample(xy: np.ndarray, m: int) -> np.ndarray:
    """``m`` indices spread over the points (greedy farthest-point sampling from the centre)."""
    n = xy.shape[0]
    m = min(m, n)
    chosen = [int(np.argmin(((xy - xy.mean(0)) ** 2).sum(1)))]
    d = ((xy - xy[chosen[0]]) ** 2).sum(1)
    while len(chosen) < m:
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, ((xy - xy[nxt]) ** 2).sum(1))
    return np.array(chosen)


def draw_places(ax, geom: RegionGeometry, labels: Sequence[str], n_labels: int = 8) -> None:
    """The places as dots, a few spread-out ones labelled (text before the first comma)."""
    _frame(ax, geom)
    ax.scatter(geom.xy[:, 0], geom.xy[:, 1], s=_marker_size(geom.n), c="#3b6ea8", alpha=0.75, linewidths=0,
               rasterized=True, zorder=2)
    for i in spread_sample(geom.xy, n_labels):
        name = str(labels[i]).split(",")[0].strip()[:28]
        ax.annotate(name, geom.xy[i], xytext=(3, 3), textcoords="offset points", fontsize=7, color="#1f2430",
                    zorder=4, annotation_clip=True,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
        ax.scatter(*geom.xy[i], s=14, facecolors="none", edgecolors="#1f2430", linewidths=0.8, zorder=3)


# ---- whole figures -------------------------------------------------------------------------
def _panel_size(geom: RegionGeometry, width: float) -> tuple[float, float]:
    return width, width * float(np.clip(geom.aspect, 0.55, 1.45))


def overview_figure(geom: RegionGeometry, labels: Sequence[str]) -> tuple[bytes, int]:
    """Places and KNN graph side by side; returns (PNG, number of edges)."""
    w, h = _panel_size(geom, 4.6)
    fig = new_figure(2 * w + 0.3, h + 0.4, layout=None)
    a, b = map_grid(fig, 1, 2, right=0.05, top=0.3, wgap=0.2)[0]
    draw_places(a, geom, labels)
    a.set_title(f"{geom.n:,} places")
    edges = draw_graph(b, geom)
    b.set_title(f"k = {geom.k} nearest neighbours ({edges:,} edges)")
    return to_png(fig), edges


def _colorbar(fig, sc, top_in: float, height_in: float, label: str) -> None:
    """A vertical colour bar at the right edge, ``top_in`` inches below the top, ``height_in`` tall."""
    W, H = fig.get_size_inches()
    cax = fig.add_axes([1 - 0.95 / W, 1 - (top_in + height_in) / H, 0.13 / W, height_in / H])
    cb = fig.colorbar(sc, cax=cax)
    cb.set_label(label)
    cb.outline.set_visible(False)


def feature_maps_figure(geom: RegionGeometry, values: np.ndarray, titles: Sequence[str],
                        lisa: tuple[np.ndarray, np.ndarray] | None = None, alpha: float = 0.05,
                        legend_title: str = "") -> bytes:
    """Top row: each feature's values (z-scored within the region); bottom row: its LISA clusters.

    values: ``[n_places, N]``; lisa: ``(q, p)`` each ``[n_places, N]`` (q = 0 where not computed; a place
    is coloured where p < alpha, e.g. p = 0 where the BH ``significant`` mask is set, else 1);
    legend_title: the significance rule, shown above the legend.
    """
    N = values.shape[1]
    rows = 2 if lisa is not None else 1
    right = 1.25
    w, h = _panel_size(geom, min(2.6, (11.0 - right) / max(N, 1)))
    top, gap = 0.3, 0.36
    fig = new_figure(w * N + right + 0.1 * N, h * rows + top + gap * (rows - 1) + 0.05, layout=None)
    axes = map_grid(fig, rows, N, right=right, top=top, hgap=gap)
    sc = None
    for j in range(N):
        one = draw_values(axes[0, j], geom, values[:, j])
        sc = one or sc
        axes[0, j].set_title(titles[j] + ("" if one else " (constant)"))
        if lisa is not None:
            q, p = lisa[0][:, j], lisa[1][:, j]
            ax = axes[1, j]
            if not np.any(q > 0):
                _frame(ax, geom, scale=False)
                ax.text(0.5, 0.5, "LISA not computed\nfor this feature", transform=ax.transAxes, ha="center",
                        va="center", fontsize=8, color="#5f6b7a")
            else:
                counts = draw_lisa(ax, geom, q, p, alpha)
                ax.set_title(f"LISA: {counts['HH']} HH · {counts['LL']} LL", fontweight="normal", color="#5f6b7a")
    if sc is not None:
        _colorbar(fig, sc, top + 0.1 * h, 0.8 * h, "z-score in region")
    if lisa is not None:
        handles = [Line2D([], [], marker="o", ls="", color=LISA_COLORS[c], markersize=6, label=lbl)
                   for c, lbl in (("HH", "High-High"), ("HL", "High-Low"), ("LH", "Low-High"), ("LL", "Low-Low"),
                                  ("ns", "not signif."))]
        W, H = fig.get_size_inches()
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1 - (right - 0.05) / W, (h / 2 + 0.05) / H),
                   fontsize=7.5, handletextpad=0.2, borderaxespad=0.0,
                   title=legend_title or None, title_fontsize=7)
    return to_png(fig)


def feature_grid_figure(geoms: Sequence[RegionGeometry], rows: Sequence[Sequence[np.ndarray]],
                        titles: Sequence[Sequence[str]], leads: Sequence | None = None,
                        lead_titles: Sequence[str] | None = None, panel: float = 2.6) -> bytes:
    """Features (rows) across regions (columns), each map coloured by the z-scored values.

    rows[i][j]: values ``[n_places of region j]`` of feature i; titles[i][j] its panel title;
    leads: optional per-row callables ``lead(ax)`` drawing a first panel (e.g. a histogram).
    """
    n_rows, n_cols = len(rows), len(geoms) + (leads is not None)
    h = max(panel * float(np.clip(g.aspect, 0.55, 1.45)) for g in geoms) if geoms else panel
    right, top, gap = 1.05, 0.3, 0.36
    lead_pad = 0.55 if leads is not None else 0.05
    fig = new_figure(panel * n_cols + right + lead_pad + 0.1 * n_cols, h * n_rows + top + gap * (n_rows - 1) + 0.45,
                     layout=None)
    axes = map_grid(fig, n_rows, n_cols, left=lead_pad, right=right, top=top, bottom=0.45, hgap=gap, wgap=0.25)
    k = int(leads is not None)
    sc = None
    for i in range(n_rows):
        if leads is not None:
            leads[i](axes[i, 0])
            axes[i, 0].set_title(lead_titles[i] if lead_titles else "")
        for j, g in enumerate(geoms):
            one = draw_values(axes[i, k + j], g, rows[i][j])
            sc = one or sc
            axes[i, k + j].set_title(titles[i][j] + ("" if one else " (constant)"))
    if sc is not None:
        _colorbar(fig, sc, top + 0.1 * h, min(0.8 * h * n_rows, 3.5), "z-score in region")
    return to_png(fig)
