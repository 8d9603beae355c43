"""The spatial step: Moran's I, Geary's C and LISA of every feature set the study makes, per region.

A feature set (the ``{source}`` wildcard) is a hook's raw units (``units``, when ``spatial.units``),
an SAE run's features (``sae-<run>``) or a semi-NMF run's factors (``snmf-<run>``), on the prompt
sets and models of ``spatial:``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import is_main, result_path
from mechflow.facts import StudyFacts
from mechflow.steps import sae, snmf
from mechflow.steps.extract import check_analysed_layers, check_step_models
from mechflow.study import canonical, settings, study_crs, study_pairs

__all__ = ["jobs", "input_path", "params", "sink_control", "check"]

#: the settings of ``spatial:`` that define its results
SETTINGS = ("k", "transform", "permutations", "layer_permutations", "seed", "lisa_top_n", "shuffled_control",
            "residualise")


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
    analysed = set(study_pairs(study, sp))
    for kind, step in (("sae", sae), ("snmf", snmf)):
        found += [dict({k: v for k, v in j.items() if k not in ("run", "dir", "splice", "corpus_splice", "path")},
                       source=f"{kind}-{j['run']}")
                  for j in step.jobs(study, facts) if (j["dataset"], j["model"]) in analysed]
    return [dict(j, run=j["source"].partition("-")[2] or None, kind=j["source"].partition("-")[0],
                 moran=result_path("moran", root, **j), lisa=result_path("lisa", root, **j) if sp["lisa_top_n"] > 0 else None)
            for j in found]


def input_path(study: dict[str, Any], wildcards: dict[str, str]) -> str:
    """The feature set a spatial job analyses, by its source wildcard."""
    kind, _, run = wildcards["source"].partition("-")
    job = dict(wildcards, run=run)
    if kind == "units":
        return result_path("activations", study["results"], **job)
    if kind == "sae":
        return result_path("sae_dir", study["results"], **job) + "/features.nc"
    return result_path("snmf", study["results"], **job)


def params(study: dict[str, Any]) -> dict[str, Any]:
    """The settings of every spatial job, with the region -> CRS map (inline regions' crs, ``spatial.crs`` overrides)."""
    return canonical(dict(settings(study["spatial"], *SETTINGS), crs=study_crs(study)))


def sink_control(study: dict[str, Any], dataset: str, model: str) -> bool:
    """Whether a job also tests the pooling with the sink (main pairs only: :func:`mechflow.contracts.is_main`)."""
    return is_main(study, dataset, model)


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """Models and layers as every analysis step, when the step analyses anything."""
    sp = study["spatial"]
    check_step_models(study, "spatial")
    if sp["enabled"] and (sp["units"] or study["sae"]["runs"] or study["snmf"]["runs"]):
        check_analysed_layers(study, facts, "spatial", sp["hooks"])
