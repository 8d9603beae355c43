"""The residual stream of every layer at chosen token positions, from one forward pass per batch.

Forward hooks on each transformer block (``mechflow.hooks.find_blocks``) keep only the positions
asked for, so a batch never holds ``[layer, batch, tokens, d]``: :func:`answer_residuals` keeps
each prompt's last token (the position whose next-token distribution answers the prompt) and
:func:`position_residuals` keeps given (prompt, position) pairs (tuned-lens training data).

Prompts are padded on the right, so every real token sees the positions a lone prompt would (causal
attention; position ids count from 0 in every row), and are never truncated: a prompt longer than
``max_length`` is an error, since cutting it would move the answer position. The tokenizer's own
special tokens are added as it adds them (SmolLM2 adds no BOS: its first token is the attention sink).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mechflow.hooks import find_blocks
from mechflow.lens.unembed import LensError

__all__ = ["token_ids", "answer_residuals", "position_residuals"]


def token_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each prompt (special tokens as the tokenizer adds them); LensError if one is longer
    than ``max_length`` or empty."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    lengths = np.array([len(i) for i in ids])
    if lengths.size and (lengths.max() > max_length or lengths.min() == 0):
        bad = int(np.argmax(lengths)) if lengths.max() > max_length else int(np.argmin(lengths))
        raise LensError(f"prompt {bad} has {lengths[bad]} tokens (allowed 1..{max_length}; raise lens.max_length): "
                        f"{str(texts[bad])[:80]!r}")
    return ids


class _Keep:
    """Forward hooks on every block that keep the block output at ``rows, cols`` of the current batch."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.rows: torch.Tensor | None = None
        self.cols: torch.Tensor | None = None
        self.store: list[torch.Tensor | None] = [None] * len(blocks)
        self.handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i: int):
        def keep(module, args, out) -> None:
            h = out[0] if isinstance(out, tuple) else out
            self.store[i] = h[self.rows, self.cols].float()
        return keep

    def stacked(self) -> torch.Tensor:
        if any(s is None for s in self.store):
            raise LensError("a transformer block produced no output in the forward pass")
        return torch.stack(self.store)  # [L, n, d]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _base_model(model: nn.Module) -> nn.Module:
    """The transformer without its LM head: the lens computes its own read-out, never ``[batch, tokens, V]`` logits."""
    inner = getattr(model, getattr(model, "base_model_prefix", "") or "", None)
    return inner if isinstance(inner, nn.Module) else model


@contextlib.contextmanager
def _recorder(model: nn.Module) -> Iterator[_Keep]:
    keep = _Keep(find_blocks(model))
    try:
        yield keep
    finally:
        keep.remove()


def _batch(ids: list[list[int]], idx: np.ndarray, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(idx), width), dtype=torch.int64)
    for r, i in enumerate(idx):
        input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
        mask[r, : len(ids[i])] = 1
    return input_ids.to(device), mask.to(device)


@torch.inference_mode()
def answer_residuals(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 16,
                     max_length: int = 512) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(prompt indices [b], h [layer, b, d] float32)``: every block's output at each prompt's last token.

    Batches are formed from prompts sorted by length (less padding); indices refer to ``texts``.
    """
    ids = token_ids(tokenizer, texts, max_length)
    order = np.argsort([len(i) for i in ids], kind="stable")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    base = _base_model(model)
    with _recorder(base) as keep:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids, mask = _batch(ids, idx, pad, device)
            keep.rows = torch.arange(len(idx), device=device)
            keep.cols = mask.sum(1) - 1
            base(input_ids=input_ids, attention_mask=mask, use_cache=False)
            yield idx, keep.stacked()


@torch.inference_mode()
def position_residuals(model: nn.Module, tokenizer, texts: Sequence[str], positions: Sequence[Sequence[int]],
                       batch_size: int = 16, max_length: int = 512) -> torch.Tensor:
    """Every block's output at the given positions of each prompt: ``[layer, sum_i len(positions[i]), d]`` float32,
    in prompt order then position order (prompts with no positions are not run)."""
    ids = token_ids(tokenizer, texts, max_length)
    for i, pos in enumerate(positions):
        if len(pos) and (min(pos) < 0 or max(pos) >= len(ids[i])):
            raise LensError(f"positions {list(pos)} are outside prompt {i} ({len(ids[i])} tokens)")
    wanted = np.array([i for i, pos in enumerate(positions) if len(pos)], dtype=np.int64)
    order = wanted[np.argsort([len(ids[i]) for i in wanted], kind="stable")]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    base = _base_model(model)
    parts: dict[int, torch.Tensor] = {}
    with _recorder(base) as keep:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids, mask = _batch(ids, idx, pad, device)
            keep.rows = torch.tensor([r for r, i in enumerate(idx) for _ in positions[i]], device=device)
            keep.cols = torch.tensor([p for i in idx for p in positions[i]], device=device)
            base(input_ids=input_ids, attention_mask=mask, use_cache=False)
            h = keep.stacked().cpu()
            offset = 0
            for i in idx:
                n = len(positions[i])
                parts[int(i)] = h[:, offset : offset + n]
                offset += n
    if not parts:
        raise LensError("no positions to read")
    return torch.cat([parts[int(i)] for i in wanted], dim=1)
