"""Scale-out of extraction: the contiguous slice of prompts one shard extracts (:func:`shard_slice`), and the
gather of the shard files into one activations file (:func:`gather_shards`), in windows of bounded memory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mechflow.contracts import GATHER_WINDOW_MB
from mechflow.extract.settings import ExtractionError
from mechflow.extract.writer import ActivationWriter
from mechflow.io import open_dataset


def shard_slice(n: int, shard: int, n_shards: int) -> slice:
    """Contiguous slice of ``n`` prompts for shard ``shard`` (0-based) of ``n_shards``."""
    if not 0 <= shard < n_shards:
        raise ExtractionError(f"shard {shard} out of range for {n_shards} shards")
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    return slice(int(bounds[shard]), int(bounds[shard + 1]))


def gather_shards(shard_paths: Sequence[str | Path], path: str | Path, prompts: xr.Dataset, attrs: dict[str, Any],
                  window_mb: float = GATHER_WINDOW_MB) -> Path:
    """Concatenate shard files (each a contiguous slice of the prompts) into one activations file.

    Each shard is copied in windows of rows of at most ``window_mb`` MiB (activations and sink
    together), so memory is bounded by one window, whatever the size of a shard."""
    extra = {}  # per-prompt coordinates the extraction added (n_tokens), in shard order
    for shard in shard_paths:
        with open_dataset(shard) as ds:
            for name, var in ds.coords.items():
                if var.dims == ("prompt",) and name not in prompts.coords:
                    extra.setdefault(name, []).append(var.values)
    prompts = prompts.assign_coords({name: ("prompt", np.concatenate(parts)) for name, parts in extra.items()
                                     if sum(map(len, parts)) == prompts.sizes["prompt"]})
    layers = None
    with ActivationWriter(path, prompts, [], attrs) as writer:
        for shard in shard_paths:
            with open_dataset(shard) as ds:
                da = ds["activations"]
                if layers is None:
                    layers = da["layer"].values.tolist()
                    writer.layers = layers
                    writer.keep_sink = "sink" in ds
                    writer.attrs = {**{k: v for k, v in ds.attrs.items() if k not in ("created", "shard")}, **attrs}
                elif da["layer"].values.tolist() != layers or ("sink" in ds) != writer.keep_sink:
                    raise ExtractionError(f"shard {shard} has layers {da['layer'].values.tolist()} and "
                                          f"{'a' if 'sink' in ds else 'no'} sink; the first shard had {layers}")
                positions = np.searchsorted(prompts["prompt"].values, da["prompt"].values)
                if not np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))):
                    raise ExtractionError(f"shard {shard} is not a contiguous slice of the prompts")
                row_bytes = 4 * int(np.prod(da.shape[1:])) * (2 if writer.keep_sink else 1)
                window = max(1, int(window_mb * 2**20) // max(1, row_bytes))
                for i in range(0, da.sizes["prompt"], window):
                    rows = slice(i, min(i + window, da.sizes["prompt"]))
                    writer.write_rows(int(positions[0]) + i, da[rows].values,
                                      ds["sink"][rows].values if writer.keep_sink else None)
    return Path(path)
