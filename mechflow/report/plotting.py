"""Matplotlib set-up for the report: Agg backend, one house style, PNG encoding."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110  # figures are sized in inches for a ~1100 px wide content column

#: colours of the feature-set kinds, shared by every figure
KIND_COLORS = {"units": "#3b6ea8", "sae": "#e07b39", "snmf": "#2a9d8f", "control": "#9aa0a6"}
EXTRA_COLORS = ("#8e5bb5", "#c4476b", "#6a8f2a", "#b08b1e", "#4a8fb8", "#7f6a55")
LISA_COLORS = {"HH": "#d7191c", "HL": "#fdae61", "LH": "#abd9e9", "LL": "#2c7bb6", "ns": "#cccccc"}
#: esda's q codes
LISA_CODES = {1: "HH", 2: "LH", 3: "LL", 4: "HL"}
DIVERGING = "RdBu_r"

STYLE = {
    "text.parse_math": False,  # user text ($ in a placename) is never parsed as math
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.labelcolor": "#394252",
    "axes.edgecolor": "#c3cad6",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e8ebf1",
    "grid.linewidth": 0.7,
    "xtick.color": "#5f6b7a",
    "ytick.color": "#5f6b7a",
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The report's rc settings, restored afterwards."""
    with plt.rc_context(STYLE):
        yield


def new_figure(width: float, height: float, layout: str | None = "constrained", **kwargs):
    """A figure (inches); constrained layout for charts, ``layout=None`` for maps placed by hand (faster)."""
    return plt.figure(figsize=(width, height), layout=layout, **kwargs)


def map_grid(fig, rows: int, cols: int, left: float = 0.05, right: float = 0.1, top: float = 0.32,
             bottom: float = 0.05, wgap: float = 0.1, hgap: float = 0.36):
    """A rows x cols grid of axes with margins and gaps in inches (no layout engine: maps have no tick
    labels, so fixed margins suffice and drawing stays fast)."""
    W, H = fig.get_size_inches()
    gs = fig.add_gridspec(rows, cols, left=left / W, right=1 - right / W, top=1 - top / H, bottom=bottom / H,
                          wspace=wgap / ((W - left - right) / cols), hspace=hgap / ((H - top - bottom) / rows))
    return np.array([[fig.add_subplot(gs[i, j]) for j in range(cols)] for i in range(rows)])


def to_png(fig, dpi: int = DPI, quantize: bool = True) -> bytes:
    """Encode a figure as PNG bytes and close it; ``quantize`` to a 256-colour palette (about 3x smaller).

    The figure is drawn once into Agg's RGBA buffer at ``dpi`` (the pixels ``savefig(dpi=dpi)`` would
    give) and encoded once by PIL, so no intermediate PNG is compressed and decoded again."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    try:
        fig.set_dpi(dpi)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgba = np.array(canvas.buffer_rgba())
    finally:
        plt.close(fig)
    out = io.BytesIO()
    if not quantize:
        Image.fromarray(rgba, "RGBA").save(out, format="PNG")
        return out.getvalue()
    img = Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")
    pal = img.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    colors = np.array(pal.getpalette()[: 3 * 256], dtype=np.int64).reshape(-1, 3)
    near_white = np.flatnonzero((colors >= 246).all(1))
    if near_white.size:  # the octree averages the background: make it pure white again
        colors[near_white] = 255
        pal.putpalette(colors.astype(np.uint8).ravel().tolist())
    pal.save(out, format="PNG")  # zlib level 6: 4% larger than optimize=True, 7x faster
    return out.getvalue()


def kind_color(kind: str, i: int = 0) -> str:
    """Colour of the i-th series of a kind (further runs of a kind get extra colours)."""
    return KIND_COLORS.get(kind, EXTRA_COLORS[0]) if i == 0 else EXTRA_COLORS[(i - 1) % len(EXTRA_COLORS)]
