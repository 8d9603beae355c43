"""Pooling of token activations per prompt, on tensors: which position it leaves out (the attention sink),
the mask it reads, mean / max / last pooling, the left-out position's rows, and the layer selection.

Pure functions of tensors and the tokenizer; they run no model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from mechflow.extract.settings import EXCLUDES, POOLINGS, Exclude, ExtractionError, Pooling

log = logging.getLogger("mechflow.extract")


def adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer puts its BOS token first in every encoded text."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def resolve_exclude(exclude: Exclude, tokenizer: Any) -> Literal["first", "none"]:
    """What pooling leaves out for this tokenizer: the first real position (``first``) or nothing."""
    if exclude not in EXCLUDES:
        raise ExtractionError(f"unknown exclude {exclude!r}; choose one of {EXCLUDES}")
    if exclude == "auto":
        return "first"  # the BOS token where there is one, else the first token: position 0 either way
    if exclude == "bos":
        return "first" if adds_bos(tokenizer) else "none"
    return exclude  # type: ignore[return-value]


def pooling_mask(mask: torch.Tensor, exclude: Literal["first", "none"]) -> torch.Tensor:
    """The tokens mean/max pooling reads [batch, tokens]: real tokens, less the first of each prompt
    (whatever the padding side) when ``exclude`` is ``first`` and the prompt has another token."""
    if exclude == "none":
        return mask
    first = mask.to(torch.int64).argmax(1)  # first real position
    keep = mask.clone()
    rows = torch.arange(mask.shape[0], device=mask.device)
    keep[rows, first] = torch.where(mask.sum(1) > 1, 0, mask[rows, first]).to(mask.dtype)
    return keep


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling, exclude: Literal["first", "none"] = "none") -> torch.Tensor:
    """Pool token activations per sequence, ignoring padding.

    hidden [batch, tokens, units]; mask [batch, tokens] (1 = real token) -> [batch, units].
    ``last`` takes the last real token whatever the padding side. ``exclude="first"`` leaves each
    prompt's first real token out of mean and max pooling (kept for a one-token prompt).
    """
    if pooling != "last":
        mask = pooling_mask(mask, exclude)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if pooling == "max":
        return hidden.masked_fill(m == 0, float("-inf")).amax(1)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, -1).amax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ExtractionError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


def resolve_layers(layers: str | Sequence[int], total: int) -> list[int]:
    """``"all"`` or a list of layer indices (negative counts from the end) -> sorted unique indices."""
    if layers == "all":
        return list(range(total))
    if isinstance(layers, str):
        raise ExtractionError(f"layers must be 'all' or a list of integers, got {layers!r}")
    out = set()
    for layer in layers:
        idx = layer + total if layer < 0 else layer
        if not 0 <= idx < total:
            raise ExtractionError(f"layer {layer} is out of range for a model with {total} layers")
        out.add(idx)
    if not out:
        raise ExtractionError("no layers selected")
    return sorted(out)


def sink_rows(store: dict[int, torch.Tensor], mask: torch.Tensor, layer_ids: Sequence[int], excluded: str) -> np.ndarray:
    """The activation at the position pooling left out [b, n_layers, units] float32; NaN rows where nothing was."""
    first = mask.to(torch.int64).argmax(1)
    rows = torch.arange(mask.shape[0], device=mask.device)
    out = torch.stack([store[layer][rows, first] for layer in layer_ids], 1).float().cpu().numpy()
    left_out = (mask.sum(1) > 1).cpu().numpy() if excluded == "first" else np.zeros(mask.shape[0], dtype=bool)
    out[~left_out] = np.nan
    return out


def position_norms(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean norm of each prompt's first real token, and the median norm of its other real tokens.

    hidden [batch, tokens, units]; mask [batch, tokens]. NaN where no prompt has a second token.
    """
    norms = hidden.float().norm(dim=-1)
    first = mask.to(torch.int64).argmax(1)
    rows = torch.arange(mask.shape[0], device=mask.device)
    others = pooling_mask(mask, "first").bool() & (mask.sum(1, keepdim=True) > 1)
    rest = norms[others]
    return float(norms[rows, first].mean()), float(rest.median()) if rest.numel() else float("nan")


def log_position_norms(store: dict[int, torch.Tensor], mask: torch.Tensor, layer_ids: Sequence[int], hook: str,
                       excluded: str) -> None:
    """Log first-token vs other-token norms at a few layers (first, middle, last) of one batch."""
    picks = sorted({layer_ids[0], layer_ids[len(layer_ids) // 2], layer_ids[-1]})
    parts = []
    for layer in picks:
        first, rest = position_norms(store[layer], mask)
        parts.append(f"layer {layer}: first token {first:.3g}, other tokens (median) {rest:.3g} ({first / rest:.1f}x)")
    log.info("%s norms per position (first batch): %s; pooling leaves out: %s", hook, "; ".join(parts),
             "the first token" if excluded == "first" else "nothing")
