"""Capture activations with forward hooks: one forward pass per batch of prompts records every selected
(hook, layer), then pooled per prompt (:func:`iter_pooled_hooks`, :func:`iter_pooled`) or kept per real
token (:func:`iter_tokens`).

Prompts are tokenised in batches (sorted by length within a window, to limit padding); the pass stops
at the deepest layer needed, and runs the transformer without its LM head.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mechflow.extract.pooling import log_position_norms, pool, resolve_exclude, resolve_layers, sink_rows
from mechflow.extract.settings import POOLINGS, Exclude, ExtractionError, ExtractSettings, Pooling
from mechflow.hooks import capture_sites, n_layers

log = logging.getLogger("mechflow.extract")


class _StopForward(Exception):
    """Raised by the hook of the deepest needed layer: later layers need not run."""


@dataclass
class _Recorder:
    """Forward hooks that keep each selected (hook, layer)'s activations of the current batch.

    ``hook_layers``: hook name -> layer indices. With ``stop_early``, the forward pass stops as soon
    as every (hook, layer) was captured: later layers need not run.
    """

    hook_layers: dict[str, list[int]]
    stop_early: bool

    def __post_init__(self) -> None:
        self.store: dict[tuple[str, int], torch.Tensor] = {}
        self.handles: list[Any] = []
        self.total = sum(len(v) for v in self.hook_layers.values())

    def attach(self, model: torch.nn.Module) -> None:
        for hook, layers in self.hook_layers.items():
            sites = capture_sites(model, hook)
            for layer in layers:
                site = sites[layer]

                def keep(tensor: Any, key: tuple[str, int] = (hook, layer)) -> None:
                    self.store[key] = tensor[0] if isinstance(tensor, tuple) else tensor
                    if self.stop_early and len(self.store) == self.total:
                        raise _StopForward

                if site.what == "output":
                    h = site.module.register_forward_hook(lambda mod, args, out, keep=keep: keep(out))
                else:
                    h = site.module.register_forward_pre_hook(lambda mod, args, keep=keep: keep(args[0]))
                self.handles.append(h)

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer without its LM head (we never need logits for extraction)."""
    prefix = getattr(model, "base_model_prefix", None)
    inner = getattr(model, prefix, None) if prefix else None
    return inner if isinstance(inner, torch.nn.Module) else model


def _accepts_use_cache(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "use_cache", False))


@contextlib.contextmanager
def capturing(model: torch.nn.Module, hook_layers: dict[str, list[int]]
              ) -> Iterator[Callable[[Mapping[str, torch.Tensor]], dict[tuple[str, int], torch.Tensor]]]:
    """Forward hooks on ``model``'s transformer (its LM head never runs) for every (hook, layer) of
    ``hook_layers``; yields ``capture(inputs)``, which runs one forward pass on ``inputs`` (``input_ids``,
    ``attention_mask``, ...), stopped after the deepest block needed, and returns {(hook, layer):
    activations [batch, tokens, units]} (one dict, refilled by each call). ExtractionError when a hook
    captured nothing. The hooks are removed on exit. Call it under ``torch.inference_mode``.
    """
    base = _base_model(model)
    recorder = _Recorder(hook_layers, stop_early=True)
    wanted = [(h, layer) for h, layers in hook_layers.items() for layer in layers]
    use_cache = _accepts_use_cache(base)

    def capture(inputs: Mapping[str, torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
        recorder.store.clear()
        try:
            base(**inputs, use_cache=False) if use_cache else base(**inputs)
        except _StopForward:
            pass
        missing = [key for key in wanted if key not in recorder.store]
        if missing:
            hooks = sorted({h for h, _ in missing})
            raise ExtractionError(f"hook(s) {hooks} captured nothing at layers {sorted({la for _, la in missing})}")
        return recorder.store

    recorder.attach(base)
    try:
        yield capture
    finally:
        recorder.detach()


@torch.inference_mode()
def _iter_captures(model, tokenizer, texts: Sequence[str], hook_layers: dict[str, list[int]], batch_size: int,
                   max_length: int, progress: bool, window: int, lengths: np.ndarray):
    """Yield (prompt indices [b], attention mask [b, tokens], {(hook, layer): activations [b, tokens, units]}).

    One forward pass per batch captures every hook and layer of ``hook_layers``. Prompts are taken in
    windows of ``window`` consecutive prompts; within a window, batches are formed from prompts
    sorted by token length (less padding), and no batch spans two windows.
    """
    if batch_size < 1 or window < 1:
        raise ExtractionError("batch_size and window must be >= 1")
    device = next(model.parameters()).device
    with capturing(model, hook_layers) as capture:
        bar = tqdm(total=len(texts), desc=f"extract {'+'.join(hook_layers)}", unit="prompt", disable=not progress,
                   mininterval=2.0)
        for w0 in range(0, len(texts), window):
            order = w0 + np.argsort(lengths[w0 : w0 + window], kind="stable")
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                max_length=max_length).to(device)
                yield idx, enc["attention_mask"], capture(enc)
                bar.update(len(idx))
        bar.close()


def _token_lengths(tokenizer, texts: Sequence[str], max_length: int, warn: bool = True) -> tuple[np.ndarray, list[list[int]]]:
    """Tokens per prompt [n_prompts] after truncation to ``max_length``, and the token ids; logs how many
    were cut (``warn``: once per extraction, by the loop that runs the model)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    at_limit = np.flatnonzero(lengths >= max_length) if warn else np.zeros(0, dtype=np.int64)
    if at_limit.size:
        full = np.array([len(i) for i in tokenizer([texts[i] for i in at_limit], truncation=False)["input_ids"]])
        cut = at_limit[full > max_length]
        if cut.size:
            longest = int(full.max())
            log.warning("%d of %d prompts are longer than extract.max_length = %d tokens and were truncated (longest: %d "
                        "tokens, e.g. %r); raise extract.max_length to keep them whole", cut.size, len(texts), max_length,
                        longest, str(texts[int(cut[0])])[:80])
    return lengths, ids


def iter_pooled_hooks(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], settings: ExtractSettings):
    """Yield (prompt indices [b], {hook: pooled [b, n_layers_of_hook, units]}, {hook: sink or None}) from
    one forward pass per batch for every hook of ``settings.hooks`` (hook -> ``"all"`` or layer indices).

    Batches never span two windows of ``settings.window`` consecutive prompts, so a consumer can buffer one
    window and write it as one contiguous block. Indices refer to ``texts``. ``settings.exclude``: see
    :func:`resolve_exclude`. The first batch's per-position norms are logged (a sink shows there).
    ``settings.keep_sink``: the sink arrays [b, n_layers_of_hook, units] hold the activation at the position
    pooling left out (NaN for prompts where nothing was left out), so the pooling with it can be
    rebuilt exactly (:func:`mechflow.sink.with_sink`); else None.
    """
    s = settings
    if s.pooling not in POOLINGS:
        raise ExtractionError(f"unknown pooling {s.pooling!r}; choose one of {POOLINGS}")
    if not s.hooks:
        raise ExtractionError("no hooks to extract")
    total = n_layers(model)
    ids = {hook: resolve_layers(layers, total) for hook, layers in s.hooks.items()}
    excluded = resolve_exclude(s.exclude, tokenizer)
    lengths, _ = _token_lengths(tokenizer, texts, s.max_length)
    first_batch = True
    for idx, mask, store in _iter_captures(model, tokenizer, texts, ids, s.batch_size, s.max_length, s.progress, s.window,
                                           lengths):
        pooled, sinks = {}, {}
        for hook, layer_ids in ids.items():
            acts = {layer: store[hook, layer] for layer in layer_ids}
            if first_batch:
                log_position_norms(acts, mask, layer_ids, hook, excluded)
            pooled[hook] = torch.stack([pool(acts[layer], mask, s.pooling, excluded) for layer in layer_ids], 1).float().cpu().numpy()
            sinks[hook] = sink_rows(acts, mask, layer_ids, excluded) if s.keep_sink else None
        first_batch = False
        yield idx, pooled, sinks


def iter_pooled(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    hook: str = "resid",
    layers: str | Sequence[int] = "all",
    pooling: Pooling = "mean",
    batch_size: int = 32,
    max_length: int = 64,
    progress: bool = True,
    window: int = 1024,
    exclude: Exclude = "auto",
    keep_sink: bool = False,
):
    """Yield (prompt indices [b], pooled activations [b, n_layers_selected, units] float32 numpy) of one
    hook (:func:`iter_pooled_hooks` for several in one pass); with ``keep_sink``, (indices, pooled, sink)."""
    settings = ExtractSettings({hook: layers}, pooling, exclude, keep_sink, batch_size, max_length, window, progress)
    for idx, pooled, sinks in iter_pooled_hooks(model, tokenizer, texts, settings):
        if keep_sink:
            yield idx, pooled[hook], sinks[hook]
        else:
            yield idx, pooled[hook]


def iter_tokens(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], settings: ExtractSettings):
    """Yield (prompt indices [b], per-prompt token activations: list of [tokens_i, n_layers, units] float32) of the
    one hook of token-level ``settings`` (its pooling is not used).

    Only real tokens (attention mask 1) are kept, in their order, whatever the padding side.
    """
    s, hook = settings, settings.hook
    layer_ids = resolve_layers(s.hooks[hook], n_layers(model))
    lengths, _ = _token_lengths(tokenizer, texts, s.max_length)
    for idx, mask, store in _iter_captures(model, tokenizer, texts, {hook: layer_ids}, s.batch_size, s.max_length,
                                           s.progress, s.window, lengths):
        stacked = torch.stack([store[hook, layer] for layer in layer_ids], 2).float().cpu().numpy()  # [b, T, L, U]
        keep = mask.bool().cpu().numpy()
        yield idx, [stacked[i][keep[i]] for i in range(len(idx))]
