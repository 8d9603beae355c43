"""Represent texts for data selection: mean SAE activations over tokens (MoNA), raw activations, sentence embeddings.

:func:`encode_texts` runs the language model once per batch of texts (hooks of :mod:`mechflow.extract`,
the forward pass stops after the SAE's layer), takes the token-level activations at the SAE's hook and
layer, encodes every kept token with the SAE and averages the token codes of each text (Ma et al. 2025
average the SAE activations over a sample's tokens). The tokens kept are those mechflow's pooling keeps
(:func:`mechflow.extract.pooling_mask`): real tokens (no padding) less the position ``exclude`` leaves
out, by default the first one (the BOS token, or the attention sink of models without one, e.g.
SmolLM2), so a selection reads the same tokens an SAE of the study was trained on. The mean of the raw
activations over the same tokens is returned too (the raw-activation baseline).

:func:`embed_texts` is the dense sentence-embedding baseline: a sentence encoder's last hidden state,
mean-pooled over the attention mask and L2-normalised (how all-MiniLM-L6-v2 is used by
sentence-transformers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mechflow.extract import (
    Exclude,
    ExtractionError,
    _base_model,
    _iter_captures,
    _token_lengths,
    pool,
    pooling_mask,
    resolve_exclude,
    resolve_layers,
)
from mechflow.hooks import n_layers

__all__ = ["SAE_INPUTS", "EncodedTexts", "encode_texts", "embed_texts"]

log = logging.getLogger(__name__)

#: what the SAE encodes: every kept token, then the mean of the codes (MoNA), or the mean-pooled activation once
SAE_INPUTS: tuple[str, ...] = ("tokens", "pooled")
SaeInput = Literal["tokens", "pooled"]


@dataclass(frozen=True)
class EncodedTexts:
    """Per-text representations, rows in the order of the texts given.

    ``features`` [n, n_features] float32: SAE activations averaged over each text's kept tokens (>= 0);
    ``raw`` [n, d] float32: raw activations at the hook averaged over the same tokens;
    ``n_tokens`` [n] int64: tokens each mean is over (after truncation, without padding and the left-out
    position); ``pool_excluded``: ``first`` or ``none`` (what was left out, see
    :func:`mechflow.extract.resolve_exclude`); ``sae_input``: ``tokens`` or ``pooled``.
    """

    features: np.ndarray
    raw: np.ndarray
    n_tokens: np.ndarray
    pool_excluded: str
    sae_input: str


@torch.inference_mode()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    sae: torch.nn.Module,
    hook: str,
    layer: int,
    texts: Sequence[str],
    batch_size: int = 16,
    exclude: Exclude | bool = "auto",
    max_length: int = 256,
    sae_input: SaeInput = "tokens",
    token_chunk: int = 4096,
    progress: bool = False,
) -> EncodedTexts:
    """SAE features and raw activations of ``texts`` at ``hook`` / ``layer``, each averaged over the text's tokens.

    ``exclude``: the position left out of the mean, as extraction's ``extract.exclude`` (``auto``: the
    first token, BOS or attention sink; ``True`` / ``False`` stand for ``auto`` / ``none``); padding is
    never read. ``sae_input``: ``tokens`` encodes every kept token and averages the codes (MoNA);
    ``pooled`` encodes the averaged activation once (the input an SAE trained on mean-pooled prompts,
    mechflow's ``sae.level: pooled``, was trained on). ``token_chunk``:
    token rows encoded per SAE call (bounds the [tokens, n_features] codes). Texts are batched by length
    (``batch_size`` per forward pass); results do not depend on the batch size beyond float rounding.
    """
    if sae_input not in SAE_INPUTS:
        raise ExtractionError(f"unknown sae_input {sae_input!r}; choose one of {SAE_INPUTS}")
    if token_chunk < 1:
        raise ExtractionError(f"token_chunk must be >= 1, got {token_chunk}")
    texts = [str(t) for t in texts]
    if not texts:
        raise ExtractionError("no texts to encode")
    (layer_id,) = resolve_layers([int(layer)], n_layers(model))
    excluded = resolve_exclude({True: "auto", False: "none"}.get(exclude, exclude) if isinstance(exclude, bool) else exclude,
                               tokenizer)
    sae_param = next(sae.parameters())
    n_features = int(sae.W_dec.shape[0])
    d_in = int(sae.W_dec.shape[1])
    features = np.zeros((len(texts), n_features), dtype=np.float32)
    raw_out: np.ndarray | None = None
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    lengths, _ = _token_lengths(tokenizer, texts, max_length)
    captures = _iter_captures(model, tokenizer, texts, {hook: [layer_id]}, batch_size, max_length, progress,
                              max(1, len(texts)), lengths)
    for idx, mask, store in captures:
        h = store[hook, layer_id].float()  # [b, tokens, d]
        if h.shape[-1] != d_in:
            raise ExtractionError(f"the SAE reads {d_in} units but hook {hook!r} at layer {layer_id} has {h.shape[-1]}")
        keep = pooling_mask(mask, excluded).bool()  # [b, tokens]: real tokens less the left-out position
        counts = keep.sum(1)
        raw = pool(h, mask, "mean", excluded)  # [b, d]: mean over the same tokens
        if sae_input == "pooled":
            codes = sae.encode(raw.to(sae_param)).float()
        else:
            rows = h[keep].to(sae_param)  # [N, d], text by text, tokens in order
            owner = keep.nonzero()[:, 0].to(sae_param.device)  # [N]: each row's text within the batch
            sums = torch.zeros(len(idx), n_features, dtype=torch.float32, device=sae_param.device)
            for s in range(0, rows.shape[0], token_chunk):
                sums.index_add_(0, owner[s : s + token_chunk], sae.encode(rows[s : s + token_chunk]).float())
            codes = sums / counts.to(sums.device).clamp(min=1)[:, None]
        if raw_out is None:
            raw_out = np.zeros((len(texts), raw.shape[1]), dtype=np.float32)
        features[idx] = codes.cpu().numpy()
        raw_out[idx] = raw.cpu().numpy()
        n_tokens[idx] = counts.cpu().numpy()
    if (features < 0).any():
        raise ExtractionError(f"the SAE produced negative activations ({int((features < 0).sum())} entries); generalized "
                              "Jaccard needs nonnegative codes")
    if raw_out is None:
        raise ExtractionError("the model produced no batch")
    return EncodedTexts(features=features, raw=raw_out, n_tokens=n_tokens, pool_excluded=excluded, sae_input=sae_input)


@torch.inference_mode()
def embed_texts(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 32,
                max_length: int = 256, normalize: bool = True) -> np.ndarray:
    """Sentence embeddings [n, d] float32: the encoder's last hidden state mean-pooled over the attention mask
    (every real token, special tokens included, as sentence-transformers pools), L2-normalised (``normalize``)."""
    texts = [str(t) for t in texts]
    if not texts:
        raise ExtractionError("no texts to embed")
    if batch_size < 1:
        raise ExtractionError(f"batch_size must be >= 1, got {batch_size}")
    base = _base_model(model)
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length).to(device)
        result = base(**enc)
        hidden = result.last_hidden_state if hasattr(result, "last_hidden_state") else result[0]
        emb = pool(hidden.float(), enc["attention_mask"], "mean", "none")
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=1)
        out.append(emb.cpu().numpy().astype(np.float32))
    return np.concatenate(out, 0)
