"""The SAE step: one job per (prompt set, model, layer, run) of ``sae:``, its params, inputs and checks.

Each run trains at its own hook and level (``sae.runs.<run>.hook`` / ``.level``, defaulting to ``sae.hook`` /
``sae.level``; :func:`mechflow.study.sae_run_placement`), so one study can train a resid SAE on a text corpus and an
attn_z SAE on its pooled prompts. An SAE trains on a layer's pooled activations, or on every token of its prompts
(level ``tokens``; features.nc then pools each prompt's tokens, ``sae.token_pooling``). SAEs on the residual
stream of a causal LM also get a loss-recovered splice on held-out prompts (``sae.splice_prompts``), and,
trained on a text corpus (level ``corpus``), one on the corpus's held-out windows
(``sae.corpus_splice_windows``).

A run at level ``corpus`` is trained once per (corpus, model, hook, layer, run) (rule ``sae_corpus``, into
``corpus/{corpus}/{model}/{hook}/layer{layer}/sae/{run}``, beside the corpus's
shards; :func:`corpus_jobs`), and each prompt set's ``sae`` job only encodes its prompts with it: no
prompt set trains its own copy, and every prompt set's features come from the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import SAE_CORPUS_FILES, result_path
from mechflow.facts import StudyFacts
from mechflow.steps.corpus import shard_paths
from mechflow.steps.extract import check_analysed_layers, check_step_models
from mechflow.study import SAE_RUN_PLACEMENT, canonical, model_params, sae_jobs, sae_run_placement

__all__ = ["level_of", "splices", "corpus_splices", "jobs", "inputs", "level_params", "run_params", "head_params", "splice_params",
           "corpus_splice_windows", "corpus_splice_params", "check"]


def level_of(study: dict[str, Any], run: str) -> str:
    """What SAE run ``run`` trains on: ``pooled``, ``tokens`` or ``corpus`` (its own level, else ``sae.level``)."""
    return sae_run_placement(study, run)["level"]


def _spliceable(study: dict[str, Any], facts: StudyFacts, model: str, hook: str) -> bool:
    """SAEs that can be spliced into their model: on the residual stream of a causal LM."""
    return hook == "resid" and bool(facts.models[model].causal)


def splices(study: dict[str, Any], facts: StudyFacts, job: dict[str, Any]) -> bool:
    """Whether SAE job ``job`` (dataset, model, hook, layer, run) gets a loss-recovered splice: resid SAEs of a causal
    LM, when asked for."""
    return study["sae"]["splice_prompts"] > 0 and _spliceable(study, facts, job["model"], job["hook"])


def corpus_splices(study: dict[str, Any], facts: StudyFacts, job: dict[str, Any]) -> bool:
    """Whether SAE job ``job`` also gets a splice on its corpus's held-out windows: one :func:`splices` could splice,
    of a run trained on a text corpus (level ``corpus``), when asked for (``sae.corpus_splice_windows``)."""
    return (level_of(study, job["run"]) == "corpus" and study["sae"]["corpus_splice_windows"] > 0
            and _spliceable(study, facts, job["model"], job["hook"]))


def _corpus_wildcards(study: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """The corpus SAE a prompt set's SAE job at level ``corpus`` applies: its wildcards with the corpus as dataset."""
    return dict(job, dataset=study["sae"]["corpus"])


def jobs(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries: dataset, model, hook (the run's), layer, run, ``dir`` (the run's folder), ``splice`` (its
    splice.nc, or None), ``corpus_splice`` (the corpus_splice.nc of the corpus SAE it applies, or None). The run's level
    is not among them (the report's params hold the manifest): :func:`level_of`."""
    root = study["results"]
    return [dict(j, dir=result_path("sae_dir", root, **j),
                 splice=result_path("sae_splice", root, **j) if splices(study, facts, j) else None,
                 corpus_splice=(result_path("sae_corpus_splice", root, **_corpus_wildcards(study, j))
                                if corpus_splices(study, facts, j) else None))
            for j in sae_jobs(study)]


def corpus_jobs(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The corpus SAEs of the study's level ``corpus`` runs, each trained once whatever the prompt sets: dataset (the
    corpus), model, hook, layer, run, ``dir`` (``corpus/.../sae/{run}``); empty when no run trains on a corpus."""
    keys = sorted({tuple(sorted(_corpus_wildcards(study, j).items())) for j in sae_jobs(study)
                   if level_of(study, j["run"]) == "corpus"})
    return [dict(k, dir=result_path("sae_corpus_dir", study["results"], **dict(k))) for k in keys]


def inputs(study: dict[str, Any], wildcards: dict[str, str]) -> dict[str, Any]:
    """The files an SAE job reads, by name: ``activations``, the pooled activations or (its run at level ``tokens`` or
    ``corpus``) the hook's token file of the prompts; at ``corpus`` also the corpus SAE it applies
    (``corpus_sae``: its :data:`~mechflow.contracts.SAE_CORPUS_FILES`, rule ``sae_corpus``)."""
    level, root = level_of(study, wildcards["run"]), study["results"]
    out: dict[str, Any] = {"activations": result_path("activations" if level == "pooled" else "tokens", root, **wildcards)}
    if level == "corpus":
        corpus_dir = result_path("sae_corpus_dir", root, **_corpus_wildcards(study, dict(wildcards)))
        out["corpus_sae"] = [f"{corpus_dir}/{name}" for name in SAE_CORPUS_FILES]
    return out


def corpus_inputs(study: dict[str, Any], wildcards: dict[str, str]) -> dict[str, list[str]]:
    """The files a corpus SAE trains and is evaluated on: the ``train`` and ``held_out`` shards of its corpus's
    token activations at its model, hook and layer."""
    return {split: shard_paths(study, wildcards["model"], wildcards["hook"], wildcards["layer"], split)
            for split in ("train", "held_out")}


def level_params(study: dict[str, Any], run: str) -> dict[str, Any]:
    """What SAE run ``run`` trains on (its level) and, at token or corpus level, how features.nc pools each prompt's
    tokens (and the corpus)."""
    sae, level = study["sae"], level_of(study, run)
    if level == "tokens":
        return canonical({"level": "tokens", "token_pooling": sae["token_pooling"]})
    if level == "corpus":
        return canonical({"level": "corpus", "token_pooling": sae["token_pooling"], "corpus": sae["corpus"]})
    return canonical({"level": "pooled"})


def run_params(study: dict[str, Any], run: str) -> dict[str, Any]:
    """The complete training config of ``sae.runs.<run>``: the run less its hook and level (which say where it trains,
    :data:`~mechflow.study.SAE_RUN_PLACEMENT`, and are the job's wildcard and :func:`level_params`)."""
    return canonical({k: v for k, v in study["sae"]["runs"][run].items() if k not in SAE_RUN_PLACEMENT})


def head_params(study: dict[str, Any], model: str, hook: str) -> dict[str, Any]:
    """What an SAE job needs for its features' head attribution: at hook ``attn_z`` the model as extraction runs it
    (its output projection W_O is read; :mod:`mechflow.sae.heads`), else nothing."""
    return canonical({"model": model_params(study, model)} if hook == "attn_z" else {})


def splice_params(study: dict[str, Any], model: str) -> dict[str, Any]:
    """The model as extraction runs it, and the splice's prompt budget (``sae.splice_prompts``)."""
    ex = study["extract"]
    return canonical({
        "model": model_params(study, model),
        "exclude": ex["exclude"],
        "batch_size": ex["batch_size"],
        "max_length": ex["max_length"],
        "max_prompts": study["sae"]["splice_prompts"],
    })


def corpus_splice_windows(study: dict[str, Any], model: str) -> str:
    """The windows file the corpus splice of ``model``'s SAEs reads: the SAEs' corpus (``sae.corpus``) cut by that model."""
    return result_path("corpus_windows", study["results"], dataset=study["sae"]["corpus"], model=model)


def corpus_splice_params(study: dict[str, Any], model: str) -> dict[str, Any]:
    """The model as corpus activations run it, the corpus, its windows per forward pass (``sae.corpus_batch_size``)
    and the splice's window budget (``sae.corpus_splice_windows``)."""
    sae = study["sae"]
    return canonical({"model": model_params(study, model), "corpus": sae["corpus"], "batch_size": sae["corpus_batch_size"],
                      "max_windows": sae["corpus_splice_windows"]})


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """The SAE step's models exist; its layers exist and are extracted for each run's hook."""
    check_step_models(study, "sae")
    if study["sae"]["runs"]:
        check_analysed_layers(study, facts, "sae", sorted({sae_run_placement(study, r)["hook"] for r in study["sae"]["runs"]}))
