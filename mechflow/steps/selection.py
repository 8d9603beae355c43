"""The selection step in a study: which SAE each selection reads, its job-manifest entries, params, inputs and checks.

A study's ``selection.runs.<name>`` (the ``{name}`` wildcard of ``selection/{name}/ranking.nc``) names
an SAE the study trains, by its run name alone (when the study trains that run on one dataset, model
and layer) or as ``dataset/model/hook/layer/run`` (``layer`` as ``5`` or ``layer5``). The Snakemake
rule (``rules/select.smk``), the manifest and the pre-run checks read the study through these
functions. Nothing here imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mechflow.contracts import SAE_FILES, result_path
from mechflow.facts import StudyFacts
from mechflow.models import ModelSpecError, model_input_files, resolve_model
from mechflow.selection.data import SelectionError, read_column, read_texts
from mechflow.study import ConfigError, canonical, model_params, sae_jobs

__all__ = ["selection_names", "resolve_sae", "selection_params", "selection_inputs", "jobs", "check"]

def selection_names(config: dict[str, Any]) -> list[str]:
    """The study's selections (``selection.runs``), sorted; empty when it has none."""
    return sorted(((config.get("selection") or {}).get("runs")) or {})


def _label(job: dict[str, Any]) -> str:
    return f"{job['dataset']}/{job['model']}/{job['hook']}/{job['layer']}/{job['run']}"


def resolve_sae(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The SAE job selection ``name`` reads (dataset, model, hook, layer, run); ConfigError naming the key."""
    spec = str(config["selection"]["runs"][name]["sae"]).strip()
    key = f"selection.runs.{name}.sae"
    jobs = sae_jobs(config)
    if not jobs:
        raise ConfigError(key, "the study trains no SAE (sae.runs is empty); a selection reads one of its SAEs")
    have = ", ".join(_label(j) for j in jobs)
    if "/" not in spec:
        found = [j for j in jobs if j["run"] == spec]
        if not found:
            raise ConfigError(key, f"{spec!r} is not a run of sae.runs (have {sorted({j['run'] for j in jobs})})")
        if len(found) > 1:
            raise ConfigError(key, f"the study trains run {spec!r} {len(found)} times; name one as "
                              f"dataset/model/hook/layer/run: {', '.join(_label(j) for j in found)}")
        return dict(found[0])
    parts = spec.split("/")
    if len(parts) != 5:
        raise ConfigError(key, f"{spec!r} is neither a run name nor dataset/model/hook/layer/run (have {have})")
    dataset, model, hook, layer, run = parts
    m = re.fullmatch(r"(?:layer)?(\d+)", layer)
    wanted = dict(dataset=dataset, model=model, hook=hook, layer=int(m.group(1)) if m else layer, run=run)
    if wanted not in jobs:
        raise ConfigError(key, f"the study trains no SAE {spec!r} (it trains {have})")
    return wanted


def _embedding(config: dict[str, Any], name: str) -> str | None:
    run = config["selection"]["runs"][name]
    return config["selection"]["embedding_model"] if "embedding" in run["baselines"] else None


def selection_params(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Everything that defines one selection's result (the params of its ``select`` job; resource keys left out)."""
    run = config["selection"]["runs"][name]
    sae = resolve_sae(config, name)
    return canonical({
        "sae": sae,
        "model": model_params(config, sae["model"]),
        "candidates": dict(run["candidates"]),
        "target": dict(run["target"]),
        "top_n": run["top_n"],
        "batch_size": run["batch_size"],
        "max_length": run["max_length"],
        "baselines": list(run["baselines"]),
        "aggregate": run["aggregate"],
        "sae_input": run["sae_input"],
        "relevant": run.get("relevant"),
        "exclude": config["extract"]["exclude"],
        "embedding_model": _embedding(config, name),
    })


def selection_inputs(config: dict[str, Any], root: str, name: str) -> dict[str, Any]:
    """The files one selection reads: the SAE's weights and cfg.json, the candidate and target CSVs, the files of
    the SAE's model and (with the embedding baseline) of the sentence encoder."""
    params = selection_params(config, name)
    sae_dir = result_path("sae_dir", root, **params["sae"])
    inputs: dict[str, Any] = {
        "weights": f"{sae_dir}/{SAE_FILES[0]}",
        "cfg": f"{sae_dir}/{SAE_FILES[1]}",
        "candidates": params["candidates"]["path"],
        "target": params["target"]["path"],
        "model": model_input_files(params["model"]["spec"]),
    }
    if params["embedding_model"]:
        inputs["embedding"] = model_input_files(params["embedding_model"])
    return inputs


def jobs(config: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries of the selection step: one per selection (``name``, ``path`` = ranking.nc, ``csv``, and the
    SAE it reads: ``dataset``, ``model``, ``hook``, ``layer``, ``run``)."""
    root = config["results"]
    return [dict(resolve_sae(config, name), name=name, path=result_path("selection", root, name=name),
                 csv=result_path("selection_csv", root, name=name))
            for name in selection_names(config)]


def check(config: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """What the schema cannot say about ``selection:``; ConfigError naming the key. Nothing when there is no selection.

    Each selection names an SAE the study trains; the sentence encoder resolves (embedding baseline);
    where the data are checked (the prompt sets were built: ``facts.regions``), the candidate and
    target CSVs are read (UTF-8, the columns, no empty text, unique ids) and the evaluation label's
    column exists and marks at least one candidate.
    """
    names = selection_names(config)
    if not names:
        return
    for name in names:
        run = config["selection"]["runs"][name]
        resolve_sae(config, name)
        spec = _embedding(config, name)
        if spec:
            try:
                resolve_model(spec, base_dir)
            except ModelSpecError as e:
                raise ConfigError("selection.embedding_model", f"{e}") from None
        if facts.regions is None:
            continue
        paths = {}
        for role in ("candidates", "target"):
            src = run[role]
            paths[role] = Path(src["path"]) if Path(src["path"]).is_absolute() else Path(base_dir) / src["path"]
            try:
                read_texts(paths[role], src["text"], src.get("id"))
            except SelectionError as e:
                raise ConfigError(f"selection.runs.{name}.{role}", f"{e}") from None
        rel = run.get("relevant")
        if rel:
            try:
                column = read_column(paths["candidates"], rel["column"])
            except SelectionError as e:
                raise ConfigError(f"selection.runs.{name}.relevant.column", f"{e}") from None
            if not (column == str(rel["value"])).any():
                raise ConfigError(f"selection.runs.{name}.relevant.value", f"no candidate has "
                                  f"{rel['column']} = {rel['value']!r} (values: {sorted(set(column.tolist()))[:10]})")
