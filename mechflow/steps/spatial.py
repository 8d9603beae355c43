"""The spatial step: Moran's I, Geary's C and LISA of every feature set the study makes, per region.

A feature set (the ``{source}`` wildcard) is a hook's raw units (``units``, when ``spatial.units``),
an SAE run's features (``sae-<run>``) or a semi-NMF run's factors (``snmf-<run>``), on the prompt
sets and models of ``spatial:``; and, on the prompt sets of :func:`name_sets`, the raw units at the
positions that carry the place's name (``units-name_last``, ``units-name_mean``: rule name_positions,
:mod:`mechflow.extract.names`), one extra read of the token-level file per prompt set, model and hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import NAME_ONLY_TEMPLATE, NAME_POSITIONS, is_main, result_path
from mechflow.facts import StudyFacts
from mechflow.steps import sae, snmf
from mechflow.steps.extract import check_analysed_layers, check_step_models
from mechflow.study import ConfigError, canonical, settings, study_crs, study_pairs

__all__ = ["UNIT_SOURCES", "RUN_SOURCES", "unit_layers", "rule_counts", "jobs",
           "input_path", "params", "sink_control", "check", "name_sets", "name_source", "name_position",
           "name_params", "name_jobs"]

#: the settings of ``spatial:`` that define its results
SETTINGS = ("k", "transform", "permutations", "layer_permutations", "seed", "lisa_top_n", "shuffled_control",
            "shuffles", "residualise")
#: the name's positions as feature-set sources (``units-name_<position>``)
NAME_SOURCE = "units-name_{position}"
#: ``{source}`` wildcards of raw units (rule spatial_units: every layer of ``spatial.layers`` in one job) and of runs'
#: features (rule spatial: one job per layer)
UNIT_SOURCES = r"units|units-name_(?:last|mean)"
RUN_SOURCES = r"(?:sae|snmf)-[A-Za-z0-9][A-Za-z0-9_.-]*"


def name_sets(study: dict[str, Any]) -> list[tuple[str, str]]:
    """(dataset, model) pairs whose name positions are tested: the analysed GeoNames prompt sets named by
    ``spatial.name_position_datasets`` (null = those prompted by the name alone), when ``spatial.units`` and
    ``spatial.name_positions``."""
    sp = study["spatial"]
    if not (sp["enabled"] and sp["units"] and sp.get("name_positions")):
        return []
    chosen = sp.get("name_position_datasets")
    datasets = study["datasets"]
    keep = (set(chosen) if chosen is not None else
            {d for d, ds in datasets.items() if str(ds.get("template", "")).strip() == NAME_ONLY_TEMPLATE})
    return [(d, m) for d, m in study_pairs(study, sp) if d in keep
            and datasets[d].get("source", "geonames") == "geonames"]


def name_source(position: str) -> str:
    """The ``{source}`` wildcard of a name position (``last`` -> ``units-name_last``)."""
    return NAME_SOURCE.format(position=position)


def name_position(source: str) -> str | None:
    """The name position of a ``{source}`` wildcard (``units-name_last`` -> ``last``), else None."""
    kind, _, run = source.partition("-")
    return run[len("name_"):] if kind == "units" and run.startswith("name_") else None


def jobs(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries: dataset, model, hook, layer, source, ``run`` (None for units), ``kind`` (units, sae, snmf),
    ``moran`` and ``lisa`` (None when ``spatial.lisa_top_n`` is 0)."""
    sp, root = study["spatial"], study["results"]
    if not sp["enabled"]:
        return []
    found = []
    if sp["units"]:
        found += [dict(dataset=d, model=m, hook=h, layer=layer, source="units")
                  for d, m in study_pairs(study, sp) for h in sp["hooks"] for layer in sp["layers"]]
        found += [dict(dataset=d, model=m, hook=h, layer=layer, source=name_source(p), name_position=p)
                  for d, m in name_sets(study) for p in sp["name_positions"] for h in sp["hooks"]
                  for layer in sp["layers"]]
    analysed = set(study_pairs(study, sp))
    for kind, step in (("sae", sae), ("snmf", snmf)):
        found += [dict({k: v for k, v in j.items() if k not in ("run", "dir", "splice", "corpus_splice", "path")},
                       source=f"{kind}-{j['run']}")
                  for j in step.jobs(study, facts) if (j["dataset"], j["model"]) in analysed]
    return [dict(j, run=j["source"].partition("-")[2] or None, kind=j["source"].partition("-")[0],
                 name_position=j.get("name_position"),
                 moran=result_path("moran", root, **j), lisa=result_path("lisa", root, **j) if sp["lisa_top_n"] > 0 else None)
            for j in found]


def unit_layers(study: dict[str, Any]) -> list[int]:
    """The layers one spatial_units job tests (``spatial.layers``, in order, without repeats)."""
    return list(dict.fromkeys(int(layer) for layer in study["spatial"]["layers"]))


def rule_counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Jobs per rule of the spatial manifest ``entries``: ``spatial_units`` one per (dataset, model, hook, source) of
    raw units, whatever the layers; ``spatial`` one per run's feature set and layer."""
    units = {(e["dataset"], e["model"], e["hook"], e["source"]) for e in entries if e["kind"] == "units"}
    return {"spatial_units": len(units), "spatial": sum(1 for e in entries if e["kind"] != "units")}


def input_path(study: dict[str, Any], wildcards: dict[str, str]) -> str:
    """The feature set a spatial job analyses, by its source wildcard."""
    kind, _, run = wildcards["source"].partition("-")
    job = dict(wildcards, run=run)
    position = name_position(wildcards["source"])
    if position is not None:
        return result_path("name_positions", study["results"], **dict(job, position=position))
    if kind == "units":
        return result_path("activations", study["results"], **job)
    if kind == "sae":
        return result_path("sae_dir", study["results"], **job) + "/features.nc"
    return result_path("snmf", study["results"], **job)


def params(study: dict[str, Any]) -> dict[str, Any]:
    """The settings of every spatial job, with the region -> CRS map (inline regions' crs, ``spatial.crs`` overrides)."""
    return canonical(dict(settings(study["spatial"], *SETTINGS), crs=study_crs(study)))


def name_params(study: dict[str, Any], dataset: str, model: str, hook: str) -> dict[str, Any]:
    """What defines the name-position files of one prompt set, model and hook: the template, the layers the spatial
    step reads, the model's tokenizer (its spec) and the extraction's truncation."""
    return canonical({"template": study["datasets"][dataset].get("template", "{name}, {admin1_name}"),
                      "layers": study["spatial"]["layers"], "model": study["models"][model]["spec"],
                      "max_length": study["extract"]["max_length"]})


def name_jobs(study: dict[str, Any]) -> list[dict[str, Any]]:
    """One name_positions job per (dataset, model, hook): dataset, model, hook and its output paths by position."""
    root = study["results"]
    return [dict(dataset=d, model=m, hook=h, paths={p: result_path("name_positions", root, dataset=d, model=m, hook=h,
                                                                     position=p) for p in NAME_POSITIONS})
            for d, m in name_sets(study) for h in study["spatial"]["hooks"]]


def sink_control(study: dict[str, Any], dataset: str, model: str) -> bool:
    """Whether a job also tests the pooling with the sink (main pairs only: :func:`mechflow.contracts.is_main`)."""
    return is_main(study, dataset, model)


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """Models and layers as every analysis step, when the step analyses anything."""
    sp = study["spatial"]
    check_step_models(study, "spatial")
    for d in sp.get("name_position_datasets") or []:
        ds = study["datasets"].get(d)
        if ds is None:
            raise ConfigError("spatial.name_position_datasets", f"unknown prompt set {d!r} (have {sorted(study['datasets'])})")
        if ds.get("source", "geonames") != "geonames" or "{name}" not in str(ds.get("template", "{name}, {admin1_name}")):
            raise ConfigError("spatial.name_position_datasets", f"{d!r} is not a GeoNames prompt set whose template has "
                              "{name}: its name's positions are unknown")
    if sp["enabled"] and (sp["units"] or study["sae"]["runs"] or study["snmf"]["runs"]):
        check_analysed_layers(study, facts, "spatial", sp["hooks"])
