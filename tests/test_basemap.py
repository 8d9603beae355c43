"""Basemaps from shipped data: coastlines, borders and admin-1 lines in each region's CRS, drawn under the report's maps."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

import mechflow.data
from mechflow.report.maps import overview_figure, region_geometry
from mechflow.spatial.basemap import LAYERS, basemap_layers, bounds_of

#: lon/lat boxes around each preset region's places (GeoNames cities500 of the region)
BOXES = {"GB": (-8.2, 49.9, 1.8, 60.9), "IT": (6.6, 36.6, 18.5, 47.1), "NYMETRO": (-80.5, 38.9, -71.8, 45.0)}
REGIONS = json.loads((Path(mechflow.data.__file__).parent / "regions.json").read_text(encoding="utf-8"))


def _projected_box(region: str) -> tuple[str, tuple[float, float, float, float]]:
    crs = REGIONS[region]["crs"]
    return crs, Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform_bounds(*BOXES[region])


@pytest.mark.parametrize("region", ["GB", "IT", "NYMETRO"])
def test_basemap_lines_lie_in_the_region_box_in_its_crs(region):
    crs, box = _projected_box(region)
    layers = basemap_layers(crs, box, margin=0.05)
    assert set(layers) == set(LAYERS)
    x0, y0, x1, y1 = box
    pad = 0.05 * max(x1 - x0, y1 - y0)
    for layer, lines in layers.items():
        for line in lines:
            assert line.ndim == 2 and line.shape[1] == 2 and len(line) >= 2
            assert (line[:, 0] >= x0 - pad - 1).all() and (line[:, 0] <= x1 + pad + 1).all(), layer
            assert (line[:, 1] >= y0 - pad - 1).all() and (line[:, 1] <= y1 + pad + 1).all(), layer
    coast = np.concatenate(layers["coastline"])
    inside = (coast[:, 0] > x0) & (coast[:, 0] < x1) & (coast[:, 1] > y0) & (coast[:, 1] < y1)
    assert inside.sum() > 1000  # 1:10m: thousands of coastline vertices in the region
    # the lines are in the region's CRS (metres), not degrees: a known coastal point is near a coastline vertex
    known = {"GB": (-3.19, 55.99), "IT": (12.25, 41.73), "NYMETRO": (-73.95, 40.57)}[region]  # Leith, Ostia, Coney Is.
    kx, ky = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(*known)
    assert np.hypot(coast[:, 0] - kx, coast[:, 1] - ky).min() < 10_000
    assert layers["border"]  # Northern Ireland's, the Alps', Canada's


def test_borders_and_admin1_where_the_sources_have_them():
    it = basemap_layers(*_projected_box("IT"))
    ny = basemap_layers(*_projected_box("NYMETRO"))
    gb = basemap_layers(*_projected_box("GB"))
    assert sum(len(c) for c in it["border"]) > 500 and not it["admin1"]  # the Alps' borders; no admin-1 source
    assert sum(len(c) for c in ny["admin1"]) > 500 and not gb["admin1"]  # US state lines from the Census file
    # the New York / Pennsylvania line (about 42.0 N, west of 75.4 W) is among the admin-1 lines
    t = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    px, py = t.transform(-77.0, 42.0)
    admin1 = np.concatenate(ny["admin1"])
    assert np.hypot(admin1[:, 0] - px, admin1[:, 1] - py).min() < 2_000
    # an inland point of Italy (Umbria) is far from any coastline: no convex-hull outline, the real coast
    ix, iy = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True).transform(12.6, 42.9)
    coast = np.concatenate(it["coastline"])
    assert np.hypot(coast[:, 0] - ix, coast[:, 1] - iy).min() > 40_000


def test_basemap_is_cached_and_checks_its_bounds():
    crs, box = _projected_box("GB")
    first, again = basemap_layers(crs, box), basemap_layers(crs, box)
    assert first["coastline"][0] is again["coastline"][0]  # the same read-only arrays
    assert not first["coastline"][0].flags.writeable
    with pytest.raises(ValueError, match="bounds must be finite"):
        basemap_layers(crs, (1.0, 0.0, 0.0, 1.0))
    assert bounds_of(np.array([[0.0, 5.0], [2.0, 1.0]])) == (0.0, 1.0, 2.0, 5.0)


def _png_pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_report_map_draws_the_coastline_under_the_places():
    """The overview map of GB places: the basemap's coastline colour covers many pixels; with the basemap taken away
    it is gone (nothing else on the map has that colour)."""
    lon = np.array([-0.13, -2.24, -1.9, -3.19, -4.25, -5.93, -1.55, -3.18, -2.59, 1.3])
    lat = np.array([51.51, 53.48, 52.48, 55.95, 55.86, 54.6, 53.8, 51.48, 51.45, 52.63])
    geom = region_geometry(lon, lat, np.arange(lon.size), "GB", "EPSG:27700", k=4)
    assert geom.crs == "EPSG:27700" and geom.basemap["coastline"] and geom.basemap["border"]
    bare = dataclasses.replace(geom, basemap={k: [] for k in LAYERS})
    coast = np.array([0x5F, 0x6B, 0x7A])

    def near_coast(png: bytes) -> int:
        return int((np.abs(_png_pixels(png) - coast).sum(axis=2) < 30).sum())

    with_map, without = near_coast(overview_figure(geom, ["a"] * lon.size)[0]), near_coast(overview_figure(bare, ["a"] * lon.size)[0])
    assert with_map > 500 and without < with_map / 20


def test_maps_without_a_crs_get_the_basemap_in_their_equirectangular_metres():
    lon, lat = np.array([12.4, 9.19, 14.27, 11.25]), np.array([41.9, 45.46, 40.85, 43.77])
    geom = region_geometry(lon, lat, np.arange(4), "XX", None, k=2)
    assert geom.crs is None and geom.basemap["coastline"]
    coast = np.concatenate(geom.basemap["coastline"])
    x0, x1, y0, y1 = geom.extent
    assert coast[:, 0].min() >= x0 - 0.2 * (x1 - x0) and coast[:, 1].max() <= y1 + 0.2 * (y1 - y0)
