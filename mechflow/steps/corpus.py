"""The corpus step: each text corpus (``datasets.<name>.source: text``) cut into token windows, per model.

One ``corpus`` job per (corpus, model) (the model's tokenizer decides the windows): the corpus's
files are declared inputs, so editing one rebuilds its windows and everything made from them. The
split into train and held-out windows is by document, seeded (``held_out``, ``seed``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import result_path
from mechflow.corpus import CorpusError, check_encoding, corpus_files, read_documents
from mechflow.facts import StudyFacts
from mechflow.study import ConfigError, canonical, corpora, dataset_models, model_params, sae_run_placement

__all__ = ["SPEC_KEYS", "SPLIT_KEYS", "SPLITS", "jobs", "inputs", "params", "shard_paths", "activation_params", "activation_jobs", "check"]

#: the keys of a text corpus that say which documents it holds
SPEC_KEYS = ("path", "format", "column", "split_documents", "max_documents")
#: the keys that say how its documents become windows
SPLIT_KEYS = ("context_size", "held_out", "seed", "max_tokens")
#: the splits of a corpus's windows (by document): trained on, and never trained on
SPLITS = ("train", "held_out")


def jobs(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries: dataset (the corpus), model, path (its windows file)."""
    return [dict(dataset=d, model=m, path=result_path("corpus_windows", study["results"], dataset=d, model=m))
            for d in corpora(study) for m in dataset_models(study, d)]


def spec(study: dict[str, Any], dataset: str) -> dict[str, Any]:
    """Which documents a corpus holds (:data:`SPEC_KEYS`), as :func:`mechflow.corpus.read_documents` reads them."""
    return {k: study["datasets"][dataset][k] for k in SPEC_KEYS}


def inputs(study: dict[str, Any], dataset: str) -> list[str]:
    """Every file the corpus is read from (a glob expanded, a Hugging Face folder's data files)."""
    return [str(p) for p in corpus_files(spec(study, dataset))]


def params(study: dict[str, Any], dataset: str, model: str) -> dict[str, Any]:
    """The documents, how they are cut into windows, and the model whose tokenizer cuts them."""
    ds = study["datasets"][dataset]
    return canonical({"corpus": spec(study, dataset), **{k: ds[k] for k in SPLIT_KEYS}, "model": model_params(study, model)})


def shard_paths(study: dict[str, Any], model: str, hook: str, layer: int | str, split: str) -> list[str]:
    """The token-activation shards of one split of the SAEs' corpus (``sae.corpus``) at one hook and layer."""
    sae = study["sae"]
    return [result_path("corpus_shard", study["results"], dataset=sae["corpus"], model=model, hook=hook, layer=layer,
                        split=split, shard=i) for i in range(int(sae["corpus_shards"]))]


def activation_params(study: dict[str, Any], model: str, hook: str, layer: int | str, split: str, shard: int | str
                      ) -> dict[str, Any]:
    """What one corpus_activations job computes: the model, hook, layer, split, its slice of the windows and the
    forward pass's batch (whose padding changes the activations in the last bits)."""
    sae = study["sae"]
    return canonical({"model": model_params(study, model), "hook": hook, "layer": int(layer), "split": split,
                      "shard": [int(shard), int(sae["corpus_shards"])], "batch_size": sae["corpus_batch_size"]})


def activation_jobs(study: dict[str, Any], sae_jobs: list[dict[str, Any]]) -> int:
    """How many corpus_activations jobs the SAE jobs read: each (model, hook, layer) of a corpus-level run once."""
    layers = {(j["model"], j["hook"], j["layer"]) for j in sae_jobs if sae_run_placement(study, j["run"])["level"] == "corpus"}
    return len(layers) * len(SPLITS) * int(study["sae"]["corpus_shards"]) if layers else 0  # corpus_shards: corpus level only


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """Each corpus's files exist (a glob matches); with the data checks, every byte of its text files is UTF-8 and its
    first document reads. A study with an SAE run trained on a corpus (level ``corpus``) names a text corpus
    (``sae.corpus``) that every model of the SAE step runs on."""
    sae = study["sae"]
    if any(sae_run_placement(study, r)["level"] == "corpus" for r in sae["runs"]):
        if "corpus" not in sae:
            raise ConfigError("sae.corpus", "required by the SAE runs at level corpus: the text corpus they train on "
                                            f"(datasets with source: text: {corpora(study)})")
        if sae["corpus"] not in corpora(study):
            raise ConfigError("sae.corpus", f"{sae['corpus']!r} is not a text corpus of the study (datasets with source: "
                                            f"text: {corpora(study)}); an SAE run at level corpus trains on one")
        for m in sae.get("models") or sorted(study["models"]):
            if m not in dataset_models(study, sae["corpus"]):
                raise ConfigError("sae.corpus", f"model {m!r} does not run on corpus {sae['corpus']!r} "
                                                f"(datasets.{sae['corpus']}.models)")
    for d in corpora(study):
        try:
            corpus_files(spec(study, d), base_dir)
            if facts.regions is not None:
                check_encoding(spec(study, d), base_dir)
                next(iter(read_documents(spec(study, d), base_dir)), None)
        except CorpusError as e:
            raise ConfigError(f"datasets.{d}.path", str(e)) from None
