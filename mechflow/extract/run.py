"""Extraction to files: run the model over a prompt set with :class:`~mechflow.extract.settings.ExtractSettings`
and write pooled activations per hook (:func:`extract_hooks_to_files`) or every real token's activations
(:func:`extract_tokens_to_file`), streamed window by window so memory stays bounded by one window."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechflow.contracts import PROMPT_COORDS
from mechflow.extract.capture import _token_lengths, iter_pooled_hooks, iter_tokens
from mechflow.extract.pooling import resolve_exclude, resolve_layers
from mechflow.extract.settings import Exclude, ExtractionError, ExtractSettings, Pooling
from mechflow.extract.writer import ActivationWriter
from mechflow.hooks import n_layers

log = logging.getLogger("mechflow.extract")


def extract_hooks_to_files(
    paths: dict[str, str | Path],
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: xr.Dataset,
    settings: ExtractSettings,
    attrs: dict[str, Any],
) -> dict[str, Path]:
    """Extract pooled activations of several hooks in one forward pass per batch; write each hook's
    ``activations`` [prompt, layer, unit] to ``paths[hook]``.

    ``settings.hooks``: hook -> ``"all"`` or layer indices (the same keys as ``paths``). Memory holds one
    window of ``settings.window`` prompts per hook; each window is written as one contiguous block. Attrs
    record ``hook``, ``pooling``, ``exclude`` (as configured), ``pool_excluded`` (``first`` or
    ``none``: what mean/max pooling left out) and ``keep_sink``; the coordinate ``n_tokens`` [prompt]
    holds each prompt's token count after truncation. ``keep_sink`` (only where pooling leaves a
    position out) also writes that position's activation as ``sink``, so the pooling without the
    fix can be rebuilt from the same file (:func:`mechflow.sink.with_sink`). Every file is written
    atomically, and none is left behind when any fails.
    """
    s = settings
    if set(paths) != set(s.hooks):
        raise ExtractionError(f"paths for hooks {sorted(paths)} but layers for {sorted(s.hooks)}")
    texts = [str(t) for t in prompts["text"].values]
    if not texts:
        raise ExtractionError("the prompt set is empty")
    total = n_layers(model)
    layer_ids = {hook: resolve_layers(layers, total) for hook, layers in s.hooks.items()}
    excluded = resolve_exclude(s.exclude, tokenizer) if s.pooling != "last" else "none"
    keep_sink = s.keep_sink and excluded != "none"
    prompts = prompts.assign_coords(n_tokens=("prompt", _token_lengths(tokenizer, texts, s.max_length, warn=False)[0]))
    window = s.window
    n_win = min(window, len(texts))
    with contextlib.ExitStack() as stack:
        writers = {
            hook: stack.enter_context(ActivationWriter(
                paths[hook], prompts, layer_ids[hook],
                {**attrs, "hook": hook, "pooling": s.pooling, "exclude": s.exclude, "pool_excluded": excluded,
                 "keep_sink": int(keep_sink)}, keep_sink=keep_sink))
            for hook in paths
        }
        bufs: dict[str, np.ndarray] = {}
        sbufs: dict[str, np.ndarray] = {}
        w0, filled = 0, 0
        for idx, pooled, sinks in iter_pooled_hooks(model, tokenizer, texts, replace(s, hooks=layer_ids, keep_sink=keep_sink)):
            for hook, block in pooled.items():
                if hook not in bufs:
                    bufs[hook] = np.empty((n_win, *block.shape[1:]), dtype=np.float32)
                    if keep_sink:
                        sbufs[hook] = np.empty_like(bufs[hook])
                    writers[hook].create(block.shape[-1])  # the (hidden) temporary exists from the first batch on
                bufs[hook][idx - w0] = block
                if keep_sink:
                    sbufs[hook][idx - w0] = sinks[hook]
            filled += len(idx)
            if filled == min(window, len(texts) - w0):  # window complete: one contiguous write per hook
                for hook, writer in writers.items():
                    writer.write_rows(w0, bufs[hook][:filled], sbufs[hook][:filled] if keep_sink else None)
                w0, filled = w0 + window, 0
    for hook, path in paths.items():
        log.info("wrote %s: %d prompts x %d layers", path, len(texts), len(layer_ids[hook]))
    return {hook: Path(p) for hook, p in paths.items()}


def extract_to_file(
    path: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: xr.Dataset,
    hook: str,
    layers: str | Sequence[int],
    pooling: Pooling,
    batch_size: int,
    max_length: int,
    attrs: dict[str, Any],
    progress: bool = True,
    window: int = 1024,
    exclude: Exclude = "auto",
    keep_sink: bool = False,
) -> Path:
    """Extract pooled activations of one hook and write ``activations`` [prompt, layer, unit] (see
    :func:`extract_hooks_to_files`, which does several hooks in one pass)."""
    settings = ExtractSettings({hook: layers}, pooling, exclude, keep_sink, batch_size, max_length, window, progress)
    return extract_hooks_to_files({hook: path}, model, tokenizer, prompts, settings, attrs)[hook]


def token_coords(prompts: xr.Dataset, tokenizer: Any, max_length: int, exclude: Exclude = "auto") -> xr.Dataset:
    """Coordinates of a token-level file: dim ``token``; ``prompt_index``, ``position``, ``token_str`` (each token
    decoded on its own),
    ``excluded`` (True for the position pooling leaves out, see :func:`resolve_exclude`: flagged, not
    dropped) and each prompt coordinate (text, latitude, ...) repeated for the prompt's tokens."""
    texts = [str(t) for t in prompts["text"].values]
    lengths, ids = _token_lengths(tokenizer, texts, max_length, warn=False)
    owner = np.repeat(np.arange(len(texts)), lengths)
    position = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
    excluded = (position == 0) & (lengths[owner] > 1) if resolve_exclude(exclude, tokenizer) == "first" else position < 0
    coords: dict[str, Any] = {
        "token": np.arange(int(lengths.sum()), dtype=np.int64),
        "prompt_index": ("token", owner),
        "position": ("token", position),
        # each token as text (" Pennsylvania", not the vocabulary's "ĠPennsylvania"), as the explorers show them
        "token_str": ("token", np.array(tokenizer.batch_decode([[t] for row in ids for t in row]), dtype=str)),
        "excluded": ("token", excluded),
    }
    for name in PROMPT_COORDS:
        if name in prompts.variables:
            coords[name] = ("token", prompts[name].values[owner])
    return xr.Dataset(coords=coords)


def extract_tokens_to_file(
    path: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: xr.Dataset,
    settings: ExtractSettings,
    attrs: dict[str, Any],
) -> Path:
    """Token-level activations ``activations`` [token, layer, unit] of every real token of every prompt,
    at the one hook of ``settings.hooks`` (``settings.pooling`` and ``keep_sink`` play no part).

    Tokens of prompt i are contiguous and in order (``prompt_index``, ``position``); memory holds
    one window of prompts' tokens. The ``excluded`` coordinate flags each prompt's sink position.
    """
    s = settings
    hook = s.hook
    texts = [str(t) for t in prompts["text"].values]
    if not texts:
        raise ExtractionError("the prompt set is empty")
    layer_ids = resolve_layers(s.hooks[hook], n_layers(model))
    tcoords = token_coords(prompts, tokenizer, s.max_length, s.exclude)
    lengths = np.bincount(tcoords["prompt_index"].values, minlength=len(texts))
    offsets = np.r_[0, np.cumsum(lengths)]
    attrs = {**attrs, "hook": hook, "pooling": "none (token level)", "exclude": s.exclude,
             "pool_excluded": resolve_exclude(s.exclude, tokenizer)}
    window = s.window
    with ActivationWriter(path, tcoords, layer_ids, attrs, dim="token") as writer:
        buf, w0, filled = None, 0, 0
        for idx, per_prompt in iter_tokens(model, tokenizer, texts, replace(s, hooks={hook: layer_ids})):
            w1 = min(w0 + window, len(texts))
            if buf is None:
                writer.create(per_prompt[0].shape[-1])
                buf = np.empty((int(offsets[w1] - offsets[w0]), *per_prompt[0].shape[1:]), dtype=np.float32)
            for i, acts in zip(idx, per_prompt):
                if len(acts) != lengths[i]:
                    raise ExtractionError(f"prompt {i}: {len(acts)} tokens in the batch, {lengths[i]} alone")
                buf[offsets[i] - offsets[w0] : offsets[i + 1] - offsets[w0]] = acts
            filled += len(idx)
            if filled == w1 - w0:
                writer.write_rows(int(offsets[w0]), buf)
                w0, filled, buf = w1, 0, None
    return Path(path)
