"""The explorer step: one static feature explorer per feature set the spatial step tests (rule ``explorer``).

A job per spatial job (SAE run, semi-NMF run, raw units of a hook and layer, on each analysed prompt set and
model), writing the folder ``explorer/{dataset}/{model}/{hook}/layer{layer}/{source}``. It reads the set's file,
its Moran (and LISA) file, the hook's token file of the prompts (rule ``extract_tokens``: the per-token
highlighting), for a causal LM the model (promoted / suppressed tokens) and the steering files of the model whose
vector is one of the set's features; for an SAE run trained on a text corpus (level ``corpus``) also the held-out
token-activation shards of its corpus at its hook and layer and the corpus's windows (top corpus contexts, at most
``explorer.corpus_rows`` held-out tokens read). No torch is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import SAE_FILES, result_path
from mechflow.facts import StudyFacts
from mechflow.models import model_input_files
from mechflow.steps import sae, spatial, steering
from mechflow.study import canonical, model_params, settings, study_crs

__all__ = ["SETTINGS", "jobs", "inputs", "params", "corpus_source", "check"]

#: the settings of ``explorer:`` that define its results
SETTINGS = ("contexts", "logit_tokens", "neighbors", "bins", "chunk_size")


def jobs(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries: dataset, model, hook, layer, source, run, kind, ``dir`` (the explorer's folder); only the
    kinds of feature set ``explorer.sets`` names (sae, snmf, units)."""
    if not study["explorer"]["enabled"]:
        return []
    sets = set(study["explorer"]["sets"])
    keep = ("dataset", "model", "hook", "layer", "source", "run", "kind")
    found = [{k: j[k] for k in keep} for j in spatial.jobs(study, facts)
             if not j.get("name_position") and j["kind"] in sets]  # pooled sets
    return [dict(j, dir=result_path("explorer", study["results"], **{k: v for k, v in j.items() if k != "kind"}))
            for j in found]


def _steering_files(study: dict[str, Any], facts: StudyFacts, w: dict[str, str]) -> list[str]:
    kind, _, run = w["source"].partition("-")
    return sorted(j["path"] for j in steering.jobs(study, facts)
                  if (j["dataset"], j["model"], j["hook"], j["layer"]) == (w["dataset"], w["model"], w["hook"], int(w["layer"]))
                  and j["source"] == kind and steering.vector_spec(study, j["name"]).get("run") == run)


def corpus_source(study: dict[str, Any], source: str) -> bool:
    """Whether feature set ``source`` is an SAE run trained on a text corpus (the run's level ``corpus``): its explorer
    shows top held-out corpus contexts."""
    kind, _, run = source.partition("-")
    return kind == "sae" and sae.level_of(study, run) == "corpus"


def inputs(study: dict[str, Any], facts: StudyFacts, wildcards: dict[str, str]) -> dict[str, Any]:
    """The files one explorer job reads, by name: ``features``, ``moran``, ``lisa`` (maybe empty), ``tokens``,
    ``weights`` (SAE runs), ``model`` (causal LMs), ``steering``, and for a corpus-trained SAE (:func:`corpus_source`)
    ``corpus_shards`` (the held-out shards of its corpus at its model, hook and layer) and ``corpus_windows`` (else
    empty)."""
    root, w = study["results"], dict(wildcards)
    kind, _, run = w["source"].partition("-")
    out: dict[str, Any] = {"features": spatial.input_path(study, w),
                           "moran": result_path("moran", root, **w),
                           "lisa": [result_path("lisa", root, **w)] if study["spatial"]["lisa_top_n"] > 0 else [],
                           "tokens": result_path("tokens", root, **w),
                           "weights": [f"{result_path('sae_dir', root, **dict(w, run=run))}/{SAE_FILES[0]}"] if kind == "sae" else [],
                           "model": model_input_files(study["models"][w["model"]]["spec"]) if _causal(facts, w["model"]) else [],
                           "steering": _steering_files(study, facts, w),
                           "corpus_shards": [], "corpus_windows": []}
    if corpus_source(study, w["source"]):
        out["corpus_shards"] = sae.corpus_inputs(study, w)["held_out"]
        out["corpus_windows"] = [sae.corpus_splice_windows(study, w["model"])]
    return out


def _causal(facts: StudyFacts, model: str) -> bool:
    return bool(facts.models[model].causal)


def params(study: dict[str, Any], facts: StudyFacts, model: str, source: str = "units") -> dict[str, Any]:
    """The settings of an explorer job: ``explorer:``'s, the region -> CRS map, the model's settings for a
    causal LM (null for an encoder: no unembedding), and for a corpus-trained SAE ``corpus`` (its name, the held-out
    tokens read at most, ``explorer.corpus_rows``, and the model whose tokenizer decodes the windows; else null)."""
    held_out = None
    if corpus_source(study, source):
        held_out = {"name": study["sae"]["corpus"], "rows": study["explorer"]["corpus_rows"], "model": model_params(study, model)}
    return canonical(dict(settings(study["explorer"], *SETTINGS), crs=study_crs(study),
                          model=model_params(study, model) if _causal(facts, model) else None, corpus=held_out))


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """Nothing beyond the schema: the explorer follows the spatial step's jobs (none when it is off)."""


def live_sets(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """What ``mechflow explore`` serves: every explorer feature set of the study (id ``dataset/model/hook/layer<L>/
    <source>``) with its files (``features``, ``sae_dir``), the model's settings and whether it is a causal LM."""
    root, out = study["results"], []
    for j in spatial.jobs(study, facts):
        w = {k: j[k] for k in ("dataset", "model", "hook", "layer", "source")}
        out.append({"id": "{dataset}/{model}/{hook}/layer{layer}/{source}".format(**w), "source": j["source"],
                    "model": j["model"], "hook": j["hook"], "layer": int(j["layer"]),
                    "features": spatial.input_path(study, {k: str(v) for k, v in w.items()}),
                    "sae_dir": result_path("sae_dir", root, **dict(w, run=j["run"])) if j["kind"] == "sae" else None,
                    "model_params": model_params(study, j["model"]), "causal": _causal(facts, j["model"])})
    return out
