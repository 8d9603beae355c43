"""What a steering vector does to a causal LM's next token, per scale and prompt, and a few greedy generations.

For each scale ``s`` the model runs with ``coef(s) * vector`` added at the hook and layer
(:func:`mechflow.steering.hook.steering`) at every real token from ``from_position`` on, and its
next-token distribution at the last token of each prompt is compared with the unsteered one:

- ``kl``: KL(unsteered ‖ steered) in nats, the divergence of the steered distribution from the model's own;
- ``entropy``: entropy of the steered distribution (nats);
- ``target_logprob``: log-probability of each target token (e.g. the first tokens of " Italy" and " England").

Prompts are left-padded with explicit position ids, so the last position is every prompt's last real
token and padding changes no position. One forward pass per batch and scale; no Python loop over prompts.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mechflow.extract.capture import iter_tokens
from mechflow.extract.settings import ExtractSettings
from mechflow.steering.hook import positions_from, steering

__all__ = ["SteeringEffects", "encode_left", "first_token_ids", "activation_norm", "steering_effects", "greedy_generations"]


@dataclass
class SteeringEffects:
    """Effects of one vector at S scales on P prompts (numpy, scale first).

    kl ``[S, P]`` and entropy ``[S, P]`` float64 (nats); target_logprob ``[S, P, T]`` float64; top_token
    ``[S, P]`` int64 (the steered argmax token id); the unsteered model's ``clean_entropy`` ``[P]``,
    ``clean_target_logprob`` ``[P, T]`` and ``clean_top_token`` ``[P]``.
    """

    kl: np.ndarray
    entropy: np.ndarray
    target_logprob: np.ndarray
    top_token: np.ndarray
    clean_entropy: np.ndarray
    clean_target_logprob: np.ndarray
    clean_top_token: np.ndarray


def encode_left(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` [batch, tokens] of ``texts``, left-padded with the pad token (truncated to
    ``max_length`` tokens, as extraction tokenizes them)."""
    ids = tokenizer([str(t) for t in texts], truncation=True, max_length=max_length)["input_ids"]
    if any(len(i) == 0 for i in ids):
        raise ValueError("a prompt has no tokens")
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), int(pad), dtype=torch.int64)
    mask = torch.zeros((len(ids), width), dtype=torch.int64)
    for row, seq in enumerate(ids):
        input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.int64)
        mask[row, width - len(seq):] = 1
    return input_ids.to(device), mask.to(device)


def first_token_ids(tokenizer: Any, targets: Sequence[str]) -> list[int]:
    """The first token id of each target string (tokenized without special tokens, leading space kept)."""
    out = []
    for t in targets:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"target {t!r} has no tokens")
        out.append(int(ids[0]))
    if len(set(out)) < len(out):
        names = [tokenizer.decode([i]) for i in out]
        raise ValueError(f"targets {list(targets)} share a first token ({names}); choose targets whose first tokens differ")
    return out


def activation_norm(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], hook: str, layer: int,
                    batch_size: int = 32, max_length: int = 64) -> float:
    """Mean L2 norm of ``hook``'s activation at block ``layer`` over the real tokens of ``texts``, the first token of
    each prompt left out (the attention sink, whose norm is orders of magnitude larger in many LMs)."""
    total, count = 0.0, 0
    settings = ExtractSettings({hook: [layer]}, pooling=None, batch_size=batch_size, max_length=max_length, progress=False)
    for _, acts in iter_tokens(model, tokenizer, list(texts), settings):
        for a in acts:  # [tokens_i, 1, units]
            rows = a[1:, 0] if a.shape[0] > 1 else a[:, 0]
            total += float(np.linalg.norm(rows.astype(np.float64), axis=-1).sum())
            count += rows.shape[0]
    return total / max(count, 1)


def _forward_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    params = inspect.signature(model.forward).parameters
    kw: dict[str, Any] = {"use_cache": False} if "use_cache" in params else {}
    if "logits_to_keep" in params:
        kw["logits_to_keep"] = 1  # only the last position's logits are read
    return kw


def _last_logp(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    """Next-token log-probabilities at the last position [batch, vocab] float64 (inputs left-padded)."""
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits[:, -1]
    return torch.log_softmax(logits.double(), dim=-1)


@torch.inference_mode()
def steering_effects(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], hook: str, layer: int,
                     vector: torch.Tensor | np.ndarray, coefs: Sequence[float], target_ids: Sequence[int],
                     from_position: int = 0, batch_size: int = 16, max_length: int = 64) -> SteeringEffects:
    """Effects of adding ``coefs[s] * vector`` at ``hook`` / ``layer`` on the next token after each of ``texts``.

    ``vector`` [units]; ``coefs`` [S] absolute multipliers of ``vector`` (0 runs the hook and changes nothing);
    ``target_ids`` [T]. Returns :class:`SteeringEffects`.
    """
    if not texts:
        raise ValueError("no prompts to steer")
    device = next(model.parameters()).device
    vec = torch.as_tensor(np.asarray(vector), dtype=torch.float32, device=device)
    targets = torch.as_tensor(list(target_ids), dtype=torch.int64, device=device)
    S, P, T = len(coefs), len(texts), len(target_ids)
    kl, ent = np.zeros((S, P)), np.zeros((S, P))
    tlp, top = np.zeros((S, P, T)), np.zeros((S, P), np.int64)
    c_ent, c_tlp, c_top = np.zeros(P), np.zeros((P, T)), np.zeros(P, np.int64)
    kw = _forward_kwargs(model)
    model.eval()
    for start in range(0, P, batch_size):
        rows = slice(start, min(start + batch_size, P))
        ids, mask = encode_left(tokenizer, texts[rows], max_length, device)
        where = positions_from(mask, from_position)
        clean = _last_logp(model, ids, mask, kw)
        p_clean = clean.exp()
        c_ent[rows] = (-(p_clean * clean).sum(-1)).cpu().numpy()
        c_tlp[rows] = clean[:, targets].cpu().numpy()
        c_top[rows] = clean.argmax(-1).cpu().numpy()
        for s, c in enumerate(coefs):
            with steering(model, hook, layer, vec, float(c), where):
                logp = _last_logp(model, ids, mask, kw)
            kl[s, rows] = (p_clean * (clean - logp)).sum(-1).clamp(min=0).cpu().numpy()
            ent[s, rows] = (-(logp.exp() * logp).sum(-1)).cpu().numpy()
            tlp[s, rows] = logp[:, targets].cpu().numpy()
            top[s, rows] = logp.argmax(-1).cpu().numpy()
    return SteeringEffects(kl, ent, tlp, top, c_ent, c_tlp, c_top)


@torch.inference_mode()
def greedy_generations(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], hook: str, layer: int,
                       vector: torch.Tensor | np.ndarray, coefs: Sequence[float], max_new_tokens: int = 12,
                       from_position: int = 0, max_length: int = 64) -> np.ndarray:
    """Greedy continuations [S, G] (str) of ``texts`` [G] with ``coefs[s] * vector`` added at every real position from
    ``from_position`` on, generated tokens included. Every (scale, prompt) pair is one row of one batch; the prompt
    runs once, then one token per step through the model's key-value cache. A continuation ends at the EOS token."""
    S, G = len(coefs), len(texts)
    if not G or max_new_tokens < 1:
        return np.full((S, G), "", dtype=object)
    device = next(model.parameters()).device
    vec = torch.as_tensor(np.asarray(vector), dtype=torch.float32, device=device)
    ids, mask = encode_left(tokenizer, list(texts) * S, max_length, device)  # row = s * G + g
    coef = torch.as_tensor(np.repeat(np.asarray(coefs, np.float64), G), dtype=torch.float32, device=device)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    done = torch.zeros(S * G, dtype=torch.bool, device=device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    step_ids, where, cache, new = ids, positions_from(mask, from_position), None, []
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # transformers 5.x: cache
    model.eval()
    for _ in range(max_new_tokens):
        with steering(model, hook, layer, vec, coef, where):
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_arg: cache})
        cache = out[cache_arg]
        nxt = torch.where(done, torch.full_like(done, int(pad), dtype=torch.int64), out.logits[:, -1].argmax(-1))
        new.append(nxt)
        if eos is not None:
            done |= nxt == eos
        if bool(done.all()):
            break
        pos = pos[:, -1:] + 1
        step_ids, mask = nxt[:, None], torch.cat([mask, (~done).to(mask.dtype)[:, None]], 1)
        where = (pos >= from_position) & ~done[:, None]
    gen = torch.stack(new, 1).cpu().numpy()
    out_text = np.empty(S * G, dtype=object)
    for row in range(S * G):
        toks = gen[row].tolist()
        if eos is not None and eos in toks:
            toks = toks[: toks.index(eos)]
        out_text[row] = tokenizer.decode(toks, skip_special_tokens=True)
    return out_text.reshape(S, G)
