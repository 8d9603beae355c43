"""The activation file: :class:`ActivationWriter` streams ``activations`` [prompt, layer, unit] (or
[token, layer, unit]) into a netCDF file block by block, atomically; with the pooling's sink beside it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mechflow.extract.settings import ExtractionError
from mechflow.io import RowWriter

SINK_DESCRIPTION = ("activation at the position mean/max pooling left out (attrs pool_excluded); NaN where nothing "
                    "was; mechflow.extract.with_sink rebuilds the pooling with it")


class ActivationWriter:
    """Stream pooled activations [prompt, layer, unit] into a netCDF file, atomically
    (:class:`mechflow.io.RowWriter`, created at the first block, when the unit count is known).

    The file is created beside ``path`` under a hidden temporary name with all coordinates, filled
    block by block, and renamed onto ``path`` only on a clean exit. ``keep_sink``: the file also
    holds ``sink`` [prompt, layer, unit] (see :data:`SINK_DESCRIPTION`); ``activations`` stays the
    file's primary variable (:func:`mechflow.io.open_dataarray` reads it).
    """

    def __init__(self, path: str | Path, prompts: xr.Dataset, layers: Sequence[int], attrs: dict[str, Any],
                 dim: str = "prompt", keep_sink: bool = False):
        self.path = Path(path)
        self.keep_sink = keep_sink
        self.prompts = prompts  # the coordinates along ``dim`` (prompts, or tokens for token-level files)
        self.dim = dim
        self.layers = list(layers)
        self.attrs = attrs
        self._rows: RowWriter | None = None

    def __enter__(self) -> ActivationWriter:
        return self

    def create(self, n_units: int) -> None:
        """Create the temporary file with all coordinates and an unfilled ``activations`` variable."""
        if self._rows is not None:
            return
        dim = self.dim
        coords = {
            dim: self.prompts[dim].values,
            "layer": np.asarray(self.layers, dtype=np.int64),
            "unit": np.arange(n_units, dtype=np.int64),
        }
        for name, var in self.prompts.coords.items():
            if name != dim and var.dims == (dim,):
                coords[name] = (dim, var.values)
        variables = {"activations": self.attrs}
        if self.keep_sink:
            variables["sink"] = {"description": SINK_DESCRIPTION}
        n = self.prompts.sizes[dim]
        rows = RowWriter(self.path, xr.Dataset(coords=coords), (dim, "layer", "unit"), variables, self.attrs,
                         chunks=(max(1, min(n, 256)), 1, max(1, n_units)), error=ExtractionError)
        self._rows = rows.__enter__()

    def write_rows(self, start: int, block: np.ndarray, sink: np.ndarray | None = None) -> None:
        """Write prompts ``start .. start + len(block)`` (positions in the prompt set); block [b, n_layers, units]
        (and, for a writer with ``keep_sink``, the left-out positions' activations ``sink``, same shape)."""
        self.create(block.shape[-1])
        if self.keep_sink != (sink is not None):
            raise ExtractionError("sink rows are written exactly when the writer keeps the sink")
        self._rows.write(start, **({"activations": block} | ({"sink": sink} if sink is not None else {})))

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._rows is not None:
            return bool(self._rows.__exit__(exc_type, exc, tb))
        if exc_type is None:
            raise ExtractionError(f"{self.prompts.sizes[self.dim]} {self.dim}s were never written")
        return False
