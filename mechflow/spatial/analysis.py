"""The spatial analysis the ``spatial`` rule runs on any feature set, with its controls.

A *feature set* is a 2-D DataArray [prompt, <feature-dim>] with the prompt coordinates
(latitude, longitude, region): raw units of one layer (dim ``unit``), SAE features (``feature``)
or semi-NMF factor loadings G (``factor``); :func:`mechflow.io.load_feature_set` reads one, and
:class:`mechflow.io.FeatureColumns` opens one to be read by columns.

Bounded memory: every statistic of a feature depends on that feature's column alone (and the
weights); only the BH q values pool the features of a region. :func:`spatial_analysis` therefore
runs in blocks of columns (``memory_mb`` or ``block_columns``), reading one block at a time from a
lazily opened feature set, and computes the q values once every block is done. Block edges fall on
multiples of :data:`BLOCK_ALIGN`, and the permutation test draws and sums its replicates in the
batches the whole set would use, so the result is bit for bit the unblocked one (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

import numpy as np
import xarray as xr

from mechflow.data.regions import region_crs
from mechflow.memory import rss_bytes
from mechflow.spatial.datasets import MORAN_Q, MORAN_VARS, lisa_dataset, moran_dataset, region_weights, top_features
from mechflow.spatial.fdr import fdr_bh
from mechflow.spatial.layer_tests import FREE_NULL, LAYER_ATTRS, RESID_NULL, SUM_CHUNK, LayerTests
from mechflow.spatial.residualise import RESIDUAL_CHUNK, TEMPLATE_COVARIATES, residualise_within_regions

#: variables each control keeps, under ``<var>_<suffix>`` (the same test as the real data)
CONTROL_VARS = ("I", "z_norm", "p_norm", "p_sim", "p_greater", "q_greater")

#: suffix -> what the control is (also written to the moran.nc attrs)
CONTROLS = {
    "shuffled": "coordinates permuted within each region (the first of spatial.shuffles shuffles drawn from seed + 1), "
                "then the same statistics as the real data, tested against the real data's replicates (the same null: a "
                "shuffle of the coordinates is a rearrangement of the places); q_greater_shuffled = BH over features per "
                "region; the layer statistics of every shuffle: layer_shuffle_p, layer_shuffle_excess",
    "resid": "each feature residualised within its region on one-hot admin-1 unit and one-hot prompt length "
             "(n_tokens), then the same statistics and test, its permutations restricted within admin-1 units where "
             "the prompts name them (residuals sum to zero within each unit: attrs layer_null_resid; the "
             "template-confound baseline; it also removes real structure at the admin-1 scale); attrs residualised_on",
    "with_sink": "raw units pooled WITH the position pooling left out (the attention sink; rebuilt exactly from the "
                 "activations file's sink), then the same statistics and test: the result without the pooling fix",
}


def crs_for(regions: np.ndarray, overrides: Mapping[str, str] | None) -> dict[str, str]:
    """Projected CRS of each region present (config overrides first, then presets)."""
    return {str(r): region_crs(str(r), dict(overrides or {})) for r in np.unique(regions)}


def shuffle_within_regions(lon: np.ndarray, lat: np.ndarray, region: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates permuted among the places of each region (the null of no spatial structure)."""
    rng = np.random.default_rng(seed)
    lon2, lat2 = lon.copy(), lat.copy()
    for r in np.unique(region):
        idx = np.flatnonzero(region == r)
        perm = rng.permutation(idx)
        lon2[idx], lat2[idx] = lon[perm], lat[perm]
    return lon2, lat2


def shuffle_arrangements(region: np.ndarray, seed: int, draws: int) -> dict[str, np.ndarray]:
    """Region -> ``[draws, n_region]``: ``draws`` shuffles of the coordinates within each region, each as the
    rearrangement of the region's places that it amounts to (row ``i`` of the region, in prompt order, takes the
    values of row ``arrangement[i]``: the inverse of the shuffle). The first is :func:`shuffle_within_regions`'s."""
    rng = np.random.default_rng(seed)
    region = np.asarray(region)
    sizes = {str(r): int((region == r).sum()) for r in np.unique(region)}
    out = {r: np.empty((int(draws), n), dtype=np.int64) for r, n in sizes.items()}
    for d in range(int(draws)):
        for r, n in sizes.items():  # in shuffle_within_regions' order, from the same stream
            out[r][d] = np.argsort(rng.permutation(n))  # place i took the coordinates of place sigma[i]
    return out


class _FirstShuffle:
    """The per-unit shuffled control of one column block: each region's first arrangement, tested against the
    data's replicates (``moran_dataset``'s per-region callback), as a Dataset like the data's."""

    VARS = ("I", "z_norm", "p_norm", "p_sim", "p_greater")

    def __init__(self):
        self.by_region: dict[str, dict[str, np.ndarray]] = {}

    def collect(self, region: str, values: np.ndarray, res) -> None:
        self.by_region[str(region)] = {v: res["arrangements"][v][0] for v in self.VARS}

    def dataset(self, like: xr.Dataset) -> xr.Dataset:
        regions = like["region"].values.astype(str)
        data = {v: (like["I"].dims, np.stack([self.by_region[r][v] for r in regions])) for v in self.VARS}
        ds = xr.Dataset(data, coords=like["I"].coords)
        ds["q_greater"] = (like["I"].dims, fdr_bh(ds["p_greater"].values))
        return ds


def _add_control(moran: xr.Dataset, ctrl: xr.Dataset, suffix: str) -> None:
    for var in CONTROL_VARS:
        moran[f"{var}_{suffix}"] = ctrl[var]
    moran.attrs[f"control_{suffix}"] = CONTROLS[suffix]


class FeatureSource(Protocol):
    """A feature set read by columns (:class:`mechflow.io.FeatureColumns`): ``dims`` (prompt, feature
    dim), ``shape``, ``attrs``, and ``columns(index)``: the columns at ``index`` (a slice or sorted
    positions) as a loaded DataArray with the prompt coordinates and the feature coordinate."""

    dims: tuple[str, str]
    shape: tuple[int, int]

    def columns(self, index: slice | np.ndarray) -> xr.DataArray: ...


class _ArrayColumns:
    """A 2-D DataArray (in memory or lazily opened) as a :class:`FeatureSource`."""

    def __init__(self, da: xr.DataArray):
        if not isinstance(da, xr.DataArray) or da.ndim != 2:
            raise ValueError("values must be a 2-D xarray.DataArray [prompt, <feature-dim>] or a FeatureSource")
        self.da, self.dims, self.shape, self.attrs = da, da.dims, da.shape, da.attrs

    def columns(self, index: slice | np.ndarray) -> xr.DataArray:
        fdim = self.dims[1]
        out = self.da.isel({fdim: index})
        if fdim not in out.coords:  # moran_dataset names features by position: keep the whole set's positions
            out = out.assign_coords({fdim: np.arange(self.shape[1])[index]})
        return out.load()


def _as_source(values) -> FeatureSource:
    return _ArrayColumns(values) if isinstance(values, xr.DataArray) else values


#: column blocks start at multiples of this (the residualisation's BLAS chunk, itself a multiple of the
#: permutation engine's 64-column tile, and the layer tests' summing chunk), so every column meets the same
#: arithmetic blocked or not
BLOCK_ALIGN = RESIDUAL_CHUNK
assert BLOCK_ALIGN % SUM_CHUNK == 0

#: working memory per value (prompt x feature) of a column block: the block as read, its float64 copy,
#: each region's statistics temporaries, the residualised copy (measured: 37 bytes at 2,048 columns,
#: 46-50 at 512 with the fixed costs; rounded up)
BYTES_PER_VALUE = 64


def output_bytes(n_features: int, n_regions: int, n_controls: int = 3) -> int:
    """Bytes of the moran Dataset of ``n_features`` features (float64 [region, feature] variables)."""
    return 8 * n_regions * n_features * (len(MORAN_VARS) + n_controls * len(CONTROL_VARS))


def column_bytes(n_prompts: int, permutations: int = 0, shuffles: int = 0) -> int:
    """Working bytes per column of a block: :data:`BYTES_PER_VALUE` per prompt, and per region tested at a time
    the replicates' I kept for the layer tests (float64, twice: as kept and sorted to count the shuffles) and
    the shuffles' per-unit results (six float64 values each)."""
    return max(n_prompts, 1) * BYTES_PER_VALUE + 8 * (2 * int(permutations) + 6 * int(shuffles))


def columns_per_block(n_prompts: int, n_features: int, memory_mb: float, n_regions: int = 1, n_controls: int = 3,
                      in_use_bytes: int | None = None, permutations: int = 0, shuffles: int = 0) -> int:
    """Features per column block such that the analysis stays within ``memory_mb`` (MB = 10^6 bytes, as
    Snakemake's ``mem_mb``): what this process already holds (``in_use_bytes``, default its resident
    memory now) and the output (twice: the blocks' results and their concatenation) come off first,
    the rest is shared out at :func:`column_bytes` per column (``permutations`` and ``shuffles`` as the
    analysis runs them). A multiple of :data:`BLOCK_ALIGN`, at least one such multiple; ``n_features`` when
    all fit."""
    in_use = rss_bytes() if in_use_bytes is None else int(in_use_bytes)
    free = memory_mb * 1e6 - in_use - 2 * output_bytes(n_features, n_regions, n_controls)
    width = int(max(free, 0) // column_bytes(n_prompts, permutations, shuffles)) // BLOCK_ALIGN * BLOCK_ALIGN
    return n_features if width >= n_features else max(width, BLOCK_ALIGN)


def column_blocks(n_features: int, width: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each block of ``width`` columns (a multiple of :data:`BLOCK_ALIGN`, or at least
    ``n_features``). A last block of one column joins the one before: numpy sums a single column in
    another order than a column among others, so a one-column block would differ in the last bit."""
    if width >= n_features:
        return [(0, n_features)]
    if width < 1 or width % BLOCK_ALIGN:
        raise ValueError(f"block width must be a positive multiple of {BLOCK_ALIGN}, got {width}")
    starts = list(range(0, n_features, width))
    if n_features - starts[-1] == 1:
        starts.pop()
    return [(a, starts[i + 1] if i + 1 < len(starts) else n_features) for i, a in enumerate(starts)]


def _join_blocks(parts: list[xr.Dataset], fdim: str) -> xr.Dataset:
    """The moran Datasets of consecutive column blocks as one, with every q value recomputed over all
    features of a region (BH pools the features: a block's q values are not the whole set's)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    data_vars = {}
    for name, var in first.data_vars.items():
        if fdim in var.dims:
            axis = var.dims.index(fdim)
            data_vars[name] = (var.dims, np.concatenate([p[name].values for p in parts], axis=axis))
        elif name == "n_constant":
            data_vars[name] = (var.dims, np.sum([p[name].values for p in parts], axis=0))
        else:  # n, n_duplicates: the same in every block
            data_vars[name] = (var.dims, var.values)
    coords = {"region": first["region"].values, fdim: np.concatenate([p[fdim].values for p in parts])}
    moran = xr.Dataset(data_vars, coords=coords, attrs=first.attrs)
    pairs = dict(MORAN_Q, **{f"q_greater_{c}": f"p_greater_{c}" for c in CONTROLS if f"p_greater_{c}" in moran})
    for q, p in pairs.items():
        moran[q] = (moran[p].dims, fdr_bh(moran[p].values))  # [region, feature]: BH along the features
    return moran


def spatial_analysis(values: xr.DataArray | FeatureSource, params: Mapping[str, Any],
                     with_sink: xr.DataArray | FeatureSource | None = None, num_threads: int | None = None,
                     memory_mb: float | None = None, block_columns: int | None = None,
                     ) -> tuple[xr.Dataset, xr.Dataset | None]:
    """Global Moran's I / Geary's C per region, its controls, and LISA of the top features.

    ``values``: a feature set [prompt, <feature-dim>] (a DataArray, in memory or lazily opened, or a
    :class:`FeatureSource` such as :class:`mechflow.io.FeatureColumns`). ``params``: k, transform,
    permutations, seed, crs (overrides), lisa_top_n, shuffled_control, shuffles, residualise, layer_permutations.
    Returns (moran, lisa); lisa is None when ``lisa_top_n`` is 0. Each control is :func:`moran_dataset` run again with
    the same permutation test (same ``permutations``, same permutation ``seed``), so the fractions of
    features with ``q_greater < 0.05`` compare like with like; ``moran`` keeps :data:`CONTROL_VARS` of
    each under a suffix (:data:`CONTROLS`):

    - ``_shuffled`` (``shuffled_control``): coordinates shuffled within each region (seed + 1), tested against the
      data's replicates (a shuffle is a rearrangement of the places: the same null); the layer statistics of
      ``shuffles`` (default 200) such shuffles in ``layer_shuffle_p`` / ``layer_shuffle_excess``;
    - ``_resid`` (``residualise``): features residualised on one-hot admin-1 and prompt length
      within each region (:func:`residualise_within_regions`), where the prompts carry them; its
      permutations (per unit and layer) move places only within their admin-1 unit (the residuals' null);
    - ``_with_sink`` (given ``with_sink``, the same units pooled with the left-out position).

    Memory: the features go in column blocks read one at a time, ``block_columns`` wide (a multiple of
    :data:`BLOCK_ALIGN`) or as many as fit in ``memory_mb`` (:func:`columns_per_block`); neither set:
    one block. Only the outputs ([region, feature], and LISA's [region, prompt, top features]) grow
    with the whole set. The result does not depend on the blocks, bit for bit.

    Layer tests (:mod:`mechflow.spatial.layer_tests`): the data and each control also get the layer-level
    statistics of the whole feature set per region (dims ``region``, ``layer_stat``: ``layer_obs``,
    ``layer_p``, ... with the control's suffix), from the same replicates as the per-unit test (their
    I kept per block) and ``layer_permutations`` (default 999) for the principal components' statistic.
    """
    source = _as_source(values)
    sink = _as_source(with_sink) if with_sink is not None else None
    if sink is not None and tuple(sink.shape) != tuple(source.shape):
        raise ValueError(f"with_sink {tuple(sink.shape)} must have the feature set's shape {tuple(source.shape)}")
    prompts = source.columns(slice(0, 0))  # the prompt coordinates, no features
    fdim = source.dims[1]
    n, F = (int(x) for x in source.shape)
    lon = prompts["longitude"].values.astype(np.float64)
    lat = prompts["latitude"].values.astype(np.float64)
    region = prompts["region"].values.astype(str)
    crs = crs_for(region, params.get("crs"))
    k, transform, seed = int(params["k"]), str(params["transform"]), int(params["seed"])
    common = dict(k=k, transform=transform, seed=seed)
    perms = int(params["permutations"])
    shuffled = bool(params.get("shuffled_control", True))
    n_shuffles = int(params.get("shuffles", 200)) if shuffled else 0
    resid = bool(params.get("residualise", True)) and any(c in prompts.coords for c in TEMPLATE_COVARIATES)
    if block_columns is None and memory_mb is not None:
        n_controls = shuffled + resid + (sink is not None)
        block_columns = columns_per_block(n, F, memory_mb, n_regions=len(crs), n_controls=n_controls,
                                          permutations=perms, shuffles=n_shuffles)
    blocks = column_blocks(F, int(block_columns or F))
    # threads change how fast, never what: the permutation engine is bit-identical at any thread count;
    # batch_columns=F: every block draws and sums its replicates as the whole set does
    glob = dict(common, permutations=perms, num_threads=int(num_threads or 1), batch_columns=F)
    weights = region_weights(lon, lat, region, crs, k=k, transform=transform)
    # the shuffled control: shuffles of the coordinates as rearrangements of the places, tested against the data's null
    arrangements = shuffle_arrangements(region, seed + 1, n_shuffles) if shuffled else None
    layer_perms = int(params.get("layer_permutations", 999))
    # residuals on admin-1 sum to zero within each unit: their permutations stay within units (the fair null)
    admin1 = (np.char.add(np.char.add(region, "/"), prompts["admin1_code"].values.astype(str))
              if resid and "admin1_code" in prompts.coords else None)
    layer = {suffix: LayerTests(weights, layer_perms, seed, num_threads=int(num_threads or 1),
                                blocks=admin1 if suffix == "_resid" else None,
                                arrangements=arrangements if suffix == "" else None)
             for suffix, on in (("", True), ("_resid", resid), ("_with_sink", sink is not None)) if on}
    parts, residualised_on = [], None
    for a, b in blocks:
        block = source.columns(slice(a, b))
        first = _FirstShuffle()

        def on_region(reg, vals, res, offset=a, first=first):
            layer[""].collect(reg, vals, res, offset=offset)
            if shuffled:
                first.collect(reg, vals, res)

        part = moran_dataset(block, lon, lat, region, crs, weights=weights, on_region=on_region,
                             arrangements=arrangements, **glob)
        if shuffled:
            _add_control(part, first.dataset(part), "shuffled")
        if resid:
            residuals = residualise_within_regions(block)
            residualised_on = residuals.attrs["residualised_on"]
            _add_control(part, moran_dataset(residuals, lon, lat, region, crs, weights=weights, blocks=admin1,
                                             on_region=partial(layer["_resid"].collect, offset=a), **glob), "resid")
            del residuals
        del block
        if sink is not None:
            sink_block = sink.columns(slice(a, b))
            _add_control(part, moran_dataset(sink_block, lon, lat, region, crs, weights=weights,
                                             on_region=partial(layer["_with_sink"].collect, offset=a), **glob), "with_sink")
            del sink_block
        parts.append(part)
    moran = _join_blocks(parts, fdim)
    del parts
    for suffix, tests in layer.items():
        moran = moran.merge(tests.dataset(suffix), combine_attrs="override")
    if shuffled:
        moran = moran.merge(layer[""].shuffled_dataset("_shuffled"), combine_attrs="override")
        moran.attrs["layer_shuffles"] = (f"{len(moran['shuffle'])} shuffles of the coordinates within each region (seed "
                                         "+ 1), each a rearrangement of the places tested as if observed against the "
                                         "data's null; layer_*_shuffled: the first")
    moran.attrs.update(LAYER_ATTRS, layer_permutations=layer_perms)
    if resid:
        moran.attrs["layer_null_resid"] = RESID_NULL if admin1 is not None else FREE_NULL + " (no admin-1 units known)"
    if residualised_on is not None:
        moran.attrs["residualised_on"] = residualised_on
    lisa = None
    top_n = int(params.get("lisa_top_n", 0))
    if top_n > 0:
        lisa = _lisa_of_top(source, moran, lon, lat, region, crs, top_n, perms, common)
    return moran, lisa


def _lisa_of_top(source: FeatureSource, moran: xr.Dataset, lon, lat, region, crs, top_n: int, perms: int,
                 common: dict) -> xr.Dataset:
    """LISA of each region's ``top_n`` features by global Moran's I (from ``moran``), reading only those
    columns: what ``lisa_dataset(values, top_n=top_n)`` computes on the whole set."""
    fdim = source.dims[1]
    chosen = {str(reg): top_features(moran["I"].sel(region=reg).values, top_n) for reg in moran["region"].values}
    union = np.unique(np.concatenate([*chosen.values(), np.zeros(0, dtype=np.int64)]))
    subset = source.columns(union if union.size else slice(0, 0))
    ids = subset[fdim].values
    features = {reg: [ids[i] for i in np.searchsorted(union, cols)] for reg, cols in chosen.items()}
    lisa = lisa_dataset(subset, lon, lat, region, crs, features=features, permutations=perms, **common)
    lisa.attrs["selection"] = f"top_n={top_n} by global Moran's I"
    return lisa
