"""What every section builder shares: the study index, the page, options, and cached region geometry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mechflow.report.html import Section, note
from mechflow.report.loaders import Study
from mechflow.report.maps import RegionGeometry, region_geometry
from mechflow.report.plotting import KIND_COLORS, kind_color


@dataclass
class Context:
    """Shared state of one report build.

    top_n: features mapped per region and feature set; max_map_sets: feature sets mapped per region.
    """

    study: Study
    top_n: int = 4
    max_map_sets: int = 4
    _geoms: dict[tuple[str, str], RegionGeometry | None] = field(default_factory=dict)
    _geom_errors: dict[tuple[str, str], str] = field(default_factory=dict)

    # ---- results of a step ------------------------------------------------------------------

    def available(self, sec: Section, step: str, absent: str, what: str,
                  file_of: Callable[[Mapping[str, Any]], Any] | None = None) -> list[Mapping[str, Any]]:
        """The manifest entries of ``step`` whose file (``file_of(entry)``, default its ``path``) exists. When
        there are none, ``sec`` gets a note: ``absent`` if the study lists none, else that none of the listed
        ``what`` is available yet."""
        entries = self.study.entries.get(step) or []
        if not entries:
            sec.add(note(absent))
            return []
        have = [e for e in entries if self.study.exists(step, (file_of or (lambda e: e.get("path")))(e))]
        if not have:
            sec.add(note(f"None of the listed {what} is available yet."))
        return have

    # ---- regions -------------------------------------------------------------------------
    def regions(self, dataset: str) -> list[str]:
        table = self.study.prompts(dataset)
        return [] if table is None else sorted(table["region"].unique().tolist())

    @property
    def k(self) -> int:
        """Neighbours of the spatial weights: from a moran file, else the config, else 8."""
        for e in self.study.entries["spatial"]:
            ds = self.study.moran(e)
            if ds is not None and "k" in ds.attrs:
                return int(ds.attrs["k"])
        return int((self.study.config.get("spatial") or {}).get("k", 8))

    def crs_source(self, dataset: str):
        for e in self.study.entries["spatial"]:
            if e.get("dataset") == dataset:
                ds = self.study.moran(e)
                if ds is not None:
                    return ds
        return None

    def geometry(self, dataset: str, region: str) -> RegionGeometry | None:
        """Projected places and KNN graph of a region (computed once per build); None if unavailable."""
        key = (dataset, region)
        if key not in self._geoms:
            table = self.study.prompts(dataset)
            try:
                if table is None:
                    raise ValueError(f"no prompt table for dataset {dataset!r}")
                idx = np.flatnonzero(table["region"].values == region)
                crs = self.study.crs_of(self.crs_source(dataset), region)
                self._geoms[key] = region_geometry(table["longitude"].values[idx], table["latitude"].values[idx],
                                                   idx, region, crs, k=self.k)
            except ValueError as err:
                self._geoms[key] = None
                self._geom_errors[key] = str(err)
        return self._geoms[key]

    def geometry_error(self, dataset: str, region: str) -> str:
        return self._geom_errors.get((dataset, region), "")

    def rows_of(self, dataset: str, prompt_values: np.ndarray | None, n_rows: int) -> np.ndarray:
        """Row of a values array for each prompt of the dataset's prompt table ``[n_prompts]``.

        Matches by the ``prompt`` coordinate when both carry one, else requires equal lengths.
        """
        table = self.study.prompts(dataset)
        if table is None:
            raise ValueError(f"no prompt table for dataset {dataset!r}")
        if prompt_values is not None and "prompt" in table:
            pos = pd.Index(np.asarray(prompt_values)).get_indexer(table["prompt"].values)
            if (pos >= 0).all():
                return pos
        if n_rows != len(table):
            raise ValueError(f"values have {n_rows} prompts but dataset {dataset!r} has {len(table)}")
        return np.arange(n_rows)

    # ---- series naming -------------------------------------------------------------------
    def series_key(self, e: Mapping[str, Any]) -> str:
        return "|".join(str(e.get(k)) for k in ("model", "hook", "kind", "run"))

    def series_label(self, e: Mapping[str, Any]) -> str:
        """Legend label of a feature set: kind and run, the model where several, the hook where several."""
        spatial = self.study.entries["spatial"]
        models = {x.get("model") for x in spatial if not self.study.is_control_model(str(x.get("model")))}
        hooks = {x.get("hook") for x in spatial}
        kind, run, model = e.get("kind"), e.get("run"), str(e.get("model"))
        units = {"name_last": "units at the name's last token", "name_mean": "units over the name's tokens"}.get(run, "units")
        label = {"units": units, "sae": f"SAE {run}", "snmf": f"semi-NMF {run}"}.get(kind, str(kind))
        if self.study.is_control_model(model):
            label += f", random-init {model}"
        elif len(models) > 1:
            label += f" ({model})"
        if len(hooks) > 1:
            label += f" [{e.get('hook')}]"
        return label

    def series_style(self, e: Mapping[str, Any]) -> tuple[str, str | None]:
        """(colour, hatch) of a feature set: kind colours; random-init controls grey and hatched."""
        if self.study.is_control_model(str(e.get("model"))):
            return "#8a929c", "////"
        same = []
        for x in self.study.entries["spatial"]:
            if x.get("kind") == e.get("kind") and not self.study.is_control_model(str(x.get("model"))):
                key = self.series_key(x)
                if key not in same:
                    same.append(key)
        i = same.index(self.series_key(e)) if self.series_key(e) in same else 0
        return kind_color(str(e.get("kind")), i) if e.get("kind") in KIND_COLORS else kind_color("other", i + 1), None

    def entry_title(self, e: Mapping[str, Any], with_dataset: bool | None = None) -> str:
        """``GB`` style human title of an entry: model / hook layer L / run."""
        if with_dataset is None:
            with_dataset = len(self.study.datasets) > 1
        parts = [str(e["dataset"])] if with_dataset and e.get("dataset") is not None else []
        parts.append(str(e.get("model")))
        layer = f" layer {e['layer']}" if e.get("layer") is not None else ""
        parts.append(f"{e.get('hook')}{layer}")
        if e.get("run"):
            parts.append(str(e["run"]))
        return " / ".join(parts)
