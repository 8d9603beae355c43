"""Token activations of a text corpus, streamed to shard files: what SAEs train on when they train on a
token stream (SAELens's ``CacheActivationsRunner``).

The input is the windows file of :func:`mechflow.corpus.build_windows` (``tokens`` [window, position]
int, -1 = padding after the ``length`` real tokens; ``split`` [window] ``train`` / ``held_out``; attrs
``context_size``, ``prepend_bos``, ``sink_position`` = 0). One shard is the contiguous slice
``shard`` of ``n_shards`` (:func:`mechflow.extract.shard_slice`) of the windows of one split. The model
reads each window's token ids exactly as stored (padding masked by ``attention_mask``), one hook at one
layer is captured, and the forward pass stops after that block.

A shard file holds every real token except the sink position 0 of its windows (BOS, or the first token:
pooling leaves the attention sink out of prompts for the same reason), in window order, then position
order:

- ``activations`` [token, unit] float32 (HDF5 chunks of 256 rows by every unit: a contiguous row range
  touches few chunks);
- coordinates ``window`` [token] int64 (the window's index in the windows file), ``position`` [token]
  int64 (1 .. length - 1), ``document`` [token] int64 (where the windows file has it), ``unit`` [unit];
  no ``token`` index (opening a shard reads no per-token array);
- attrs: the caller's ``attrs`` (provenance) and ``hook``, ``layer``, ``split``, ``shard``, ``n_shards``,
  ``n_windows``, ``context_size``, ``prepend_bos``, ``sink_position``.

Nothing in a shard depends on an SAE run: every SAE of the layer reads the same shards
(:class:`mechflow.sae.data.ShardedSource`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from mechflow.extract.capture import capturing
from mechflow.extract.pooling import resolve_layers
from mechflow.extract.shards import shard_slice
from mechflow.hooks import n_layers
from mechflow.io import RowWriter, netcdf_attr

log = logging.getLogger(__name__)

#: the position left out of every window: the attention sink (BOS, or the first token)
SINK_POSITION = 0
#: HDF5 chunk rows of a shard file (the SAE stream reads blocks of shuffle_block = 256 rows by default)
CHUNK_ROWS = 256
#: rows are written in blocks of at most about this many MiB
WRITE_MB = 64.0


def shard_windows(windows: xr.Dataset, split: str, shard: int, n_shards: int) -> np.ndarray:
    """Indices (in the windows file) of the windows of ``split`` that shard ``shard`` of ``n_shards`` covers:
    a contiguous slice of that split's windows, in file order. ValueError when the split has no window."""
    labels = np.asarray(windows["split"].values).astype(str)
    of_split = np.flatnonzero(labels == split)
    if of_split.size == 0:
        raise ValueError(f"the windows file has no window of split {split!r} (splits: {sorted(set(labels.tolist()))})")
    return of_split[shard_slice(of_split.size, shard, n_shards)]


def _token_coords(windows: xr.Dataset, mine: np.ndarray, lengths: np.ndarray) -> xr.Dataset:
    """The coordinates of a shard file: one entry per kept token (positions 1 .. length - 1 of each window)."""
    keep = np.maximum(lengths - 1, 0)
    window = np.repeat(mine.astype(np.int64), keep)
    position = (np.arange(keep.sum(), dtype=np.int64) - np.repeat(np.cumsum(keep) - keep, keep) + 1)
    coords: dict[str, Any] = {"window": ("token", window), "position": ("token", position)}
    if "document" in windows.variables and windows["document"].dims == ("window",):
        coords["document"] = ("token", np.asarray(windows["document"].values, dtype=np.int64)[window])
    return xr.Dataset(coords=coords)


def check_ids(ids: np.ndarray, lengths: np.ndarray, idx: np.ndarray) -> None:
    """Real tokens (positions < length) are ids >= 0; the rest is padding (-1)."""
    real = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    bad = np.flatnonzero(((ids < 0) & real).any(1) | ((ids != -1) & ~real).any(1))
    if bad.size:
        raise ValueError(f"windows {idx[bad][:5].tolist()}: tokens must be ids >= 0 at the first `length` positions "
                         "and -1 (padding) after them")


class _Rows:
    """The write buffer: rows appended in order, written in blocks of at least ``block`` rows."""

    def __init__(self, writer: RowWriter, block: int):
        self.writer, self.block = writer, block
        self.parts: list[np.ndarray] = []
        self.start = self.buffered = 0

    def add(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.buffered += rows.shape[0]
        if self.buffered >= self.block:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.writer.write(self.start, activations=np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0])
            self.start, self.buffered = self.start + self.buffered, 0
            self.parts.clear()


def corpus_activations_to_file(
    path: str | Path,
    model: torch.nn.Module,
    windows: xr.Dataset,
    hook: str,
    layer: int,
    shard: int,
    n_shards: int,
    split: str,
    batch_size: int,
    attrs: dict[str, Any],
    progress: bool = False,
    write_mb: float = WRITE_MB,
) -> Path:
    """Run ``model`` over the windows of ``split`` in shard ``shard`` of ``n_shards`` and write the activations
    of ``hook`` at ``layer`` (negative: from the end) of every real token but the sink position to ``path``
    (the shard file of the module docstring), atomically (:class:`mechflow.io.RowWriter`).

    ``batch_size`` windows run per forward pass, cut to the longest window of the batch; ids are fed as stored
    (``-1`` padding becomes id 0 under ``attention_mask`` 0). Memory holds one batch of activations and a
    write buffer of at most about ``write_mb`` MiB; ``windows`` may be opened lazily (each batch reads its
    rows of ``tokens``). A shard without tokens (more shards than windows) is written with no rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sink = int(windows.attrs.get("sink_position", SINK_POSITION))
    if sink != SINK_POSITION:
        raise ValueError(f"the windows file has sink_position {sink}; corpus activations leave out position "
                         f"{SINK_POSITION} of every window")
    if windows["tokens"].dims != ("window", "position"):
        raise ValueError(f"windows tokens must have dims (window, position), got {windows['tokens'].dims}")
    layer_id = resolve_layers([int(layer)], n_layers(model))[0]
    mine = shard_windows(windows, split, shard, n_shards)
    lengths = np.asarray(windows["length"].values, dtype=np.int64)[mine]
    coords = _token_coords(windows, mine, lengths)
    n_tokens = coords.sizes["token"]
    file_attrs = {**attrs, **{k: netcdf_attr(v) for k, v in {
        "hook": hook, "layer": layer_id, "split": split, "shard": int(shard), "n_shards": int(n_shards),
        "n_windows": int(mine.size), "context_size": int(windows.attrs.get("context_size", windows.sizes["position"])),
        "prepend_bos": windows.attrs.get("prepend_bos", ""), "sink_position": SINK_POSITION}.items()}}
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        capture = stack.enter_context(capturing(model, {hook: [layer_id]}))

        def run(ids: np.ndarray) -> np.ndarray:
            """[b, T] stored ids (-1 padding) -> the hook's activations [b, T, units] float32."""
            ids_t = torch.from_numpy(ids.astype(np.int64))
            inputs = {"input_ids": ids_t.clamp_min(0).to(device), "attention_mask": (ids_t >= 0).long().to(device)}
            return capture(inputs)[hook, layer_id].float().cpu().numpy()

        def open_writer(d: int) -> _Rows:
            rows = RowWriter(path, coords.assign_coords(unit=np.arange(d, dtype=np.int64)), ("token", "unit"),
                             {"activations": {"hook": hook, "layer": layer_id}}, file_attrs,
                             chunks=(max(1, min(n_tokens, CHUNK_ROWS)), max(1, d)))
            return _Rows(stack.enter_context(rows), max(CHUNK_ROWS, int(write_mb * 2**20) // (4 * max(1, d))))

        writer = None
        if n_tokens == 0:  # nothing to capture: one token of the file's first window tells the width
            writer = open_writer(run(np.maximum(np.asarray(windows["tokens"][:1, :1].values), 0)).shape[-1])
        bar = tqdm(total=int(mine.size), desc=f"corpus {hook} layer {layer_id}", unit="window", disable=not progress,
                   mininterval=2.0)
        for b0 in range(0, mine.size, batch_size):
            idx, lens = mine[b0 : b0 + batch_size], lengths[b0 : b0 + batch_size]
            width = int(lens.max())
            if width > SINK_POSITION + 1:
                ids = np.asarray(windows["tokens"].isel(window=idx, position=slice(0, width)).values)
                check_ids(ids, lens, idx)
                acts = run(ids)
                writer = writer or open_writer(acts.shape[-1])
                keep = np.arange(width)[None, :] < lens[:, None]
                keep[:, SINK_POSITION] = False
                writer.add(acts[keep])
            bar.update(len(idx))
        bar.close()
        writer.flush()
    seconds = time.perf_counter() - t0
    log.info("wrote %s: %d tokens of %d %s windows (shard %d of %d), %s layer %d, %.0f tokens/s", path, n_tokens,
             mine.size, split, shard, n_shards, hook, layer_id, n_tokens / max(seconds, 1e-9))
    return Path(path)
