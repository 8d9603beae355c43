"""The semi-NMF step: one job per (prompt set, model, layer, run) of ``snmf:``, its params, inputs and checks.

Semi-NMF factorises a layer's pooled activations, or every token of its prompts (``snmf.level:
tokens``; G per prompt is then the max over its tokens). It has at most min(units, samples) factors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import result_path
from mechflow.facts import StudyFacts
from mechflow.steps.extract import check_analysed_layers, check_step_models
from mechflow.study import ConfigError, canonical, study_pairs

__all__ = ["jobs", "input_path", "run_params", "params", "check"]


def jobs(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries: dataset, model, hook, layer, run, path."""
    snmf, root = study["snmf"], study["results"]
    entries = [dict(dataset=d, model=m, hook=snmf["hook"], layer=layer, run=r)
               for d, m in study_pairs(study, snmf) for layer in snmf["layers"] for r in sorted(snmf["runs"])]
    return [dict(j, path=result_path("snmf", root, **j)) for j in entries]


def input_path(study: dict[str, Any], wildcards: dict[str, str]) -> str:
    """The file a fit reads: pooled activations, or the hook's token file (``snmf.level: tokens``)."""
    return result_path("tokens" if study["snmf"]["level"] == "tokens" else "activations", study["results"], **wildcards)


def run_params(study: dict[str, Any], run: str) -> dict[str, Any]:
    """The complete run config of ``snmf.runs.<run>``."""
    return canonical(study["snmf"]["runs"][run])


def params(study: dict[str, Any]) -> dict[str, Any]:
    """The settings every semi-NMF job shares (besides its run): top prompts kept, level, device, and whether
    the layer is always read from disk (``out_of_core``: memory, not the result, depends on it)."""
    snmf = study["snmf"]
    return canonical({"top_prompts": snmf["top_prompts"], "level": snmf["level"], "device": snmf["device"],
                      "out_of_core": bool(snmf["out_of_core"])})


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """Models and layers as every analysis step; at most as many factors as the hook has units and (pooled) as the
    prompt set has prompts."""
    snmf = study["snmf"]
    check_step_models(study, "snmf")
    if not snmf["runs"]:
        return
    check_analysed_layers(study, facts, "snmf", [snmf["hook"]])
    for m in snmf.get("models") or list(study["models"]):
        width = facts.models[m].widths.get(snmf["hook"])
        for name, run in snmf["runs"].items():
            if width is not None and run["n_factors"] > width:
                raise ConfigError(f"snmf.runs.{name}.n_factors", f"{run['n_factors']} factors from the {width} units of "
                                                                 f"{snmf['hook']!r} in model {m!r}; at most {width}")
    if snmf["level"] != "pooled" or facts.regions is None:
        return
    for dataset, counts in facts.regions.items():
        if snmf.get("datasets") and dataset not in snmf["datasets"]:
            continue
        n = sum(counts.values())
        for name, run in snmf["runs"].items():
            if run["n_factors"] > n:
                raise ConfigError(f"snmf.runs.{name}.n_factors", f"{run['n_factors']} factors from the {n} prompts of "
                                                                 f"dataset {dataset!r}; at most {n} (one sample per prompt)")
