"""The vocabulary every step of a study shares: its error, its canonical form, and what its steps run on.

The lowest layer of the study core: it imports nothing of mechflow, so every other module (the
config loader, the facts, each step module, the resolver) can use it. A *study* here is the
resolved study dict (schema-valid, defaults filled, keys sorted; :func:`mechflow.resolve.resolve_study`).

- :class:`ConfigError` ``(key, message)``: one line, ``config error at <key>: <message>``.
- :func:`canonical`: keys sorted, tuples as lists (Snakemake compares ``params:`` by repr).
- :func:`model_params`, :func:`study_pairs`, :func:`sae_jobs`, :func:`sae_run_placement`, :func:`study_crs`,
  :func:`settings`: what a step runs on, read the same way by every step.
- :func:`one_of`: a Snakemake wildcard constraint for exactly these names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigError", "MODEL_KEYS", "RESOURCE_KEYS", "TEXT_SOURCE", "SAE_RUN_PLACEMENT", "canonical", "prompt_sets",
           "corpora", "dataset_models", "model_params", "study_pairs", "sae_run_placement", "sae_jobs", "study_crs",
           "settings", "one_of"]

#: the model settings a job loads a model with (a change reruns it); resource keys are never among them
MODEL_KEYS: tuple[str, ...] = ("spec", "dtype", "device", "random_init", "init_seed")
#: settings that change how a job runs, never what it computes
RESOURCE_KEYS: tuple[str, ...] = ("threads", "mem_mb", "gpu")
#: the ``source`` of a dataset that is a text corpus (token windows for SAE training), not a prompt set with places
TEXT_SOURCE = "text"
#: keys of a ``sae.runs.<run>`` entry that place the run in the study rather than configure its training (what it
#: trains on): each defaults to the section's key of the same name and never reaches the run's training config
SAE_RUN_PLACEMENT: tuple[str, ...] = ("hook", "level")


class ConfigError(ValueError):
    """The study is invalid. ``ConfigError(key, message)`` reads ``config error at <key>: <message>`` on one line.

    ``key`` is the dotted path of the offending setting (``sae.runs.topk.k``), or ``(file)`` /
    ``(top level)``, or empty for a problem of the study file as a whole (``config error: <message>``);
    ``reason`` is the message with its white space folded.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.reason = " ".join(str(message).split())
        super().__init__(f"config error at {key}: {self.reason}" if key else f"config error: {self.reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (multiprocessing) with both arguments
        return type(self), (self.key, self.reason)


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted (recursively) and tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def prompt_sets(study: Mapping[str, Any]) -> list[str]:
    """The study's prompt sets (datasets of places with coordinates), sorted: every dataset but the text corpora."""
    return sorted(d for d, ds in study["datasets"].items() if ds.get("source", "geonames") != TEXT_SOURCE)


def corpora(study: Mapping[str, Any]) -> list[str]:
    """The study's text corpora (``datasets.<name>.source: text``), sorted."""
    return sorted(d for d, ds in study["datasets"].items() if ds.get("source", "geonames") == TEXT_SOURCE)


def dataset_models(study: Mapping[str, Any], dataset: str) -> list[str]:
    """The models run on a dataset: ``datasets.<d>.models``, else every model of the study (sorted)."""
    return sorted(study["datasets"][dataset].get("models") or study["models"])


def model_params(study: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The settings a job loads ``model`` with (:data:`MODEL_KEYS`)."""
    return {k: study["models"][model][k] for k in MODEL_KEYS}


def study_pairs(study: Mapping[str, Any], section: Mapping[str, Any] | None = None,
                models: list[str] | None = None) -> list[tuple[str, str]]:
    """(prompt set, model) pairs a step runs on: the section's ``datasets`` and ``models`` lists (null = every prompt
    set / model; ``models`` given: those), less the models a prompt set leaves out (``datasets.<d>.models``).
    ``section=None``: every pair the study extracts. Text corpora are not prompt sets: never among them."""
    every = sorted(study["models"])
    datasets = sorted((section or {}).get("datasets") or prompt_sets(study))
    if models is None:
        models = sorted((section or {}).get("models") or every)
    return [(d, m) for d in datasets for m in models if m in (study["datasets"][d].get("models") or every)]


def sae_run_placement(study: Mapping[str, Any], run: str) -> dict[str, str]:
    """Where SAE run ``run`` trains (:data:`SAE_RUN_PLACEMENT`): its own ``hook`` and ``level`` (``sae.runs.<run>``),
    else the section's (``sae.hook``, ``sae.level``)."""
    sae = study["sae"]
    own = sae["runs"][run] or {}
    return {k: own.get(k) or sae.get(k) for k in SAE_RUN_PLACEMENT}


def sae_jobs(study: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every SAE the study trains: dicts of dataset, model, hook (the run's, :func:`sae_run_placement`), layer, run."""
    sae = study.get("sae") or {}
    if not sae.get("runs"):
        return []
    return [dict(dataset=d, model=m, hook=sae_run_placement(study, r)["hook"], layer=int(layer), run=r)
            for d, m in study_pairs(study, sae) for layer in sae["layers"] for r in sorted(sae["runs"])]


def study_crs(study: Mapping[str, Any]) -> dict[str, str]:
    """Region -> projected CRS the study declares: inline regions' ``crs``, then ``spatial.crs`` overrides (keys
    sorted: the spatial and probes rules pass it as a param)."""
    crs: dict[str, str] = {}
    for ds in study["datasets"].values():
        for region in ds.get("regions", []) if ds.get("source", "geonames") == "geonames" else []:
            if isinstance(region, dict) and region.get("crs"):
                crs[region["name"]] = region["crs"]
    return canonical({**crs, **study["spatial"].get("crs", {})})


def settings(section: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """Canonical params of a study section: the given keys, else all but the resource keys."""
    keys = keys or tuple(k for k in section if k not in RESOURCE_KEYS)
    return canonical({k: section[k] for k in keys})


def one_of(names: list[str]) -> str:
    """A wildcard constraint matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!x)x"
