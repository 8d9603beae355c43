"""k-nearest-neighbour spatial weights in a projected CRS, with deterministic tie breaking."""

from __future__ import annotations

import numpy as np
from libpysal.weights import W
from pyproj import Transformer
from scipy.spatial import cKDTree

_TRANSFORMS = {"r", "b", "d", "v", "o"}


def project(lon, lat, crs: str) -> np.ndarray:
    """WGS84 degrees -> projected coordinates ``[n, 2]`` (x, y) in the units of ``crs`` (metres)."""
    lon = np.asarray(lon, dtype=np.float64).ravel()
    lat = np.asarray(lat, dtype=np.float64).ravel()
    if lon.shape != lat.shape:
        raise ValueError(f"lon and lat must have the same length, got {lon.shape} and {lat.shape}")
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        raise ValueError("lon/lat contain NaN or inf; expected finite WGS84 degrees")
    if np.any(np.abs(lat) > 90) or np.any(np.abs(lon) > 360):
        raise ValueError("lon/lat out of range; expected WGS84 degrees (|lat| <= 90)")
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = tr.transform(lon, lat)
    xy = np.column_stack([x, y])
    if not np.all(np.isfinite(xy)):
        raise ValueError(f"projection to {crs} produced non-finite coordinates (points outside its area?)")
    return xy


def knn_indices(xy: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[n, k]`` of the k nearest *other* points of each point, ties broken by index.

    Neighbours are ordered by (distance, index): among points at exactly the same distance
    (duplicates included) the lower index wins, so the result does not depend on the tree.
    A point is never its own neighbour, even when other points share its coordinates.
    """
    xy = np.asarray(xy, dtype=np.float64)
    n = xy.shape[0]
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must be [n, 2], got shape {xy.shape}")
    if not 1 <= k < n:
        raise ValueError(f"k must satisfy 1 <= k < n_points, got k={k}, n_points={n}")
    tree = cKDTree(xy)
    out = np.empty((n, k), dtype=np.int64)
    todo = np.arange(n)
    q = min(n, k + 2)
    while todo.size:
        d, j = tree.query(xy[todo], k=q)
        d = np.atleast_2d(d).reshape(todo.size, q)
        j = np.atleast_2d(j).reshape(todo.size, q)
        j = np.where(j == todo[:, None], -1, j)  # drop self wherever it landed
        d = np.where(j < 0, np.inf, d)
        j = np.where(j < 0, n, j)
        order = np.lexsort((j, d), axis=1)
        d = np.take_along_axis(d, order, 1)
        j = np.take_along_axis(j, order, 1)
        # the tie group at the k-th distance must be complete: the last queried distance
        # must exceed it, unless every point was queried
        complete = (d[:, -1] > d[:, k - 1]) | (q >= n)
        out[todo[complete]] = j[complete, :k]
        todo = todo[~complete]
        q = min(n, 2 * q)
    return out


def count_duplicates(xy: np.ndarray) -> int:
    """Number of points whose coordinates repeat an earlier point's (``n - n_unique``)."""
    return int(xy.shape[0] - np.unique(np.asarray(xy), axis=0).shape[0])


def knn_weights(lon, lat, k: int = 8, crs: str = "EPSG:27700", transform: str = "r") -> W:
    """Row-standardised (by default) k-nearest-neighbour weights on projected coordinates.

    Parameters
    ----------
    lon, lat : ``[n]`` WGS84 degrees.
    k : neighbours per point (1 <= k < n).
    crs : projected CRS the distances are measured in (see ``mechflow.data.regions.CRS_PRESETS``).
    transform : libpysal transform: "r" row-standardised, "b" binary, "d" doubly
        standardised, "v" variance stabilising, "o" original.

    Returns
    -------
    libpysal ``W`` with ids ``0..n-1`` in input order. Duplicate coordinates are not jittered:
    each point's neighbours are the k nearest other points ordered by (distance, index), so
    duplicates become each other's first neighbours deterministically. Two attributes are
    attached: ``w.n_duplicates`` (int, ``n - n_unique_coordinates``) and ``w.xy`` (``[n, 2]``
    projected coordinates, metres).
    """
    if transform.lower() not in _TRANSFORMS:
        raise ValueError(f"transform must be one of {sorted(_TRANSFORMS)}, got {transform!r}")
    xy = project(lon, lat, crs)
    nb = knn_indices(xy, int(k))
    w = weights_from_neighbors(nb)
    w.transform = transform.upper() if transform.lower() == "o" else transform.lower()
    w.n_duplicates = count_duplicates(xy)
    w.xy = xy
    return w


def weights_from_neighbors(nb: np.ndarray) -> W:
    """Binary libpysal ``W`` from a neighbour index array ``[n, k]`` (ids 0..n-1)."""
    n = nb.shape[0]
    neighbors = {i: nb[i].tolist() for i in range(n)}
    return W(neighbors, id_order=list(range(n)), silence_warnings=True)
