"""Resolve a study: schema -> typed runs -> facts -> every step's checks -> the canonical study.

:func:`resolve_study` is what the Snakefile, the CLI and ``mechflow info`` call, before any job runs:

1. the JSON schema (:func:`mechflow.config.validate_schema`): types, ranges, defaults filled;
2. each SAE and semi-NMF run replaced by its typed, complete form (the run configs' defaults; an SAE run's hook and
   level filled from the section's);
3. the facts of the study's models and prompt sets, gathered once (:func:`mechflow.facts.gather_facts`);
4. the study-wide checks and each step's ``check`` (:func:`mechflow.steps.manifest.check_study`);
5. the canonical form: numbers typed as the schema says, keys sorted, so Snakemake's params
   comparison (by repr) reruns a step only when a value changes.

Every problem is one :class:`~mechflow.study.ConfigError` line naming the key; nothing runs before
it. ``data_checks=False`` skips building the prompt sets (Snakemake's job processes re-read a study
the main process has checked). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechflow.config import SCHEMA_FILE, coerce_numbers, load_schema, validate_schema
from mechflow.facts import StudyFacts, gather_facts
from mechflow.sae.config import validate_run as validate_sae_run
from mechflow.snmf.config import validate_run as validate_snmf_run
from mechflow.steps.manifest import check_study, study_warnings
from mechflow.study import ConfigError, canonical, sae_run_placement

__all__ = ["ResolvedStudy", "resolve", "resolve_study"]


@dataclass(frozen=True)
class ResolvedStudy:
    """The canonical study dict, the facts it was checked against, and warnings (``datasets.places: 7 duplicated
    places ... dropped``: what a run prints, prefixed ``mechflow: warning at``, before it starts)."""

    study: dict[str, Any]
    facts: StudyFacts
    warnings: tuple[str, ...] = ()


def resolve(config: dict[str, Any], base_dir: str | Path = ".", schema_path: str | Path | None = None,
            data_checks: bool = True) -> ResolvedStudy:
    """Resolve a study dict (see the module docstring); ConfigError with one line on the first problem."""
    schema = load_schema(schema_path or Path(base_dir) / SCHEMA_FILE)
    filled = validate_schema(dict(config), schema)
    _complete_runs(filled)
    _corpus_run_defaults(filled, schema)
    facts = gather_facts(filled, base_dir, prompts=data_checks)
    check_study(filled, facts, base_dir)
    return ResolvedStudy(canonical(coerce_numbers(filled, schema, schema)), facts, tuple(study_warnings(filled, facts)))


def resolve_study(config: dict[str, Any], base_dir: str | Path = ".", schema_path: str | Path | None = None,
                  data_checks: bool = True) -> dict[str, Any]:
    """The complete, canonical study (:func:`resolve` without the facts)."""
    return resolve(config, base_dir, schema_path, data_checks).study


def _corpus_run_defaults(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """An SAE run at level ``corpus`` in a section of another level: the section's corpus settings get the defaults the
    schema gives them at ``sae.level: corpus`` (``corpus_shards``, ...), as if the section were at that level."""
    sae = config["sae"]
    if sae["level"] == "corpus" or not any(run["level"] == "corpus" for run in sae["runs"].values()):
        return
    for block in schema["properties"]["sae"].get("allOf", []):
        if block.get("if", {}).get("properties", {}).get("level", {}).get("const") == "corpus":
            for key, prop in block.get("then", {}).get("properties", {}).items():
                if "default" in prop:
                    sae.setdefault(key, prop["default"])


def _complete_runs(config: dict[str, Any]) -> None:
    """Replace each SAE / semi-NMF run by its validated, complete form (typed run configs' defaults); an SAE run also
    gets its hook and level (:data:`~mechflow.study.SAE_RUN_PLACEMENT`: its own, else the section's), which are not
    part of its training config."""
    for section, validate in (("sae", validate_sae_run), ("snmf", validate_snmf_run)):
        for name, run in config[section]["runs"].items():
            placed = sae_run_placement(config, name) if section == "sae" else {}
            try:
                complete = validate({k: v for k, v in run.items() if k not in placed})
            except ValueError as e:
                raise ConfigError(f"{section}.runs.{name}", str(e)) from None
            config[section]["runs"][name] = dict(complete, **placed)
