"""Row sources and the shuffled minibatch stream.

The minibatch of step ``s`` is a pure function of ``(seed, s)``: each epoch ``e`` has an order
drawn from ``(seed, e)`` (a permutation of contiguous blocks, grouped into windows, rows shuffled
within each window), and step ``s`` takes positions ``[s * batch, (s + 1) * batch)`` of the
concatenated epoch orders. A resumed run therefore sees exactly the batches an uninterrupted run
sees, with no RNG state to save. Only the windows in use are held in memory (at most two), so a
file larger than RAM streams with bounded memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import xarray as xr

from mechflow.io import open_dataset


class RowSource(Protocol):
    """Rows of a [n_rows, d] matrix, read by contiguous range."""

    n_rows: int
    d: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float32 [stop - start, d]."""


class TensorSource:
    """An in-memory [n, d] tensor or array."""

    def __init__(self, x: torch.Tensor | np.ndarray):
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if arr.ndim != 2:
            raise ValueError(f"SAE input must be 2-D [n_samples, d_in], got shape {tuple(arr.shape)}")
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"SAE input must have at least one sample and one unit, got shape {tuple(arr.shape)}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"SAE input must be floating point, got dtype {arr.dtype}")
        self._x = np.ascontiguousarray(arr, dtype=np.float32)
        bad = ~np.isfinite(self._x).all(1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(f"SAE input has NaN/inf values in {rows.size} rows (first: {rows[:5].tolist()}); "
                             "clean or drop them first")
        self.n_rows, self.d = self._x.shape

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._x[start:stop]


class DataArraySource:
    """A lazily opened 2-D DataArray [sample, unit]; rows are read on demand and checked for NaN."""

    def __init__(self, da: xr.DataArray):
        if da.ndim != 2:
            raise ValueError(f"SAE input DataArray must be 2-D [sample, unit], got dims {da.dims} with shape {da.shape}")
        self.da = da
        self.n_rows, self.d = (int(s) for s in da.shape)
        if self.n_rows < 1 or self.d < 1:
            raise ValueError(f"SAE input must have at least one sample and one unit, got shape {da.shape}")

    def read(self, start: int, stop: int) -> np.ndarray:
        block = np.asarray(self.da[start:stop].values, dtype=np.float32)
        bad = ~np.isfinite(block).all(1)
        if bad.any():
            rows = (np.flatnonzero(bad) + start)[:5].tolist()
            raise ValueError(f"SAE input has NaN/inf values (rows {rows}, dim {self.da.dims[0]!r}); clean or drop them first")
        return block


class ShardedSource:
    """Several [row, unit] shards read as one [n_rows, d] matrix, their rows concatenated in the order given.

    ``shards``: shard files (the ``variable`` of each, e.g. the corpus activation shards of
    :mod:`mechflow.corpus.activations`) or 2-D DataArrays. Each file is opened once here to read its shape
    and again, lazily, when a read needs its rows; at most ``max_open`` files are open at a time (the least
    recently read is closed first), and no row is cached: memory is bounded by what the caller reads,
    whatever the number and size of the shards. A shard without rows is allowed; ``d`` must agree.
    """

    def __init__(self, shards: Sequence[str | os.PathLike | xr.DataArray], variable: str = "activations",
                 max_open: int = 2):
        self.shards, self.variable, self.max_open = list(shards), str(variable), max(1, int(max_open))
        if not self.shards:
            raise ValueError("a sharded source needs at least one shard")
        shapes = [self._shape(i) for i in range(len(self.shards))]
        widths = sorted({d for _, d in shapes})
        if len(widths) != 1:
            raise ValueError(f"the shards have different widths (units) {widths}")
        self.d = widths[0]
        #: rows before each shard, and the total: shard i holds rows offsets[i] .. offsets[i + 1]
        self.offsets = np.concatenate([[0], np.cumsum([n for n, _ in shapes])]).astype(np.int64)
        self.n_rows = int(self.offsets[-1])
        if self.n_rows < 1 or self.d < 1:
            raise ValueError(f"SAE input must have at least one sample and one unit, got {self.n_rows} rows of {self.d} "
                             f"units in {len(self.shards)} shard(s)")
        self._open: OrderedDict[int, tuple[xr.Dataset | None, DataArraySource]] = OrderedDict()

    def _name(self, i: int) -> str:
        s = self.shards[i]
        return f"shard {i} (DataArray {s.name!r})" if isinstance(s, xr.DataArray) else str(s)

    def _shape(self, i: int) -> tuple[int, int]:
        """(rows, units) of shard ``i``; a file is opened and closed again."""
        shard = self.shards[i]
        with contextlib.nullcontext(shard) if isinstance(shard, xr.DataArray) else open_dataset(shard) as opened:
            if isinstance(opened, xr.Dataset) and self.variable not in opened:
                raise ValueError(f"{shard} has no variable {self.variable!r} (it holds {sorted(opened.data_vars)})")
            da = opened if isinstance(opened, xr.DataArray) else opened[self.variable]
            if da.ndim != 2:
                raise ValueError(f"{self._name(i)}: a shard must be 2-D [row, unit], got dims {da.dims} with shape {da.shape}")
            return int(da.shape[0]), int(da.shape[1])

    def _source(self, i: int) -> DataArraySource:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i][1]
        while len(self._open) >= self.max_open:  # close first: never more than max_open files at once
            old, _ = self._open.popitem(last=False)[1]
            if old is not None:
                old.close()
        shard = self.shards[i]
        ds = None if isinstance(shard, xr.DataArray) else open_dataset(shard)
        self._open[i] = (ds, DataArraySource(shard if ds is None else ds[self.variable]))
        return self._open[i][1]

    @property
    def n_open(self) -> int:
        """Shards open now (files and DataArrays)."""
        return len(self._open)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float32 [stop - start, d], across shard boundaries."""
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"rows {start}..{stop} are outside the {self.n_rows} rows of the shards")
        parts = []
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            take = min(stop, int(self.offsets[i + 1])) - start
            if take > 0:
                a = start - int(self.offsets[i])
                try:
                    parts.append(self._source(i).read(a, a + take))
                except ValueError as e:
                    raise ValueError(f"{self._name(i)}: {e}") from e
                start += take
            i += 1
        if not parts:
            return np.zeros((0, self.d), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        """Close every open shard file (later reads open them again)."""
        while self._open:
            ds, _ = self._open.popitem(last=False)[1]
            if ds is not None:
                ds.close()

    def __enter__(self) -> ShardedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def layer_rows(da: xr.DataArray, layer: int, row_dim: str, what: str) -> xr.DataArray:
    """The lazy [row_dim, unit] slice of ``layer`` of ``da`` [row_dim, layer, unit] (``what``: how the error
    names the file); ValueError when the layer is not in it."""
    layers = [int(v) for v in da["layer"].values] if "layer" in da.coords else list(range(da.sizes["layer"]))
    if int(layer) not in layers:
        raise ValueError(f"layer {layer} is not in the {what}; it holds layers {layers}")
    out = da.sel(layer=int(layer)) if "layer" in da.coords else da.isel(layer=int(layer))
    return out.transpose(row_dim, "unit")


def as_source(x: torch.Tensor | np.ndarray | xr.DataArray | RowSource) -> RowSource:
    """Wrap a tensor, array or 2-D DataArray as a :class:`RowSource`."""
    if isinstance(x, xr.DataArray):
        return DataArraySource(x)
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return TensorSource(x)
    if hasattr(x, "read") and hasattr(x, "n_rows"):
        return x
    raise ValueError(f"SAE input must be a torch.Tensor, numpy array or xarray.DataArray [n, d], got {type(x).__name__}")


class SubsetSource:
    """Rows ``rows`` (sorted indices) of another source, as a source of their own; reads merge contiguous ranges."""

    def __init__(self, source: RowSource, rows: np.ndarray, block: int = 256):
        self.source, self.rows, self.block = source, np.asarray(rows, dtype=np.int64), int(block)
        self.n_rows, self.d = int(self.rows.size), int(source.d)

    def read(self, start: int, stop: int) -> np.ndarray:
        return read_rows(self.source, self.rows[start:stop], self.block)


def split_rows(n_rows: int, fraction: float, seed: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows), sorted: ``round(fraction * blocks)`` whole blocks of ``block`` contiguous
    rows (at least one, and at least one block left for training) drawn by ``seed`` are held out."""
    n_blocks = -(-n_rows // block)
    if n_blocks < 2:
        raise ValueError(f"cannot hold out a validation set: {n_rows} rows make {n_blocks} block(s) of {block} "
                         "(shuffle_block); lower shuffle_block or pass a validation matrix")
    n_val = min(max(1, round(fraction * n_blocks)), n_blocks - 1)
    rng = np.random.Generator(np.random.PCG64([seed, 0x7A1]))
    held = np.zeros(n_blocks, dtype=bool)
    held[rng.choice(n_blocks, n_val, replace=False)] = True
    block_of = np.arange(n_rows) // block
    return np.flatnonzero(~held[block_of]), np.flatnonzero(held[block_of])


def source_sha256(source: RowSource, rows_per_read: int = 65536) -> str:
    """sha256 of a source's shape and float32 rows (read in ranges, so memory stays bounded)."""
    h = hashlib.sha256(f"{source.n_rows}x{source.d}:float32:".encode())
    for start in range(0, source.n_rows, rows_per_read):
        block = np.ascontiguousarray(source.read(start, min(start + rows_per_read, source.n_rows)), dtype=np.float32)
        h.update(memoryview(block).cast("B"))
    return h.hexdigest()


class _EpochOrder:
    """Order of the rows in one epoch, and its windows (position ranges read together)."""

    def __init__(self, n: int, seed: int, epoch: int, block: int, window: int):
        rng = np.random.Generator(np.random.PCG64([seed, epoch, 0x5AE]))
        n_blocks = -(-n // block)
        blocks = rng.permutation(n_blocks)
        per_window = max(1, window // block)
        order, bounds = [], [0]
        for w in range(0, n_blocks, per_window):
            chosen = blocks[w : w + per_window]
            rows = np.concatenate([np.arange(b * block, min((b + 1) * block, n)) for b in chosen])
            order.append(rows[rng.permutation(rows.size)])
            bounds.append(bounds[-1] + rows.size)
        self.order = np.concatenate(order)
        self.bounds = np.asarray(bounds)


class BatchStream:
    """Minibatch ``s`` [batch_size, d] float32 as a pure function of ``(seed, s)``."""

    def __init__(self, source: RowSource, batch_size: int, seed: int, block: int = 256, window: int = 65536):
        self.source, self.batch_size, self.seed = source, int(batch_size), int(seed)
        self.block, self.window = int(block), max(int(window), int(block))
        self._orders: OrderedDict[int, _EpochOrder] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _order(self, epoch: int) -> _EpochOrder:
        if epoch not in self._orders:
            self._orders[epoch] = _EpochOrder(self.source.n_rows, self.seed, epoch, self.block, self.window)
            while len(self._orders) > 2:
                self._orders.popitem(last=False)
        return self._orders[epoch]

    def _window(self, epoch: int, w: int) -> np.ndarray:
        key = (epoch, w)
        if key not in self._windows:
            eo = self._order(epoch)
            rows = eo.order[eo.bounds[w] : eo.bounds[w + 1]]
            self._windows[key] = read_rows(self.source, rows, self.block)
            while len(self._windows) > 2:
                self._windows.popitem(last=False)
        return self._windows[key]

    def batch(self, step: int) -> torch.Tensor:
        n = self.source.n_rows
        pos = step * self.batch_size
        parts, need = [], self.batch_size
        while need:
            epoch, q = divmod(pos, n)
            eo = self._order(epoch)
            w = int(np.searchsorted(eo.bounds, q, side="right") - 1)
            take = min(need, int(eo.bounds[w + 1]) - q)
            start = q - int(eo.bounds[w])
            parts.append(self._window(epoch, w)[start : start + take])
            pos, need = pos + take, need - take
        return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0].copy())

    def sample(self, max_rows: int = 8192) -> torch.Tensor:
        """A fixed data sample (the start of epoch 0) for statistics: up to ``max_rows`` rows."""
        eo = self._order(0)
        rows = eo.order[: min(max_rows, eo.bounds[1])]
        return torch.from_numpy(read_rows(self.source, rows, self.block))


def read_rows(source: RowSource, rows: np.ndarray, block: int) -> np.ndarray:
    """Rows ``rows`` (any order) of ``source`` [len(rows), d], reading merged contiguous ranges."""
    blocks = np.unique(rows // block)
    # merge consecutive blocks into ranges
    breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
    starts, parts = [], []
    pos = 0
    for run in np.split(blocks, breaks):
        a, b = int(run[0]) * block, min((int(run[-1]) + 1) * block, source.n_rows)
        parts.append(source.read(a, b))
        starts.append((a, pos))
        pos += b - a
    data = np.concatenate(parts) if len(parts) > 1 else parts[0]
    range_starts = np.asarray([s for s, _ in starts])
    range_pos = np.asarray([p for _, p in starts])
    r = np.searchsorted(range_starts, rows, side="right") - 1
    return np.ascontiguousarray(data[range_pos[r] + rows - range_starts[r]])


def norm_scaling_factor(sample: torch.Tensor) -> float:
    """Factor s with E||s x||^2 = d_in (SAELens ``expected_average_only_in``)."""
    msq = float(sample.double().pow(2).sum(1).mean())
    if msq <= 0:
        raise ValueError("cannot normalise activations: the data sample is all zeros")
    return float((sample.shape[1] / msq) ** 0.5)


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to the rows of x [n, d]."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-12)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * (1 + m.norm()):
            m = new
            break
        m = new
    return m.float()
