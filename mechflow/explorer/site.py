"""The static site of one feature set: two HTML shells, the hand-written assets, and data as script files.

Layout under the output folder::

    index.html, feature.html          shells (feature.html#<n> shows feature n)
    assets/explorer.{js,css}          copied from this package (no CDN, no network)
    assets/LICENSE.txt                their licence
    data/index.js                     MF.index({meta, columns, rows}): the sortable table
    data/places.js                    MF.places({regions, text, region, x, y}): projected places, basemaps
    data/chunks/cNNNNN.js             MF.chunk(n, {features: {...}}): ``chunk_size`` features each, loaded on demand

Data are script files (not JSON fetched) so the site also opens from ``file://``, where browsers refuse fetch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ASSETS", "write_site", "write_script", "copy_assets"]

#: files copied from ``mechflow/explorer/assets`` into every site (the live server serves them too)
ASSETS = ("explorer.js", "explorer.css")
SHELLS = ("index.html", "feature.html")
LICENSE = ("The explorer's script and style are part of mechflow (hand-written for it, no third-party code), "
           "MIT licence, see mechflow's LICENSE / pyproject.toml.\n")


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN / inf -> null, numpy scalars and arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_script(path: Path, call: str, *args: Any) -> int:
    """Write ``call(arg, ...);`` with JSON arguments to ``path`` (``</`` escaped); its size in bytes."""
    body = ",".join(json.dumps(_clean(a), ensure_ascii=False, separators=(",", ":"), allow_nan=False) for a in args)
    body = body.replace("</", "<\\/")
    text = f"{call}({body});\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def asset_text(name: str) -> str:
    """One file of ``mechflow/explorer/assets``."""
    return resources.files("mechflow.explorer").joinpath("assets", name).read_text(encoding="utf-8")


def copy_assets(out: Path) -> None:
    """The shells and assets into ``out``."""
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for name in SHELLS:
        (out / name).write_text(asset_text(name), encoding="utf-8")
    for name in ASSETS:
        (out / "assets" / name).write_text(asset_text(name), encoding="utf-8")
    (out / "assets" / "LICENSE.txt").write_text(LICENSE, encoding="utf-8")


def write_site(out: str | Path, features: Iterable[tuple[int, dict]], chunk_size: int,
               index: Callable[[], Mapping[str, Any]], places: Mapping[str, Any]) -> dict[str, int]:
    """Write the site into ``out``: the feature pages of ``features`` (index, page data; in index order) in chunks,
    then ``index()`` ({meta, columns, rows}; called after every page, so it may read what they computed) and
    ``places``. Returns byte counts ``chunks``, ``index``, ``places`` and the number of chunk files."""
    out = Path(out)
    copy_assets(out)
    sizes = {"chunks": 0, "chunk_files": 0}
    chunk: dict[str, dict] = {}
    current = 0

    def flush() -> None:
        if chunk:
            sizes["chunks"] += write_script(out / "data" / "chunks" / f"c{current:05d}.js", "MF.chunk", current,
                                            {"features": chunk})
            sizes["chunk_files"] += 1
            chunk.clear()

    for f, page in features:
        if f // chunk_size != current:
            flush()
            current = f // chunk_size
        chunk[str(f)] = page
    flush()
    data = dict(index())
    data["meta"] = {**data["meta"], "chunk_size": chunk_size}
    sizes["index"] = write_script(out / "data" / "index.js", "MF.index", data)
    sizes["places"] = write_script(out / "data" / "places.js", "MF.places", places)
    return sizes
