"""Positions that carry the place's name: the name's last token and the mean over the name's tokens.

A pooled prompt mixes the name with the template around it (and, for a name-only prompt, leaves out
the name's first token where the pooling leaves out the attention sink). These feature sets read the
name itself from a token-level activation file (rule extract_tokens):

- ``name_last``: the activation at the name's last token (where a causal model has read the whole name);
- ``name_mean``: the mean over every token of the name, the first included even where it is the
  attention sink (for a name-only prompt of a model without BOS, position 0: its residual is a
  function of that token alone).

A token belongs to the name when its character span overlaps the name's span in the prompt text
(``[name_start, name_end)``: the template's text before ``{name}``, formatted with the prompt's
fields, then the name), from the tokenizer's offset mapping with the extraction's truncation. Each output is
an activation file ``[prompt, layer, unit]`` like a pooled one (:class:`mechflow.io.FeatureColumns` reads it).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from mechflow.contracts import NAME_POSITIONS
from mechflow.extract.settings import ExtractionError

__all__ = ["NAME_POSITIONS", "name_spans", "name_token_mask", "name_positions"]


def name_spans(prompts: xr.Dataset, template: str) -> tuple[np.ndarray, np.ndarray]:
    """Character span ``[start, end)`` of the name in every prompt's text (``[prompt]`` each), from the
    template and the prompt file's coordinates (``name`` and any field before ``{name}``)."""
    if "{name}" not in template:
        raise ExtractionError(f"template {template!r} has no {{name}} field: the name's positions are unknown")
    head = template.split("{name}", 1)[0]
    fields = [f for _, f, _, _ in string.Formatter().parse(head) if f]
    missing = [f for f in ["name", *fields] if f not in prompts.coords]
    if missing:
        raise ExtractionError(f"the prompt file lacks {missing} to place the name in template {template!r}")
    names = prompts["name"].values.astype(str)
    values = {f: prompts[f].values for f in fields}
    texts = prompts["text"].values.astype(str)
    start = np.array([len(head.format(**{f: values[f][i] for f in fields})) for i in range(len(names))], dtype=np.int64)
    end = start + np.array([len(n) for n in names], dtype=np.int64)
    bad = [i for i in range(len(names)) if texts[i][start[i]:end[i]] != names[i]]
    if bad:
        i = bad[0]
        raise ExtractionError(f"prompt {i}: the name {names[i]!r} is not at characters {start[i]}-{end[i]} of "
                              f"{texts[i]!r} (template {template!r})")
    return start, end


def name_token_mask(tokenizer: Any, texts: Sequence[str], start: np.ndarray, end: np.ndarray,
                    max_length: int) -> list[np.ndarray]:
    """Per prompt, a bool ``[n_tokens]``: the token's characters overlap the name's (tokens as extraction makes
    them: special tokens added, truncated to ``max_length``). ExtractionError when a name has no token left."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    out = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        mask = (spans[:, 0] < end[i]) & (spans[:, 1] > start[i]) & (spans[:, 1] > spans[:, 0])
        if not mask.any():
            raise ExtractionError(f"prompt {i}: no token of the name in {texts[i]!r} (truncated by "
                                  f"extract.max_length = {max_length}?)")
        out.append(mask)
    return out


def name_positions(tokens: xr.Dataset, masks: Sequence[np.ndarray], layers: Sequence[int],
                   prompts: xr.Dataset) -> dict[str, xr.DataArray]:
    """``{"last": ..., "mean": ...}``: ``[prompt, layer, unit]`` float32 activations at the name's last token and
    the mean over its tokens, from a token-level file (``activations [token, layer, unit]``, coords
    ``prompt_index``, ``position``), reading only ``layers``, one at a time; prompt coordinates from ``prompts``,
    with ``n_tokens`` (the prompt's tokens, as a pooled file has) and ``n_name_tokens``."""
    owner = tokens["prompt_index"].values.astype(np.int64)
    position = tokens["position"].values.astype(np.int64)
    counts = np.bincount(owner, minlength=len(masks))
    if len(masks) != prompts.sizes["prompt"] or counts.size != len(masks) or any(
            counts[i] != m.size for i, m in enumerate(masks)):
        raise ExtractionError("the token file's tokens do not match the prompts' tokenisation (another tokenizer or "
                              "max_length?): rerun extract_tokens")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if not np.array_equal(position, np.arange(owner.size) - first[owner]):
        raise ExtractionError("the token file is not in prompt order, position order")
    in_name = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    rows = np.flatnonzero(in_name)
    n_name = np.array([m.sum() for m in masks], dtype=np.int64)
    last = np.array([first[i] + int(np.flatnonzero(m)[-1]) for i, m in enumerate(masks)], dtype=np.int64)
    n_units = tokens.sizes["unit"]
    out = {k: np.empty((len(masks), len(layers), n_units), dtype=np.float32) for k in NAME_POSITIONS}
    for j, layer in enumerate(layers):  # one layer's [token, unit] at a time
        acts = tokens["activations"].sel(layer=int(layer)).values
        out["last"][:, j] = acts[last]
        sums = np.zeros((len(masks), n_units))
        np.add.at(sums, owner[rows], acts[rows].astype(np.float64))
        out["mean"][:, j] = sums / n_name[:, None]
    coords = {"prompt": prompts["prompt"].values, "layer": np.asarray(layers, dtype=np.int64),
              "unit": tokens["unit"].values}
    coords.update({k: ("prompt", v.values) for k, v in prompts.coords.items() if v.dims == ("prompt",) and k != "prompt"})
    coords["n_tokens"] = ("prompt", counts.astype(np.int64))
    coords["n_name_tokens"] = ("prompt", n_name)
    return {k: xr.DataArray(v, dims=("prompt", "layer", "unit"), coords=coords) for k, v in out.items()}
