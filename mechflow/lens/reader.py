"""Read every layer of a batch of prompts at the answer position, through the logit and tuned lenses.

:func:`read_layers` runs the model once per batch (:func:`mechflow.lens.residuals.answer_residuals`),
translates all layers at once where the tuned lens is asked for, and decodes ``[layer, batch, d]``
in one chunked pass over the vocabulary (:func:`mechflow.lens.chunked.read_vocab`): no Python loop
over layers, and never ``[layer, prompt, vocab]`` in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mechflow.lens.chunked import DEFAULT_CHUNK_BYTES, read_vocab
from mechflow.lens.residuals import answer_residuals
from mechflow.lens.tuned import TunedLens
from mechflow.lens.unembed import LensError, Unembedding, find_unembedding

__all__ = ["LENSES", "LayerReadout", "read_layers", "pad_token_sets"]

#: the lenses :func:`read_layers` knows
LENSES: tuple[str, ...] = ("logit", "tuned")

log = logging.getLogger(__name__)


@dataclass
class LayerReadout:
    """One lens's read-out of P prompts at L layers (numpy, prompt first).

    target_logprob ``[P, L, T]`` float32 (natural log; ``-inf`` for an empty token set);
    target_rank ``[P, L, T]`` int64 (0 = top-1; -1 for an empty set); entropy ``[P, L]`` (nats);
    top1 ``[P, L]`` int64 token id; top1_logprob ``[P, L]``.
    """

    target_logprob: np.ndarray
    target_rank: np.ndarray
    entropy: np.ndarray
    top1: np.ndarray
    top1_logprob: np.ndarray

    @classmethod
    def empty(cls, P: int, L: int, T: int) -> LayerReadout:
        return cls(np.full((P, L, T), np.nan, np.float32), np.full((P, L, T), -1, np.int64), np.full((P, L), np.nan, np.float32),
                   np.full((P, L), -1, np.int64), np.full((P, L), np.nan, np.float32))


def pad_token_sets(sets: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """Token-id sets ``[P][T][k]`` -> int64 ``[P, T, K]`` padded with -1 (K = the largest set, at least 1)."""
    P = len(sets)
    T = len(sets[0]) if P else 0
    if any(len(s) != T for s in sets):
        raise LensError("every prompt needs the same number of target sets")
    K = max([len(t) for s in sets for t in s] + [1])
    out = np.full((P, T, K), -1, dtype=np.int64)
    for p, s in enumerate(sets):
        for t, ids in enumerate(s):
            out[p, t, : len(ids)] = list(ids)
    return out


def read_layers(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    targets: np.ndarray,
    *,
    lenses: Sequence[str] = ("logit",),
    tuned: TunedLens | None = None,
    batch_size: int = 16,
    max_length: int = 512,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    unembed: Unembedding | None = None,
) -> dict[str, LayerReadout]:
    """Each lens's :class:`LayerReadout` of ``texts`` at their last token, for target sets ``targets``
    ``[P, T, K]`` (int64, -1 padding; see :func:`pad_token_sets`)."""
    unknown = [lens for lens in lenses if lens not in LENSES]
    if unknown:
        raise LensError(f"unknown lens(es) {unknown}; choose from {LENSES}")
    if "tuned" in lenses and tuned is None:
        raise LensError("the tuned lens was asked for but no translators were given")
    targets = np.asarray(targets, dtype=np.int64)
    if targets.ndim != 3 or targets.shape[0] != len(texts):
        raise LensError(f"targets must be [prompt={len(texts)}, T, K], got shape {targets.shape}")
    unembed = unembed or find_unembedding(model)
    device = unembed.weight.device
    if tuned is not None:
        tuned = tuned.to(device)
    out: dict[str, LayerReadout] = {}
    done, step = 0, max(1, len(texts) // 4)
    for idx, h in answer_residuals(model, tokenizer, texts, batch_size, max_length):
        L = h.shape[0]
        if tuned is not None and tuned.n_layers != L:
            raise LensError(f"the tuned lens has {tuned.n_layers} translators but the model has {L} layers")
        tg = torch.from_numpy(targets[idx]).to(device)
        for lens in lenses:
            with torch.no_grad():
                x = unembed.normed(tuned(h) if lens == "tuned" else h)  # [L, b, d]
            r = read_vocab(x, unembed.weight, tg, bias=unembed.bias, softcap=unembed.softcap, chunk_bytes=chunk_bytes)
            res = out.setdefault(lens, LayerReadout.empty(len(texts), L, targets.shape[1]))
            res.target_logprob[idx] = r.target_logprob.transpose(0, 1).cpu().numpy()
            res.target_rank[idx] = r.target_rank.transpose(0, 1).cpu().numpy()
            res.entropy[idx] = r.entropy.T.cpu().numpy()
            res.top1[idx] = r.top1.T.cpu().numpy()
            res.top1_logprob[idx] = r.top1_logprob.T.cpu().numpy()
        if (done + len(idx)) // step > done // step:
            log.info("lens read-out (%s): %d of %d prompts", "+".join(lenses), done + len(idx), len(texts))
        done += len(idx)
    return out
