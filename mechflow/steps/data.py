"""The prompt sets of a study (``datasets:`` other than text corpora): one ``prompts`` job each, their source files, and the checks on
their regions (a projected CRS in metres for each, enough places for ``spatial.k`` and the probes' folds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import result_path
from mechflow.data.prompts import geonames_path
from mechflow.data.regions import CRS_PRESETS
from mechflow.facts import StudyFacts
from mechflow.study import ConfigError, canonical, prompt_sets, study_crs

__all__ = ["jobs", "inputs", "params", "check", "warnings"]


def jobs(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries: dataset, path."""
    return [dict(dataset=d, path=result_path("prompts", study["results"], dataset=d)) for d in prompt_sets(study)]


def inputs(study: dict[str, Any], dataset: str) -> list[str]:
    """The file a prompt set is read from: the user's CSV / xarray file, or the GeoNames gazetteer."""
    ds = study["datasets"][dataset]
    return [ds["path"]] if ds["source"] in ("csv", "xarray") else [str(geonames_path(ds["gazetteer"]))]


def params(study: dict[str, Any], dataset: str) -> dict[str, Any]:
    return canonical(study["datasets"][dataset])


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """With the spatial step or the probes on and the prompt sets built: every region has a projected CRS in
    metres that pyproj knows, and enough places."""
    if facts.regions is None or not (study["spatial"]["enabled"] or study["probes"]["enabled"]):
        return
    _check_crs(study, facts.regions)
    _check_region_sizes(study, facts.regions)


def warnings(study: dict[str, Any], facts: StudyFacts) -> list[str]:
    """``datasets.<d>: ...`` for each prompt set with duplicated places (the same text or coordinates as an earlier prompt
    of the region): how many, and whether they were dropped or kept (``datasets.<d>.duplicates``)."""
    out = []
    for d, found in sorted((facts.duplicates or {}).items()):
        if not found:
            continue
        what = (f"{found} duplicated place{'s' if found > 1 else ''} (the same text or the same coordinates as an earlier "
                "prompt of its region)")
        if study["datasets"][d].get("duplicates", "drop") == "drop":
            out.append(f"datasets.{d}: {what} dropped, {facts.n(d)} prompts left; set datasets.{d}.duplicates: keep to keep them")
        else:
            out.append(f"datasets.{d}: {what} kept (datasets.{d}.duplicates: keep): they sit at distance 0 from each other "
                       f"and inflate Moran's I; set duplicates: drop to drop them")
    return out


def _check_crs(study: dict[str, Any], regions: dict[str, dict[str, int]]) -> None:
    """Every region analysed has a projected CRS in metres that pyproj knows."""
    # pyproj (~90 ms) only where the data are checked, not in the parse every job process makes of the study
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    declared = study_crs(study)
    sources = [(f"spatial.crs.{r}", c) for r, c in study["spatial"].get("crs", {}).items()]
    sources += [(f"datasets.{d}.regions.{r['name']}.crs", r["crs"]) for d, ds in study["datasets"].items()
                if ds["source"] == "geonames" for r in ds["regions"] if isinstance(r, dict)]
    for key, code in sources:
        try:
            crs = CRS.from_user_input(code)
        except CRSError as e:
            raise ConfigError(key, f"{code!r} is not a CRS pyproj knows ({' '.join(str(e).split())[:120]})") from None
        units = {axis.unit_name for axis in crs.axis_info}
        if not crs.is_projected or units - {"metre"}:
            raise ConfigError(key, f"{code!r} ({crs.name}) is not a projected CRS in metres; distances for the KNN "
                                   "weights and probes need one (e.g. a UTM zone)")
    for dataset, counts in regions.items():
        missing = sorted(r for r in counts if r not in declared and r not in CRS_PRESETS)
        if missing:
            raise ConfigError("spatial.crs", f"no projected CRS for region(s) {missing} of dataset {dataset!r}; add them "
                                             f"under spatial.crs (presets: {sorted(CRS_PRESETS)})")


def _check_region_sizes(study: dict[str, Any], regions: dict[str, dict[str, int]]) -> None:
    """Each region has more places than ``spatial.k`` and at least as many as the probes' folds and blocks."""
    sp, pr = study["spatial"], study["probes"]
    blocks = pr["blocks"] if pr["blocks"] is not None else 4 * pr["folds"]
    for dataset, counts in regions.items():
        region, n = min(counts.items(), key=lambda item: (item[1], item[0]))
        if sp["enabled"] and n <= sp["k"]:
            raise ConfigError("spatial.k", f"region {region!r} of dataset {dataset!r} has {n} places; k = {sp['k']} "
                                           "neighbours need at least k + 1 (lower spatial.k or add places)")
        if pr["enabled"] and n < max(pr["folds"], blocks):
            raise ConfigError("probes.folds", f"region {region!r} of dataset {dataset!r} has {n} places; {pr['folds']} "
                                              f"folds over {blocks} spatial blocks need at least {max(pr['folds'], blocks)} "
                                              "(lower probes.folds / probes.blocks or add places)")
        if pr["enabled"] and pr["folds"] > blocks:
            raise ConfigError("probes.blocks", f"{blocks} blocks cannot make {pr['folds']} folds")
