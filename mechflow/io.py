"""xarray files with provenance, written atomically.

Every intermediate of the workflow is a netCDF file (h5netcdf engine) or, for paths ending in
``.zarr``, a Zarr store. Writes go to a hidden temporary sibling first and are renamed into place
only when complete, so a killed job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from mechflow import __version__

TMP_MARK = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporaries a killed writer of ``path`` left behind; returns what was removed."""
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}{TMP_MARK}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary is a hidden sibling (same directory, so the rename is atomic on POSIX).
    On any exception it is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {path}: nothing was written to {tmp}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same object always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def digest(obj: Any, length: int = 16) -> str:
    """Short sha256 of an object's canonical JSON (params dicts, configs)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Full sha256 hex digest of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over several files (sorted by name; each file's name and content)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def provenance_attrs(config_digest: str, **upstream: Any) -> dict[str, Any]:
    """Attrs every mechflow file carries: version, creation time, config digest, upstream provenance.

    Values that netCDF cannot hold as attributes (dicts, lists of mixed types, None) are stored as
    JSON strings.
    """
    attrs: dict[str, Any] = {
        "mechflow_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "config_digest": config_digest,
    }
    for key, value in upstream.items():
        attrs[key] = netcdf_attr(value)
    return attrs


def netcdf_attr(value: Any) -> Any:
    """Turn a Python value into something a netCDF attribute can hold."""
    if isinstance(value, (str, int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value
    ):
        return np.asarray(value)
    return canonical_json(value)


def read_csv_checked(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "",
                     empty_hint: str = "", **read_kw: Any):
    """``pandas.read_csv`` of a UTF-8 file, with one-line ``error``s naming the file: it does not exist
    (``what``: how to call it, e.g. "prompt CSV"), its bytes are not UTF-8, it is empty (``empty_hint``: what
    it needs), or its text is not CSV. ``read_kw`` go to ``read_csv``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise error(f"{what + ' ' if what else ''}{path} does not exist")
    try:
        return pd.read_csv(path, encoding="utf-8", **read_kw)
    except UnicodeDecodeError as e:  # e.start counts from pandas's read buffer, not from the file's start
        offset, reason = first_non_utf8(path) or (e.start, e.reason)
        raise error(f"{path}: not UTF-8 text (byte {offset}: {reason}); save the CSV as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise error(f"{path}: the file is empty{f' ({empty_hint})' if empty_hint else ''}") from None
    except pd.errors.ParserError as e:
        raise error(f"{path}: not a readable CSV ({' '.join(str(e).split())})") from None


def first_non_utf8(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[int, str] | None:
    """Byte offset (from the file's start) and reason of the first byte sequence that is not UTF-8, else None;
    read in ``chunk``-byte pieces."""
    import codecs

    decoder, done = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:  # e.start is within the decoder's pending bytes + this block
                pending = len(e.object) - len(block)
                return done - pending + e.start, e.reason
            if not block:
                return None
            done += len(block)


def inherit_provenance(source_attrs: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Copy the named provenance attrs of an upstream file (missing ones are skipped)."""
    return {k: source_attrs[k] for k in keys if k in source_attrs}


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr"


def write_dataset(ds: xr.Dataset, path: str | os.PathLike, encoding: dict | None = None) -> Path:
    """Write a Dataset atomically: netCDF via h5netcdf, or Zarr when ``path`` ends in ``.zarr``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if _is_zarr(path):
            ds.to_zarr(tmp, mode="w", encoding=encoding)
        else:
            ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding, invalid_netcdf=False)
    return path


def write_dataarray(da: xr.DataArray, path: str | os.PathLike, encoding: dict | None = None) -> Path:
    """Write a named DataArray atomically (see :func:`write_dataset`)."""
    if da.name is None:
        raise ValueError("write_dataarray needs a named DataArray (the name is the file's variable)")
    ds = da.to_dataset()
    ds.attrs = dict(da.attrs)
    return write_dataset(ds, path, encoding=None if encoding is None else {da.name: encoding})


class RowWriter:
    """Stream variables [row, ...] into a netCDF file block by block, atomically, so a file larger
    than memory is written one block at a time.

    ``coords``: every coordinate of the file (the row dim first in ``dims``; the other dims' sizes come
    from their index coordinates in ``coords``); ``variables``: name -> that variable's attrs (``attrs``
    are the file's); ``chunks``: the HDF5 chunk shape (default: ``chunk_rows`` rows by at most 1,024 of every
    other dim, so both row blocks and column blocks, as the spatial step reads features, touch few chunks). The file is
    created under a hidden temporary name beside ``path`` with all coordinates and ``attrs``, filled by
    :meth:`write` (rows ``start .. start + len(block)`` of each named variable), and renamed onto
    ``path`` only on a clean exit with every row written; otherwise it is removed and ``path`` untouched.
    Raises ``error`` (default ValueError) when rows were never written.
    """

    def __init__(self, path: str | os.PathLike, coords: xr.Dataset, dims: tuple[str, ...],
                 variables: Mapping[str, Mapping[str, Any]], attrs: Mapping[str, Any], chunk_rows: int = 256,
                 chunks: tuple[int, ...] | None = None, dtype: str = "f4", error: type[Exception] = ValueError):
        self.path = Path(path)
        self.coords, self.dims, self.variables = coords, tuple(dims), dict(variables)
        self.attrs, self.chunk_rows, self.dtype, self.error = dict(attrs), int(chunk_rows), dtype, error
        self.chunks = chunks
        self.n_rows = int(coords.sizes[self.dims[0]])
        self._written = np.zeros(self.n_rows, dtype=bool)
        self._file: Any = None
        self._vars: dict[str, Any] = {}

    def __enter__(self) -> RowWriter:
        import h5netcdf

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            xr.Dataset(coords=self.coords.coords, attrs=self.attrs).to_netcdf(tmp, engine="h5netcdf")
            self._file = h5netcdf.File(tmp, "a")
            shape = [self.n_rows] + [int(self.coords.sizes[d]) for d in self.dims[1:]]
            chunks = self.chunks or tuple([max(1, min(self.n_rows, self.chunk_rows))] + [max(1, min(s, 1024)) for s in shape[1:]])
            for name, var_attrs in self.variables.items():
                var = self._file.create_variable(name, self.dims, dtype=self.dtype, chunks=chunks if self.n_rows else None)
                for k, v in var_attrs.items():
                    var.attrs[k] = v
                self._vars[name] = var
        except BaseException as e:
            self._close()
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def write(self, start: int, **blocks: np.ndarray) -> None:
        """Write rows ``start .. start + len(block)`` of each named variable (all named ones, same length)."""
        if set(blocks) != set(self._vars):
            raise self.error(f"write needs exactly the variables {sorted(self._vars)}, got {sorted(blocks)}")
        n = {len(b) for b in blocks.values()}
        if len(n) != 1:
            raise self.error(f"blocks of different lengths: { {k: len(b) for k, b in blocks.items()} }")
        (n,) = n
        if start < 0 or start + n > self.n_rows:
            raise self.error(f"rows {start}..{start + n} are outside the file's {self.n_rows} {self.dims[0]}s")
        for name, block in blocks.items():
            self._vars[name][start : start + n, ...] = block
        self._written[start : start + n] = True

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._close()
        if exc_type is None and not self._written.all():
            err = self.error(f"{int((~self._written).sum())} {self.dims[0]}s were never written")
            self._atomic.__exit__(type(err), err, None)
            raise err
        return bool(self._atomic.__exit__(exc_type, exc, tb))


class DamagedFileError(OSError):
    """A mechflow file exists but cannot be read: damaged or incomplete. The message says how to rebuild it."""


def damaged(path: str | os.PathLike, err: BaseException) -> DamagedFileError:
    """A one-line DamagedFileError naming the file, the reason and the rule that rebuilds it."""
    from mechflow.contracts import producer_of

    rule = producer_of(Path(path).as_posix())
    how = (f"it is made by rule '{rule}': rebuild it with `snakemake -c all --forcerun {rule}` (or delete it and run again)"
           if rule else "replace it with a good copy")
    reason = " ".join(str(err).split()) or type(err).__name__
    return DamagedFileError(f"{path} cannot be read ({type(err).__name__}: {reason}); the file is damaged or incomplete, {how}")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        if isinstance(e, (FileNotFoundError, DamagedFileError)):
            raise
        raise damaged(path, e) from e


def open_dataset(path: str | os.PathLike, **kwargs: Any) -> xr.Dataset:
    """Open a mechflow file (netCDF or Zarr), lazily; DamagedFileError when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such mechflow file: {path}")
    with _reading(path):
        if _is_zarr(path):
            return xr.open_zarr(path, **kwargs)
        return xr.open_dataset(path, engine="h5netcdf", **kwargs)


def primary_variable(ds: xr.Dataset, path: str | os.PathLike) -> str:
    """The data variable of a mechflow file: its single variable, or ``activations`` in an activations file
    that also holds auxiliary variables (``sink``); ValueError naming ``path`` otherwise."""
    names = list(ds.data_vars)
    if len(names) == 1:
        return str(names[0])
    if "activations" in names:
        return "activations"
    raise ValueError(f"{path} holds {sorted(names)}; use open_dataset for several variables")


def open_dataarray(path: str | os.PathLike, **kwargs: Any) -> xr.DataArray:
    """Open the data variable of a mechflow file (:func:`primary_variable`), with the file's attrs."""
    ds = open_dataset(path, **kwargs)
    da = ds[primary_variable(ds, path)]
    da.attrs = {**ds.attrs, **da.attrs}
    return da


def load_dataarray(path: str | os.PathLike, layer: int | None = None) -> xr.DataArray:
    """Open and load into memory, closing the file; DamagedFileError when it cannot be read.

    ``layer``: read only that layer (dropping the dim) of a file with a ``layer`` dim, so a token file of many
    layers is never held whole; ValueError when it was not extracted."""
    with open_dataarray(path) as da, _reading(Path(path)):
        if layer is None:
            return da.load()
        if layer not in da["layer"].values.tolist():
            raise ValueError(f"{path}: layer {layer} was not extracted (have {da['layer'].values.tolist()})")
        return da.sel(layer=layer, drop=True).load()


def load_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Open and load into memory, closing the file; DamagedFileError when it cannot be read."""
    with open_dataset(path) as ds, _reading(Path(path)):
        return ds.load()


FeatureSetKind = Literal["units", "sae", "snmf"]


def has_sink(path: str | Path) -> bool:
    """Whether an activations file holds the left-out pooling position (``extract.keep_sink``)."""
    with open_dataset(path) as ds, _reading(Path(path)):
        return "sink" in ds.data_vars


def load_feature_set(path: str | Path, kind: FeatureSetKind, layer: int | None = None,
                     sink: bool = False) -> xr.DataArray:
    """Read a feature set [prompt, <feature-dim>] from an activations, SAE features or semi-NMF file.

    ``sink=True`` (units only, from a file written with ``extract.keep_sink``): the pooling *with*
    the position it left out, rebuilt by :func:`mechflow.extract.with_sink` (attrs ``pool_excluded``
    becomes ``none (rebuilt)``). :class:`FeatureColumns` reads the same by columns.
    """
    with FeatureColumns(path, kind, layer, sink=sink) as features:
        return features.columns(slice(None))


class FeatureColumns:
    """A feature set [prompt, <feature-dim>] of a file, opened lazily and read by columns; a context manager.

    The files, kinds and checks of :func:`load_feature_set`. ``columns(index)`` (a slice or sorted
    positions along the feature dim) reads only those columns, with the prompt coordinates: equal to
    ``load_feature_set(...).isel({dim: index})``, so a reader holds one block of features at a time
    (:func:`mechflow.spatial.spatial_analysis` takes one). ``dims``, ``shape`` and ``attrs`` are the
    whole set's.
    """

    def __init__(self, path: str | Path, kind: FeatureSetKind, layer: int | None = None, sink: bool = False):
        if kind not in ("units", "sae", "snmf"):
            raise ValueError(f"unknown feature-set kind {kind!r} (units, sae, snmf)")
        self.path = Path(path)
        self._ds = open_dataset(path)
        try:
            self._da, self._sink, self.attrs = self._select(kind, layer, sink)
        except BaseException:
            self._ds.close()
            raise
        self.dims = self._da.dims
        self.shape = tuple(int(s) for s in self._da.shape)

    def _select(self, kind: FeatureSetKind, layer: int | None, sink: bool):
        ds, path = self._ds, self.path
        if kind == "units":
            with _reading(path):
                layers, stored = ds["layer"].values.tolist(), "sink" in ds.data_vars
            if layer not in layers:
                raise ValueError(f"{path}: layer {layer} was not extracted (have {layers}); add it to extract.layers")
            if sink and not stored:
                raise ValueError(f"{path} holds no sink: extract with extract.keep_sink: true")
            with _reading(path):
                name = "activations" if "activations" in ds.data_vars else next(iter(ds.data_vars))
                da = ds[name].sel(layer=layer, drop=True)
                attrs = {**ds.attrs, **da.attrs}
                if sink:
                    self._n_tokens = ds["n_tokens"].values
                    return da, ds["sink"].sel(layer=layer, drop=True), {**attrs, "pool_excluded": "none (rebuilt)"}
            return da, None, attrs
        if kind == "sae":
            name = primary_variable(ds, path)
            return ds[name], None, {**ds.attrs, **ds[name].attrs}
        with _reading(path):
            return ds["G"], None, dict(ds["G"].attrs)

    def columns(self, index: slice | np.ndarray) -> xr.DataArray:
        """The features at ``index`` along the feature dim, loaded (float32 as stored; rebuilt with the sink)."""
        fdim = self.dims[1]
        with _reading(self.path):
            da = self._da.isel({fdim: index}).load()
            if self._sink is not None:
                from mechflow.sink import with_sink

                rebuilt = with_sink(da.values, self._sink.isel({fdim: index}).values, self._n_tokens,
                                    str(self.attrs["pooling"]))
                da = da.copy(data=rebuilt.astype(np.float32))
        da.attrs = dict(self.attrs)
        return da

    def lazy(self) -> xr.DataArray:
        """The whole set [prompt, <feature-dim>] as a lazily indexed DataArray (read as it is indexed,
        while this is open), with the set's attrs; not for a set rebuilt with the sink."""
        if self._sink is not None:
            raise ValueError(f"{self.path}: a feature set rebuilt with the sink is read by columns() only")
        return self._da.assign_attrs(self.attrs)

    def close(self) -> None:
        self._ds.close()

    def __enter__(self) -> FeatureColumns:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
