"""Load a study model for the lens: a causal LM with its head, frozen, plus its provenance attrs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mechflow.hooks import n_layers
from mechflow.lens.unembed import Unembedding, find_unembedding
from mechflow.models import load_model, model_digest, resolve_model

__all__ = ["load_causal_lm"]


def load_causal_lm(params: Mapping[str, Any]) -> tuple[Any, Any, Unembedding, dict[str, Any]]:
    """``(model, tokenizer, unembedding, provenance)`` from a model's config entry (``spec``, ``dtype``,
    ``device``, ``random_init``, ``init_seed``), offline. LensError when the model has no LM head."""
    resolved = resolve_model(params["spec"])
    model, tokenizer = load_model(resolved, params.get("device", "auto"), params.get("dtype", "float32"),
                                  bool(params.get("random_init", False)), int(params.get("init_seed", 0)))
    model.requires_grad_(False)
    unembed = find_unembedding(model)
    prov = {"model_spec": params["spec"], "model_digest": model_digest(resolved),
            "random_init": bool(params.get("random_init", False)), "n_layers": n_layers(model),
            "vocab_size": unembed.vocab_size, "d_model": unembed.d_model}
    return model, tokenizer, unembed, prov
