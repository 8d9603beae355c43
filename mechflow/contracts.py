"""The data contracts every step shares: result paths, prompt coordinates, provenance keys, constants.

Users and other tools read these files, so each name is defined here once and imported by the
workflow (``rules/common.smk``), the rule scripts, the package and the report. Paths are templates
relative to the results root (``results:`` in the study config, default ``results``); wildcards are
``{dataset}``, ``{model}``, ``{hook}``, ``{layer}``, ``{run}``, ``{source}``, ``{shard}`` and ``{name}``
(a steering vector, or a selection).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

#: default results root (the study config's ``results`` key)
RESULTS_ROOT = "results"

#: result files, relative to the results root
RESULT_PATHS: dict[str, str] = {
    "prompts": "prompts/{dataset}.nc",
    "corpus_windows": "corpus/{dataset}/{model}/windows.nc",
    "corpus_shard": "corpus/{dataset}/{model}/{hook}/layer{layer}/{split}.shard{shard}.nc",
    "activations": "activations/{dataset}/{model}/{hook}.nc",
    "tokens": "activations/{dataset}/{model}/{hook}.tokens.nc",
    "name_positions": "activations/{dataset}/{model}/{hook}.name_{position}.nc",
    "shard": "activations/{dataset}/{model}/{hook}.shards/{shard}.nc",
    "sae_dir": "sae/{dataset}/{model}/{hook}/layer{layer}/{run}",
    "sae_checkpoints": "checkpoints/sae/{dataset}/{model}/{hook}/layer{layer}/{run}",
    "sae_splice": "sae/{dataset}/{model}/{hook}/layer{layer}/{run}/splice.nc",
    "sae_corpus_dir": "corpus/{dataset}/{model}/{hook}/layer{layer}/sae/{run}",
    "sae_corpus_checkpoints": "checkpoints/corpus/{dataset}/{model}/{hook}/layer{layer}/sae/{run}",
    "sae_corpus_splice": "corpus/{dataset}/{model}/{hook}/layer{layer}/sae/{run}/corpus_splice.nc",
    "snmf": "snmf/{dataset}/{model}/{hook}/layer{layer}/{run}.nc",
    "moran": "spatial/{dataset}/{model}/{hook}/layer{layer}/{source}/moran.nc",
    "lisa": "spatial/{dataset}/{model}/{hook}/layer{layer}/{source}/lisa.nc",
    "probes": "probes/{dataset}/{model}/{hook}.nc",
    "lens_prompts": "lens/{dataset}/prompts.nc",
    "tuned_lens": "lens/tuned/{model}/tuned_lens.safetensors",
    "tuned_lens_training": "lens/tuned/{model}/training.nc",
    "latent_language": "lens/{dataset}/{model}/latent_language.nc",
    "consistency": "lens/{dataset}/{model}/consistency.nc",
    "steering": "steering/{dataset}/{model}/{name}.nc",
    "selection": "selection/{name}/ranking.nc",
    "selection_csv": "selection/{name}/ranking.csv",
    "explorer": "explorer/{dataset}/{model}/{hook}/layer{layer}/{source}",
    "report": "report/index.html",
    "report_figures": "report/figures",
    "report_table": "report/significance.md",
    "logs": "logs",
    "benchmarks": "benchmarks",
}

#: the rule that makes each kind of result (activations: gather_activations when extract.shards > 1)
PRODUCERS: dict[str, str] = {
    "prompts": "prompts", "corpus_windows": "corpus", "corpus_shard": "corpus_activations",
    "activations": "extract", "tokens": "extract_tokens", "shard": "extract_shard", "name_positions": "name_positions",
    "sae_dir": "sae", "sae_splice": "sae_splice",
    "sae_corpus_dir": "sae_corpus", "sae_corpus_splice": "sae_corpus_splice", "snmf": "snmf", "moran": "spatial", "lisa": "spatial",
    "probes": "probes", "report": "report",
    "lens_prompts": "lens_prompts", "tuned_lens": "tuned_lens", "tuned_lens_training": "tuned_lens",
    "latent_language": "latent_language", "consistency": "consistency", "steering": "steer",
    "selection": "select", "selection_csv": "select", "explorer": "explorer",
}

#: files of one SAE run directory (``sae_dir``)
SAE_FILES: tuple[str, ...] = ("sae_weights.safetensors", "cfg.json", "features.nc", "training.nc")
#: files of one SAE trained on a text corpus (``sae_corpus_dir``, ``{dataset}`` the corpus): the SAE of every
#: prompt set's run directory at ``sae.level: corpus`` is a copy of these, with the prompts' ``features.nc``
SAE_CORPUS_FILES: tuple[str, ...] = ("sae_weights.safetensors", "cfg.json", "training.nc")

#: per-prompt coordinates carried from the prompt set into every [prompt, ...] file (where present):
#: admin1_code (GeoNames prompt sets) and n_tokens (tokens after truncation, added by extraction)
#: serve the template-confound baseline
PROMPT_COORDS: tuple[str, ...] = ("text", "latitude", "longitude", "region", "place_id", "admin1_code", "n_tokens")

#: provenance attrs copied from an input file into the files made from it
UPSTREAM_KEYS: tuple[str, ...] = ("dataset", "model", "model_digest", "hook", "pooling", "sae_arch")

#: mean Earth radius (IUGG), metres
EARTH_RADIUS_M = 6_371_008.8


def result_path(kind: str, root: str = RESULTS_ROOT, **wildcards: object) -> str:
    """The path of a result file under ``root``; wildcards left out stay as ``{name}`` templates."""
    if kind not in RESULT_PATHS:
        raise KeyError(f"unknown result kind {kind!r}; expected one of {sorted(RESULT_PATHS)}")
    template = str(PurePosixPath(root) / RESULT_PATHS[kind])
    return template.format_map(_KeepMissing(wildcards)) if wildcards else template


def producer_of(path: str | PurePosixPath) -> str | None:
    """The rule that makes a result file (matched on its path below any results root), or None."""
    import re

    text = str(PurePosixPath(path))
    for kind, rule in sorted(PRODUCERS.items(), key=lambda item: -len(RESULT_PATHS[item[0]])):  # most specific first
        pattern = re.sub(r"\\{\w+\\}", "[^/]+", re.escape(RESULT_PATHS[kind]))
        if re.search(f"(^|/){pattern}(/[^/]+)?$", text):
            return rule
    return None


def upstream_attrs(attrs: dict) -> dict:
    """The provenance attrs (``UPSTREAM_KEYS``) present in ``attrs``."""
    return {k: attrs[k] for k in UPSTREAM_KEYS if k in attrs}


class _KeepMissing(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"

#: rows the gather copies at a time: at most this many MiB of activations (and sink) per window
GATHER_WINDOW_MB: float = 256.0
#: rows an SAE encodes, and writes into features.nc, at a time
ENCODE_BATCH: int = 2048
#: semi-NMF runs every product along the samples over blocks of at most this many MiB of float64
#: columns (:mod:`mechflow.snmf.blocks`), kept in memory or read from disk at each pass alike, so
#: where the matrix lives never changes a bit of the result
SNMF_BLOCK_MB: float = 64.0

#: the template of a name-only prompt set: the control for the template confound
NAME_ONLY_TEMPLATE = "{name}"
#: positions that carry the place's name (mechflow.extract.names): its last token, the mean over its tokens
NAME_POSITIONS: tuple[str, ...] = ("last", "mean")


def is_main(config: Mapping[str, Any], dataset: str, model: str) -> bool:
    """A (dataset, model) whose results the study explains: not a control model (``random_init``), not a
    name-only prompt set. Controls are tested as the data are; only the main pairs also run the spatial
    test of the pooling with the sink (the evidence table's first column, read for main pairs only)."""
    models, datasets = config.get("models") or {}, config.get("datasets") or {}
    return not (models.get(model) or {}).get("random_init", False) and str(
        (datasets.get(dataset) or {}).get("template", "")).strip() != NAME_ONLY_TEMPLATE
