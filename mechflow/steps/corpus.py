"""The corpus step: each text corpus (``datasets.<name>.source: text``) cut into token windows, per model.

One ``corpus`` job per (corpus, model) (the model's tokenizer decides the windows): the corpus's
files are declared inputs, so editing one rebuilds its windows and everything made from them. The
split into train and held-out windows is by document, seeded (``held_out``, ``seed``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import result_path
from mechflow.corpus import CorpusError, corpus_files, read_documents
from mechflow.facts import StudyFacts
from mechflow.study import ConfigError, canonical, corpora, dataset_models, model_params

__all__ = ["SPEC_KEYS", "SPLIT_KEYS", "jobs", "inputs", "params", "check"]

#: the keys of a text corpus that say which documents it holds
SPEC_KEYS = ("path", "format", "column", "split_documents", "max_documents")
#: the keys that say how its documents become windows
SPLIT_KEYS = ("context_size", "held_out", "seed", "max_tokens")


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


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """Each corpus's files exist (a glob matches); with the data checks, its first document reads."""
    for d in corpora(study):
        try:
            corpus_files(spec(study, d), base_dir)
            if facts.regions is not None:
                next(iter(read_documents(spec(study, d), base_dir)), None)
        except CorpusError as e:
            raise ConfigError(f"datasets.{d}.path", str(e)) from None
