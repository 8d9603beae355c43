"""What a study's models and prompt sets are, read once before any job runs: :class:`StudyFacts`.

The checks, the job lists of every step and ``mechflow info`` read these facts; none of them opens
a model or builds a prompt set itself. Models are read from ``config.json`` or the GGUF header (no
weights loaded, no torch imported): layers, the width of every hook, whether it is a causal LM, the
bytes of its weight files. Prompt sets are built (as the ``prompts`` rule builds them) only when
asked (``prompts=True``): places per region and the bytes of their variables.

Every problem is a :class:`~mechflow.study.ConfigError` naming the key (``models.<m>.spec``,
``datasets.<d>``).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechflow.data.prompts import PromptSetError, build_prompts
from mechflow.models import (
    WIDTH_HOOKS,
    ModelSpecError,
    ResolvedModel,
    count_layers,
    gguf_metadata_value,
    hook_width,
    is_causal_lm,
    resolve_model,
)
from mechflow.study import ConfigError, prompt_sets

__all__ = ["ModelFacts", "StudyFacts", "gather_facts", "model_facts", "prompt_set_facts"]


@dataclass(frozen=True)
class ModelFacts:
    """One model, from its config or GGUF header."""

    resolved: ResolvedModel
    layers: int | None  # transformer blocks (None: not stated)
    widths: dict[str, int | None]  # hook -> units
    causal: bool  # loads as a causal LM (has a next token to read, steer or splice)
    weight_bytes: int  # the files loading reads (weights as stored)

    @functools.cached_property
    def parameters(self) -> int | None:
        """Parameters estimated from the dims: layers x (attention 4 d^2 + gated MLP 3 d ff) + vocab x d."""
        d, ff = self.widths.get("resid"), self.widths.get("mlp_hidden")
        if not self.layers or not d:
            return None
        vocab = None
        if self.resolved.gguf_file:
            tokens = gguf_metadata_value(self.resolved.directory / self.resolved.gguf_file, "tokenizer.ggml.tokens")
            vocab = len(tokens) if isinstance(tokens, list) else None
        elif (self.resolved.directory / "config.json").exists():
            vocab = json.loads((self.resolved.directory / "config.json").read_text(encoding="utf-8")).get("vocab_size")
        return int(self.layers * (4 * d * d + 3 * d * (ff or 4 * d)) + (vocab or 0) * d)

    def loaded_bytes(self, dtype: str) -> int:
        """The weights in memory once loaded in ``dtype`` (``auto`` is float32 on CPU), at least the files' size."""
        per = 2 if dtype in ("bfloat16", "float16") else 4
        return max(self.weight_bytes, (self.parameters or 0) * per)


@dataclass(frozen=True)
class StudyFacts:
    """The study's models and (when built) prompt sets.

    ``regions``: prompt set -> region -> places, ``prompt_bytes``: prompt set -> bytes of the prompt set's
    variables, and ``duplicates``: prompt set -> duplicated places found (dropped or kept as ``datasets.<d>.duplicates``
    says) (text corpora are not prompt sets); all None when the prompt sets were not built (a job process
    re-reading a study the main process checked).
    """

    models: dict[str, ModelFacts]
    regions: dict[str, dict[str, int]] | None = None
    prompt_bytes: dict[str, int] | None = None
    duplicates: dict[str, int] | None = None

    @property
    def n_layers(self) -> dict[str, int | None]:
        """Model -> transformer blocks."""
        return {name: m.layers for name, m in self.models.items()}

    def n(self, dataset: str) -> int:
        """Prompts of a prompt set (the prompt sets must have been built)."""
        if self.regions is None:
            raise ValueError("the prompt sets were not built (gather_facts(..., prompts=True))")
        return sum(self.regions[dataset].values())

    def causal_models(self) -> list[str]:
        """The study's causal LMs, sorted."""
        return sorted(name for name, m in self.models.items() if m.causal)


def gather_facts(study: dict[str, Any], base_dir: str | Path = ".", prompts: bool = True) -> StudyFacts:
    """Facts of every model of ``study`` and, with ``prompts``, of every prompt set (built now)."""
    models = {name: model_facts(name, spec["spec"], base_dir) for name, spec in study["models"].items()}
    if not prompts:
        return StudyFacts(models)
    regions, prompt_bytes, duplicates = {}, {}, {}
    for name in prompt_sets(study):
        regions[name], prompt_bytes[name], duplicates[name] = prompt_set_facts(name, study["datasets"][name], base_dir)
    return StudyFacts(models, regions, prompt_bytes, duplicates)


def model_facts(name: str, spec: str, base_dir: str | Path = ".") -> ModelFacts:
    """One model's facts; ConfigError at ``models.<name>.spec`` when the spec does not resolve."""
    try:
        resolved = resolve_model(spec, base_dir)
        widths = {hook: _width(resolved, hook) for hook in WIDTH_HOOKS}
        return ModelFacts(resolved, count_layers(resolved), widths, is_causal_lm(resolved),
                          int(sum(p.stat().st_size for p in resolved.input_files if p.exists())))
    except ModelSpecError as e:
        raise ConfigError(f"models.{name}.spec", str(e)) from None


def prompt_set_facts(name: str, dataset: dict[str, Any], base_dir: str | Path = ".") -> tuple[dict[str, int], int, int]:
    """Places per region (sorted), bytes and duplicated places found of one prompt set, built now; ConfigError at
    ``datasets.<name>``."""
    try:
        prompts = build_prompts(dataset, base_dir)
    except PromptSetError as e:
        raise ConfigError(f"datasets.{name}", str(e)) from None
    return (dict(sorted(Counter(prompts["region"].values.astype(str).tolist()).items())), int(prompts.nbytes),
            int(prompts.attrs["duplicates_found"]))


def _width(resolved: ResolvedModel, hook: str) -> int | None:
    try:
        return hook_width(resolved, hook)
    except (KeyError, ValueError):
        return None
