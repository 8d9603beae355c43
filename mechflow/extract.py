"""Capture activations at a named hook point and pool them per prompt.

Prompts are tokenised in batches (sorted by length to limit padding), run through the model with
forward hooks on the chosen layers, pooled with the attention mask (mean, max or last token), and
streamed batch by batch into the output file, so memory stays bounded by one batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from mechflow.contracts import GATHER_WINDOW_MB, PROMPT_COORDS
from mechflow.hooks import capture_sites, n_layers
from mechflow.io import RowWriter
from mechflow.sink import with_sink  # noqa: F401 (re-exported: rebuilds pooling with the left-out position)

log = logging.getLogger(__name__)

Pooling = Literal["mean", "max", "last"]
POOLINGS: tuple[str, ...] = ("mean", "max", "last")
#: which position mean/max pooling leaves out: ``auto`` is ``bos`` where the tokenizer adds a BOS
#: token, else ``first`` (SmolLM2 adds none: its first token is an attention sink, see README)
Exclude = Literal["auto", "bos", "first", "none"]
EXCLUDES: tuple[str, ...] = ("auto", "bos", "first", "none")


class ExtractionError(ValueError):
    """Extraction settings do not fit the model or prompts."""


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
    base = _base_model(model)
    recorder = _Recorder(hook_layers, stop_early=True)
    recorder.attach(base)
    wanted = [(h, layer) for h, layers in hook_layers.items() for layer in layers]
    try:
        bar = tqdm(total=len(texts), desc=f"extract {'+'.join(hook_layers)}", unit="prompt", disable=not progress,
                   mininterval=2.0)
        for w0 in range(0, len(texts), window):
            order = w0 + np.argsort(lengths[w0 : w0 + window], kind="stable")
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                max_length=max_length).to(device)
                recorder.store.clear()
                try:
                    base(**enc, use_cache=False) if _accepts_use_cache(base) else base(**enc)
                except _StopForward:
                    pass
                missing = [key for key in wanted if key not in recorder.store]
                if missing:
                    hooks = sorted({h for h, _ in missing})
                    raise ExtractionError(f"hook(s) {hooks} captured nothing at layers {sorted({la for _, la in missing})}")
                yield idx, enc["attention_mask"], recorder.store
                bar.update(len(idx))
        bar.close()
    finally:
        recorder.detach()


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


def iter_pooled_hooks(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    hook_layers: dict[str, str | Sequence[int]],
    pooling: Pooling = "mean",
    batch_size: int = 32,
    max_length: int = 64,
    progress: bool = True,
    window: int = 1024,
    exclude: Exclude = "auto",
    keep_sink: bool = False,
):
    """Yield (prompt indices [b], {hook: pooled [b, n_layers_of_hook, units]}, {hook: sink or None}) from
    one forward pass per batch for every hook of ``hook_layers`` (hook -> ``"all"`` or layer indices).

    Batches never span two windows of ``window`` consecutive prompts, so a consumer can buffer one
    window and write it as one contiguous block. Indices refer to ``texts``. ``exclude``: see
    :func:`resolve_exclude`. The first batch's per-position norms are logged (a sink shows there).
    ``keep_sink``: the sink arrays [b, n_layers_of_hook, units] hold the activation at the position
    pooling left out (NaN for prompts where nothing was left out), so the pooling with it can be
    rebuilt exactly (:func:`with_sink`); else None.
    """
    if pooling not in POOLINGS:
        raise ExtractionError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
    if not hook_layers:
        raise ExtractionError("no hooks to extract")
    total = n_layers(model)
    ids = {hook: resolve_layers(layers, total) for hook, layers in hook_layers.items()}
    excluded = resolve_exclude(exclude, tokenizer)
    lengths, _ = _token_lengths(tokenizer, texts, max_length)
    first_batch = True
    for idx, mask, store in _iter_captures(model, tokenizer, texts, ids, batch_size, max_length, progress, window, lengths):
        pooled, sinks = {}, {}
        for hook, layer_ids in ids.items():
            acts = {layer: store[hook, layer] for layer in layer_ids}
            if first_batch:
                log_position_norms(acts, mask, layer_ids, hook, excluded)
            pooled[hook] = torch.stack([pool(acts[layer], mask, pooling, excluded) for layer in layer_ids], 1).float().cpu().numpy()
            sinks[hook] = sink_rows(acts, mask, layer_ids, excluded) if keep_sink else None
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
    for idx, pooled, sinks in iter_pooled_hooks(model, tokenizer, texts, {hook: layers}, pooling, batch_size, max_length,
                                                progress, window, exclude, keep_sink):
        if keep_sink:
            yield idx, pooled[hook], sinks[hook]
        else:
            yield idx, pooled[hook]


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


def iter_tokens(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    hook: str = "resid",
    layers: str | Sequence[int] = "all",
    batch_size: int = 32,
    max_length: int = 64,
    progress: bool = True,
    window: int = 1024,
):
    """Yield (prompt indices [b], per-prompt token activations: list of [tokens_i, n_layers, units] float32).

    Only real tokens (attention mask 1) are kept, in their order, whatever the padding side.
    """
    layer_ids = resolve_layers(layers, n_layers(model))
    lengths, _ = _token_lengths(tokenizer, texts, max_length)
    for idx, mask, store in _iter_captures(model, tokenizer, texts, {hook: layer_ids}, batch_size, max_length, progress,
                                           window, lengths):
        stacked = torch.stack([store[hook, layer] for layer in layer_ids], 2).float().cpu().numpy()  # [b, T, L, U]
        keep = mask.bool().cpu().numpy()
        yield idx, [stacked[i][keep[i]] for i in range(len(idx))]


def _accepts_use_cache(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "use_cache", False))


SINK_DESCRIPTION = ("activation at the position mean/max pooling left out (attrs pool_excluded); NaN where nothing "
                    "was; mechflow.extract.with_sink rebuilds the pooling with it")


class ActivationWriter:
    """Stream pooled activations [prompt, layer, unit] into a netCDF file, atomically
    (:class:`mechflow.io.RowWriter`, created at the first block, when the unit count is known).

    The file is created beside ``path`` under a hidden temporary name with all coordinates, filled
    block by block, and renamed onto ``path`` only on a clean exit. ``keep_sink``: the file also
    holds ``sink`` [prompt, layer, unit] (see :data:`SINK_DESCRIPTION`); ``activations`` stays the
    file's primary variable (:func:`mechflow.io.open_dataarray` reads it).
    """

    def __init__(self, path: str | Path, prompts: xr.Dataset, layers: Sequence[int], attrs: dict[str, Any],
                 dim: str = "prompt", keep_sink: bool = False):
        self.path = Path(path)
        self.keep_sink = keep_sink
        self.prompts = prompts  # the coordinates along ``dim`` (prompts, or tokens for token-level files)
        self.dim = dim
        self.layers = list(layers)
        self.attrs = attrs
        self._rows: RowWriter | None = None

    def __enter__(self) -> ActivationWriter:
        return self

    def create(self, n_units: int) -> None:
        """Create the temporary file with all coordinates and an unfilled ``activations`` variable."""
        if self._rows is not None:
            return
        dim = self.dim
        coords = {
            dim: self.prompts[dim].values,
            "layer": np.asarray(self.layers, dtype=np.int64),
            "unit": np.arange(n_units, dtype=np.int64),
        }
        for name, var in self.prompts.coords.items():
            if name != dim and var.dims == (dim,):
                coords[name] = (dim, var.values)
        variables = {"activations": self.attrs}
        if self.keep_sink:
            variables["sink"] = {"description": SINK_DESCRIPTION}
        n = self.prompts.sizes[dim]
        rows = RowWriter(self.path, xr.Dataset(coords=coords), (dim, "layer", "unit"), variables, self.attrs,
                         chunks=(max(1, min(n, 256)), 1, max(1, n_units)), error=ExtractionError)
        self._rows = rows.__enter__()

    def write_rows(self, start: int, block: np.ndarray, sink: np.ndarray | None = None) -> None:
        """Write prompts ``start .. start + len(block)`` (positions in the prompt set); block [b, n_layers, units]
        (and, for a writer with ``keep_sink``, the left-out positions' activations ``sink``, same shape)."""
        self.create(block.shape[-1])
        if self.keep_sink != (sink is not None):
            raise ExtractionError("sink rows are written exactly when the writer keeps the sink")
        self._rows.write(start, **({"activations": block} | ({"sink": sink} if sink is not None else {})))

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._rows is not None:
            return bool(self._rows.__exit__(exc_type, exc, tb))
        if exc_type is None:
            raise ExtractionError(f"{self.prompts.sizes[self.dim]} {self.dim}s were never written")
        return False


def extract_hooks_to_files(
    paths: dict[str, str | Path],
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: xr.Dataset,
    hook_layers: dict[str, str | Sequence[int]],
    pooling: Pooling,
    batch_size: int,
    max_length: int,
    attrs: dict[str, Any],
    progress: bool = True,
    window: int = 1024,
    exclude: Exclude = "auto",
    keep_sink: bool = False,
) -> dict[str, Path]:
    """Extract pooled activations of several hooks in one forward pass per batch; write each hook's
    ``activations`` [prompt, layer, unit] to ``paths[hook]``.

    ``hook_layers``: hook -> ``"all"`` or layer indices (the same keys as ``paths``). Memory holds one
    window of ``window`` prompts per hook; each window is written as one contiguous block. Attrs
    record ``hook``, ``pooling``, ``exclude`` (as configured), ``pool_excluded`` (``first`` or
    ``none``: what mean/max pooling left out) and ``keep_sink``; the coordinate ``n_tokens`` [prompt]
    holds each prompt's token count after truncation. ``keep_sink`` (only where pooling leaves a
    position out) also writes that position's activation as ``sink``, so the pooling without the
    fix can be rebuilt from the same file (:func:`with_sink`). Every file is written atomically,
    and none is left behind when any fails.
    """
    if set(paths) != set(hook_layers):
        raise ExtractionError(f"paths for hooks {sorted(paths)} but layers for {sorted(hook_layers)}")
    texts = [str(t) for t in prompts["text"].values]
    if not texts:
        raise ExtractionError("the prompt set is empty")
    total = n_layers(model)
    layer_ids = {hook: resolve_layers(layers, total) for hook, layers in hook_layers.items()}
    excluded = resolve_exclude(exclude, tokenizer) if pooling != "last" else "none"
    keep_sink = keep_sink and excluded != "none"
    prompts = prompts.assign_coords(n_tokens=("prompt", _token_lengths(tokenizer, texts, max_length, warn=False)[0]))
    n_win = min(window, len(texts))
    with contextlib.ExitStack() as stack:
        writers = {
            hook: stack.enter_context(ActivationWriter(
                paths[hook], prompts, layer_ids[hook],
                {**attrs, "hook": hook, "pooling": pooling, "exclude": exclude, "pool_excluded": excluded,
                 "keep_sink": int(keep_sink)}, keep_sink=keep_sink))
            for hook in paths
        }
        bufs: dict[str, np.ndarray] = {}
        sbufs: dict[str, np.ndarray] = {}
        w0, filled = 0, 0
        for idx, pooled, sinks in iter_pooled_hooks(model, tokenizer, texts, layer_ids, pooling, batch_size, max_length,
                                                    progress, window=window, exclude=exclude, keep_sink=keep_sink):
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
    return extract_hooks_to_files({hook: path}, model, tokenizer, prompts, {hook: layers}, pooling, batch_size,
                                  max_length, attrs, progress, window, exclude, keep_sink)[hook]


def token_coords(prompts: xr.Dataset, tokenizer: Any, max_length: int, exclude: Exclude = "auto") -> xr.Dataset:
    """Coordinates of a token-level file: dim ``token``; ``prompt_index``, ``position``, ``token_str``,
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
        "token_str": ("token", np.array([t for row in ids for t in tokenizer.convert_ids_to_tokens(row)], dtype=str)),
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
    hook: str,
    layers: str | Sequence[int],
    batch_size: int,
    max_length: int,
    attrs: dict[str, Any],
    progress: bool = True,
    window: int = 1024,
    exclude: Exclude = "auto",
) -> Path:
    """Token-level activations ``activations`` [token, layer, unit] of every real token of every prompt.

    Tokens of prompt i are contiguous and in order (``prompt_index``, ``position``); memory holds
    one window of prompts' tokens. The ``excluded`` coordinate flags each prompt's sink position.
    """
    texts = [str(t) for t in prompts["text"].values]
    if not texts:
        raise ExtractionError("the prompt set is empty")
    layer_ids = resolve_layers(layers, n_layers(model))
    tcoords = token_coords(prompts, tokenizer, max_length, exclude)
    lengths = np.bincount(tcoords["prompt_index"].values, minlength=len(texts))
    offsets = np.r_[0, np.cumsum(lengths)]
    attrs = {**attrs, "hook": hook, "pooling": "none (token level)", "exclude": exclude,
             "pool_excluded": resolve_exclude(exclude, tokenizer)}
    with ActivationWriter(path, tcoords, layer_ids, attrs, dim="token") as writer:
        buf, w0, filled = None, 0, 0
        for idx, per_prompt in iter_tokens(model, tokenizer, texts, hook, layer_ids, batch_size, max_length, progress, window):
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


def gather_shards(shard_paths: Sequence[str | Path], path: str | Path, prompts: xr.Dataset, attrs: dict[str, Any],
                  window_mb: float = GATHER_WINDOW_MB) -> Path:
    """Concatenate shard files (each a contiguous slice of the prompts) into one activations file.

    Each shard is copied in windows of rows of at most ``window_mb`` MiB (activations and sink
    together), so memory is bounded by one window, whatever the size of a shard."""
    from mechflow.io import open_dataset

    extra = {}  # per-prompt coordinates the extraction added (n_tokens), in shard order
    for shard in shard_paths:
        with open_dataset(shard) as ds:
            for name, var in ds.coords.items():
                if var.dims == ("prompt",) and name not in prompts.coords:
                    extra.setdefault(name, []).append(var.values)
    prompts = prompts.assign_coords({name: ("prompt", np.concatenate(parts)) for name, parts in extra.items()
                                     if sum(map(len, parts)) == prompts.sizes["prompt"]})
    layers = None
    with ActivationWriter(path, prompts, [], attrs) as writer:
        for shard in shard_paths:
            with open_dataset(shard) as ds:
                da = ds["activations"]
                if layers is None:
                    layers = da["layer"].values.tolist()
                    writer.layers = layers
                    writer.keep_sink = "sink" in ds
                    writer.attrs = {**{k: v for k, v in ds.attrs.items() if k not in ("created", "shard")}, **attrs}
                elif da["layer"].values.tolist() != layers or ("sink" in ds) != writer.keep_sink:
                    raise ExtractionError(f"shard {shard} has layers {da['layer'].values.tolist()} and "
                                          f"{'a' if 'sink' in ds else 'no'} sink; the first shard had {layers}")
                positions = np.searchsorted(prompts["prompt"].values, da["prompt"].values)
                if not np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))):
                    raise ExtractionError(f"shard {shard} is not a contiguous slice of the prompts")
                row_bytes = 4 * int(np.prod(da.shape[1:])) * (2 if writer.keep_sink else 1)
                window = max(1, int(window_mb * 2**20) // max(1, row_bytes))
                for i in range(0, da.sizes["prompt"], window):
                    rows = slice(i, min(i + window, da.sizes["prompt"]))
                    writer.write_rows(int(positions[0]) + i, da[rows].values,
                                      ds["sink"][rows].values if writer.keep_sink else None)
    return Path(path)


def shard_slice(n: int, shard: int, n_shards: int) -> slice:
    """Contiguous slice of ``n`` prompts for shard ``shard`` (0-based) of ``n_shards``."""
    if not 0 <= shard < n_shards:
        raise ExtractionError(f"shard {shard} out of range for {n_shards} shards")
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    return slice(int(bounds[shard]), int(bounds[shard + 1]))
