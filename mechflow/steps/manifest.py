"""The study's steps in order: their checks, the job manifest and the start-of-run summary.

- :func:`check_study`: the study-wide checks (names in restriction lists, CUDA devices), then each
  step's ``check`` in :data:`STEPS` order; the first problem is one :class:`ConfigError`.
- :func:`manifest`: every analysis job of the study by step (wildcards and output paths); the final
  targets, the report's inputs and the summary derive from it.
- :func:`outputs_of`, :func:`report_inputs`: the files a manifest entry / the whole manifest stands for.
- :func:`job_counts`, :func:`summary`: jobs per rule of the whole study (what Snakemake plans with ``--forceall``), and
  what a run prints when it starts.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from mechflow.contracts import SAE_FILES
from mechflow.devices import cuda_device_count
from mechflow.facts import StudyFacts
from mechflow.steps import corpus, data, explorer, extract, lens, probes, sae, selection, snmf, spatial, steering
from mechflow.study import ConfigError, corpora, prompt_sets

__all__ = ["STEPS", "check_study", "study_warnings", "manifest", "outputs_of", "report_inputs", "job_counts", "summary"]

#: every step with checks, in the order they run (each module has ``check(study, facts, base_dir)``)
STEPS = (extract, spatial, probes, sae, snmf, lens, selection, steering, data, corpus, explorer)
#: the steps whose jobs make up the manifest, by manifest key (``activations``: pooled extraction)
MANIFEST = {"prompts": data, "corpus": corpus, "activations": extract, "sae": sae, "snmf": snmf, "spatial": spatial, "probes": probes,
            "lens": lens, "steering": steering, "selection": selection, "explorer": explorer}
#: sections whose ``datasets`` / ``models`` restrict the pairs they run on
RESTRICTED = ("spatial", "probes", "sae", "snmf")


def check_study(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """Every pre-job check of a schema-valid, default-filled study; ConfigError naming the key."""
    _check_results(study, base_dir)
    _check_names(study)
    _check_devices(study)
    for step in STEPS:
        step.check(study, facts, base_dir)


def study_warnings(study: dict[str, Any], facts: StudyFacts) -> list[str]:
    """What a valid study should still be told before it runs (``<key>: <message>``): duplicated places."""
    return data.warnings(study, facts)


def manifest(study: dict[str, Any], facts: StudyFacts) -> dict[str, list[dict[str, Any]]]:
    """Every job of the study by manifest key (:data:`MANIFEST`): JSON-friendly entries of wildcards and paths."""
    return {key: step.jobs(study, facts) for key, step in MANIFEST.items()}


def outputs_of(key: str, entry: dict[str, Any]) -> list[str]:
    """The files one manifest entry stands for."""
    if key == "sae":
        return [f"{entry['dir']}/{name}" for name in SAE_FILES] + [entry[k] for k in ("splice", "corpus_splice") if entry.get(k)]
    if key == "spatial":
        return [f for f in (entry["moran"], entry["lisa"]) if f]
    if key == "selection":
        return [entry["path"], entry["csv"]]
    if key == "explorer":
        return [entry["dir"]]
    return [entry["path"]]


def report_inputs(jobs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every file of the manifest ``jobs``: what the report reads."""
    return [f for key, entries in jobs.items() for e in entries for f in outputs_of(key, e)]


def job_counts(study: dict[str, Any], jobs: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Jobs per rule of the whole study whose manifest is ``jobs`` (rules with none left out; ``all`` not counted)."""
    steps = Counter(prompts=len(jobs["prompts"]), corpus=len(jobs["corpus"]))
    steps.update(extract.rule_counts(study, jobs))
    steps["corpus_activations"] = corpus.activation_jobs(study, jobs["sae"])
    for key in ("sae", "snmf", "probes"):
        steps[key] = len(jobs[key])
    steps.update(spatial.rule_counts(jobs["spatial"]))
    steps["sae_splice"] = sum(1 for e in jobs["sae"] if e.get("splice"))
    steps["sae_corpus"] = len(sae.corpus_jobs(study))
    steps["sae_corpus_splice"] = len({e["corpus_splice"] for e in jobs["sae"] if e.get("corpus_splice")})
    steps.update(Counter(e["kind"] for e in jobs["lens"]),
                 lens_prompts=len(lens.lens_sets(study)) if jobs["lens"] else 0)
    steps["steer"] = len(jobs["steering"])
    steps["select"] = len(jobs["selection"])
    steps["explorer"] = len(jobs["explorer"])
    steps["report"] = int(study["report"]["enabled"])
    return {k: v for k, v in steps.items() if v}


def summary(study: dict[str, Any], jobs: dict[str, list[dict[str, Any]]]) -> str:
    """What this study runs, printed at the start of a run: datasets, models, jobs per rule (:func:`job_counts`)."""
    steps = job_counts(study, jobs)
    return (
        f"mechflow study: datasets {', '.join(sorted(study['datasets']))}; models {', '.join(sorted(study['models']))}; "
        f"{sum(steps.values())} jobs in the whole study ({', '.join(f'{k} {v}' for k, v in steps.items())}); "
        f"results under {study['results']}/ (Snakemake runs only those that are missing or out of date)"
    )


def _check_results(study: dict[str, Any], base_dir: str | Path) -> None:
    """``results:`` is a folder inside the working folder, unless it is an absolute path (written elsewhere on purpose)."""
    root = study["results"]
    if Path(root).is_absolute():
        return
    inside = os.path.normpath(root)
    if inside == os.pardir or inside.startswith(os.pardir + os.sep):
        raise ConfigError("results", f"{root!r} is outside the working folder ({Path(base_dir).resolve()}); give a folder "
                          "inside it (e.g. results/mine), or an absolute path to write elsewhere on purpose")


def _check_names(study: dict[str, Any]) -> None:
    """Prompt sets and models named in restriction lists exist, and every step keeps at least one pair."""
    models, datasets = sorted(study["models"]), prompt_sets(study)
    for name, ds in study["datasets"].items():
        for m in ds.get("models") or []:
            if m not in study["models"]:
                raise ConfigError(f"datasets.{name}.models", f"unknown model {m!r} (have {models})")
    for section in RESTRICTED:
        for d in study[section].get("datasets") or []:
            if d in corpora(study):
                raise ConfigError(f"{section}.datasets", f"{d!r} is a text corpus, not a prompt set of places "
                                                         f"(prompt sets: {datasets})")
            if d not in study["datasets"]:
                raise ConfigError(f"{section}.datasets", f"unknown prompt set {d!r} (have {datasets})")
        wanted = study[section].get("models") or models
        chosen = study[section].get("datasets") or datasets
        if study[section].get("datasets") and not any(
            m in (study["datasets"][d].get("models") or models) for d in chosen for m in wanted
        ):
            raise ConfigError(f"{section}.datasets", f"no model of {section}.models runs on {chosen} "
                                                     "(see datasets.<name>.models)")


def _check_devices(study: dict[str, Any]) -> None:
    """A CUDA device named anywhere exists (torch is imported only when one is named)."""
    wanted = [(f"models.{m}.device", spec["device"]) for m, spec in study["models"].items()]
    wanted += [(f"sae.runs.{r}.device", run.get("device", "auto")) for r, run in study["sae"]["runs"].items()]
    wanted = [(key, dev) for key, dev in wanted if str(dev).startswith("cuda")]
    if not wanted:
        return
    count = cuda_device_count()
    for key, dev in wanted:
        index = int(dev.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device (torch.cuda.is_available() is False)"
            raise ConfigError(key, f"{dev!r} is not available here: {have}; use 'auto' or 'cpu'")
