"""Read the study's result files named by the report manifest, with caching and clear errors.

The manifest (see :func:`mechflow.report.build_report`) lists files by their wildcards. A
:class:`Study` resolves entries to each other (a spatial entry to the activations, SAE features or
semi-NMF factors it analysed), loads each file once, and records what is listed but absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.contracts import result_path
from mechflow.io import load_dataset, open_dataset

FEATURE_DIMS = ("unit", "feature", "factor")
KIND_LABEL = {"units": "units", "sae": "SAE", "snmf": "semi-NMF"}
FEATURE_LABEL = {"unit": "unit", "feature": "feature", "factor": "factor"}
SECTIONS = ("prompts", "corpus", "activations", "spatial", "probes", "sae", "snmf", "lens", "steering", "selection", "explorer",
            "benchmarks")


def feature_dim(ds: xr.Dataset | xr.DataArray) -> str:
    """The feature dimension of a spatial/feature file: ``unit``, ``feature`` or ``factor``."""
    for d in FEATURE_DIMS:
        if d in ds.dims:
            return d
    raise ValueError(f"no feature dimension (one of {FEATURE_DIMS}) in dims {tuple(ds.dims)}")


def read_benchmark(path: str | Path) -> pd.DataFrame:
    """A Snakemake ``benchmark:`` TSV: one row per repeat; columns ``s`` (seconds), ``max_rss`` (MB), ..."""
    df = pd.read_csv(path, sep="\t", na_values=["-", "NA", ""])
    if "s" not in df.columns:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column; has {list(df.columns)})")
    return df


class Study:
    """Index over a report manifest: lookups between entries and cached loading of their files."""

    def __init__(self, manifest: Mapping[str, Any], base: str | Path | None = None) -> None:
        if not isinstance(manifest, Mapping):
            raise ValueError(f"manifest must be a mapping (JSON object), got {type(manifest).__name__}")
        unknown = set(manifest) - {"study", *SECTIONS}
        if unknown:
            raise ValueError(f"unknown manifest section(s) {sorted(unknown)}; expected study, {', '.join(SECTIONS)}")
        self.manifest = manifest
        self.base = Path(base) if base is not None else None
        self.study: dict[str, Any] = dict(manifest.get("study") or {})
        self.entries: dict[str, list[dict[str, Any]]] = {}
        for key in SECTIONS:
            value = manifest.get(key) or []
            if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
                raise ValueError(f"manifest[{key!r}] must be a list of entries, got {type(value).__name__}")
            self.entries[key] = [dict(e) for e in value]
        self._cache: dict[tuple, Any] = {}
        self.missing: list[tuple[str, str]] = []  # (section, path) listed but absent

    # ---- config --------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return dict(self.study.get("config") or {})

    def option(self, name: str, default: Any) -> Any:
        """A report option: ``study[name]``, else ``config['report'][name]``, else ``default``."""
        if self.study.get(name) is not None:
            return self.study[name]
        return (self.config.get("report") or {}).get(name, default)

    def is_control_model(self, model: str) -> bool:
        """True for a random-init control model (config ``models[model].random_init``)."""
        spec = (self.config.get("models") or {}).get(model) or {}
        return bool(spec.get("random_init", False))

    # ---- files ---------------------------------------------------------------------------
    def path(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() or self.base is None else self.base / p

    def exists(self, section: str, p: str | Path | None) -> bool:
        """Whether a listed file exists; records it as missing when not."""
        if p is None:
            return False
        if self.path(p).exists():
            return True
        if (section, str(p)) not in self.missing:
            self.missing.append((section, str(p)))
        return False

    def memo(self, key: tuple, load):
        """``load()`` once per study and ``key`` (results derived from several files, e.g. the evidence table)."""
        return self._cached(("memo", *key), load)

    def _cached(self, key: tuple, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def dataset(self, p: str | Path) -> xr.Dataset:
        """A whole (small) result file, loaded once."""
        return self._cached(("ds", str(p)), lambda: load_dataset(self.path(p)))

    def prompts(self, dataset: str) -> pd.DataFrame | None:
        """Prompt table of a dataset: index = position; columns prompt, text, latitude, longitude, region, place_id."""
        def load():
            for e in self.entries["prompts"]:
                if e.get("dataset") == dataset and self.exists("prompts", e.get("path")):
                    return _prompt_table(self.dataset(e["path"]))
            # fall back to the prompt coordinates that every activations file carries
            for e in self.entries["activations"]:
                if e.get("dataset") == dataset and self.exists("activations", e.get("path")):
                    with open_dataset(self.path(e["path"])) as ds:
                        return _prompt_table(ds.coords.to_dataset().drop_vars(["layer", "unit"], errors="ignore").load())
            return None
        return self._cached(("prompts", dataset), load)

    @cached_property
    def datasets(self) -> list[str]:
        names = []
        for key in SECTIONS[:-1]:
            for e in self.entries[key]:
                if e.get("dataset") is not None and str(e["dataset"]) not in names:
                    names.append(str(e["dataset"]))
        return names

    def moran(self, entry: Mapping[str, Any]) -> xr.Dataset | None:
        if not self.exists("spatial", entry.get("moran")):
            return None
        return self.dataset(entry["moran"])

    def lisa(self, entry: Mapping[str, Any]) -> xr.Dataset | None:
        """The LISA file of a spatial entry, or None (not requested, missing, or empty)."""
        if not entry.get("lisa") or not self.exists("spatial", entry["lisa"]):
            return None
        ds = self.dataset(entry["lisa"])
        return ds if "q" in ds.data_vars and any(d in ds.dims for d in FEATURE_DIMS) else None

    def find(self, section: str, **keys: Any) -> dict[str, Any] | None:
        """The first entry of ``section`` whose fields equal ``keys`` (layers compared as int)."""
        for e in self.entries[section]:
            if all(_same(e.get(k), v) for k, v in keys.items()):
                return e
        return None

    def source_values(self, entry: Mapping[str, Any], ids: Sequence | None = None) -> xr.DataArray:
        """Values ``[prompt, <feature-dim>]`` a spatial entry analysed (only ``ids`` when given).

        units: the layer of the activations file; sae: ``features.nc``; snmf: ``G``.
        Raises FileNotFoundError when the source is not listed or absent.
        """
        kind = entry.get("kind")
        common = dict(dataset=entry.get("dataset"), model=entry.get("model"), hook=entry.get("hook"))
        if kind == "units":
            src = self.find("activations", **common)
            if entry.get("name_position"):  # units at the name's positions (rule name_positions)
                src = {"path": result_path("name_positions", self.config["results"], **common,
                                           position=entry["name_position"])}
            if src is None or not self.exists("activations", src.get("path")):
                raise FileNotFoundError(f"activations of {_describe(entry)} not available")
            with open_dataset(self.path(src["path"])) as ds:
                da = ds["activations"].sel(layer=int(entry["layer"]))
                if ids is not None:
                    da = da.sel(unit=list(ids))
                return da.load()
        if kind == "sae":
            src = self.find("sae", **common, layer=entry.get("layer"), run=entry.get("run"))
            p = None if src is None else Path(src["dir"]) / "features.nc"
            if p is None or not self.exists("sae", p):
                raise FileNotFoundError(f"SAE features of {_describe(entry)} not available")
            da = self.dataset(p)["features"]
            return da if ids is None else da.sel(feature=list(ids))
        if kind == "snmf":
            src = self.find("snmf", **common, layer=entry.get("layer"), run=entry.get("run"))
            if src is None or not self.exists("snmf", src.get("path")):
                raise FileNotFoundError(f"semi-NMF factors of {_describe(entry)} not available")
            da = self.dataset(src["path"])["G"]
            return da if ids is None else da.sel(factor=list(ids))
        raise ValueError(f"unknown spatial kind {kind!r} in {_describe(entry)}; expected units, sae or snmf")

    def spatial_for(self, kind: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        """The spatial entry that analysed an SAE / semi-NMF entry (same dataset, model, hook, layer, run)."""
        return self.find("spatial", kind=kind, dataset=entry.get("dataset"), model=entry.get("model"),
                         hook=entry.get("hook"), layer=entry.get("layer"), run=entry.get("run"))

    def crs_of(self, ds: xr.Dataset | None, region: str) -> str | None:
        """Projected CRS of a region: a spatial file's ``crs`` attr, the config, then the presets."""
        if ds is not None and "crs" in ds.attrs:
            try:
                crs = json.loads(ds.attrs["crs"])
                if isinstance(crs, dict) and region in crs:
                    return str(crs[region])
            except (TypeError, ValueError):
                pass
        overrides = (self.config.get("spatial") or {}).get("crs") or {}
        try:
            from mechflow.data.regions import region_crs

            return region_crs(region, overrides)
        except (ImportError, ValueError):
            return overrides.get(region)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return int(a) == int(b) if isinstance(a, (int, np.integer)) or isinstance(b, (int, np.integer)) else str(a) == str(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _describe(entry: Mapping[str, Any]) -> str:
    keys = ("dataset", "model", "hook", "layer", "kind", "run")
    return "/".join(f"{entry[k]}" for k in keys if entry.get(k) is not None)


def _prompt_table(ds: xr.Dataset) -> pd.DataFrame:
    need = ("latitude", "longitude", "region")
    lacking = [v for v in need if v not in ds.variables]
    if lacking:
        raise ValueError(f"prompt file lacks {lacking}; expected text, latitude, longitude, region on dim prompt")
    n = ds.sizes["prompt"]
    cols = {
        "prompt": ds["prompt"].values if "prompt" in ds.variables else np.arange(n),
        "text": ds["text"].values.astype(str) if "text" in ds.variables else np.array([f"prompt {i}" for i in range(n)]),
        "latitude": ds["latitude"].values.astype(np.float64),
        "longitude": ds["longitude"].values.astype(np.float64),
        "region": ds["region"].values.astype(str),
    }
    if "place_id" in ds.variables:
        cols["place_id"] = ds["place_id"].values
    return pd.DataFrame(cols)
