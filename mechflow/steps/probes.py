"""The probes step: cross-validated ridge probes from each layer to location, one job per (prompt set, model, hook)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import result_path
from mechflow.facts import StudyFacts
from mechflow.steps.extract import check_analysed_layers, check_step_models
from mechflow.study import settings, study_pairs

__all__ = ["jobs", "params", "check"]

#: the settings of ``probes:`` that define its results
SETTINGS = ("layers", "folds", "blocks", "alphas", "seed")


def jobs(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries: dataset, model, hook, path."""
    pr = study["probes"]
    if not pr["enabled"]:
        return []
    return [dict(dataset=d, model=m, hook=h, path=result_path("probes", study["results"], dataset=d, model=m, hook=h))
            for d, m in study_pairs(study, pr) for h in pr["hooks"]]


def params(study: dict[str, Any]) -> dict[str, Any]:
    return settings(study["probes"], *SETTINGS)


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """Models and layers as every analysis step (``probes.layers: null`` probes every extracted layer)."""
    pr = study["probes"]
    check_step_models(study, "probes")
    if pr["enabled"] and pr["layers"] is not None:
        check_analysed_layers(study, facts, "probes", pr["hooks"])
