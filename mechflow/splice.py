"""Splice a reconstruction into a causal LM's residual stream and measure what the model loses.

The standard SAE metric of SAELens and SAEBench ("loss recovered"): run held-out prompts three ways,
clean, with the residual stream after block ``layer`` replaced by a reconstruction (the SAE's
``decode(encode(h))``), and with it replaced by zeros (ablation), and compare the next-token
cross-entropy::

    loss_recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)

1 means the reconstruction loses nothing the model uses; 0 means it is as bad as deleting the layer's
output. Also the KL divergence of the spliced (and ablated) next-token distribution from the clean
one, per predicted token, in nats. Positions pooling leaves out (the attention-sink first token, see
:func:`mechflow.extract.resolve_exclude`) keep their clean activation, as SAELens keeps a BOS
token: an SAE is not trained on them. Padding is never scored.

Two inputs, one splice: prompts (:func:`splice_losses`, :func:`splice_dataset`), tokenised here, and the
token windows of a text corpus (:func:`splice_token_losses`, :func:`splice_windows`), ids as the windows
file stores them (``-1`` = padding), the sink fixed at position 0 as corpus activations leave it out
(:mod:`mechflow.corpus.activations`), so the splice replaces exactly the rows a corpus-level SAE trains on.
Either way every next-token prediction from a real token to a real token is scored, the one made at the
sink included (its residual stays clean and attention is causal, so that prediction is the clean one: its
KL is 0 and its CE the clean CE; a window of T real tokens gives T - 1 predictions, 1 of them from the sink).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from mechflow.corpus.activations import SINK_POSITION, check_ids
from mechflow.extract import Exclude, ExtractionError, _base_model, pooling_mask, resolve_exclude
from mechflow.hooks import capture_sites

__all__ = ["splice_losses", "splice_dataset", "splice_token_losses", "splice_windows", "held_out_windows",
           "replaced_residual"]

Reconstruct = Callable[[torch.Tensor], torch.Tensor]

#: the float64 log-probabilities [rows, tokens, vocab] of the scoring are made for about this many MiB of rows
#: at a time (a window of 128 tokens over a 49k vocabulary is 48 MiB)
SCORE_MB = 64.0
#: a forward pass of the corpus splice holds at most about this many MiB of float32 logits (clean and spliced are kept
#: together: a batch of 16 windows of 128 tokens over a 49k vocabulary was 2 x 384 MiB, and the job peaked at 2.2 GB)
LOGITS_MB = 96.0
#: what every splice file's ``loss_recovered`` attr says
_DEFINITION = ("(ce_zero - ce_spliced) / (ce_zero - ce_clean); next-token cross-entropy in nats per predicted token, "
               "the residual stream after block `layer` replaced by the reconstruction (spliced) or by zeros (zero) at "
               "every real token but the one pooling leaves out")
_SUMS = ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero")


@contextlib.contextmanager
def replaced_residual(model: torch.nn.Module, layer: int, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, block ``layer``'s output hidden state [batch, tokens, d_model] is ``replace(h)``.

    The forward hook is removed on exit, also when the body raises.
    """
    site = capture_sites(_base_model(model), "resid")[layer]

    def hook(module, args, out):
        if isinstance(out, tuple):
            return (replace(out[0]), *out[1:])
        return replace(out)

    handle = site.module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _next_token_stats(logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor,
                      clean: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row sum of next-token CE over scored positions (and of KL from the distribution of the ``clean``
    logits), in float64, a block of rows at a time (:data:`SCORE_MB`)."""
    n, t, v = logits.shape
    step = max(1, int(SCORE_MB * 2**20) // (8 * max(1, (t - 1) * v)))
    ce_sums, kl_sums = [], []
    for r in range(0, n, step):
        rows = slice(r, r + step)
        logp = torch.log_softmax(logits[rows, :-1].double(), dim=-1)
        ce = -logp.gather(-1, ids[rows, 1:, None])[..., 0]
        ce_sums.append((ce * scored[rows]).sum(1))
        if clean is not None:
            clean_logp = torch.log_softmax(clean[rows, :-1].double(), dim=-1)
            kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
            kl_sums.append((kl * scored[rows]).sum(1))
    return torch.cat(ce_sums), (torch.cat(kl_sums) if clean is not None else None)


def _splice(h: torch.Tensor, keep: torch.Tensor, fn: Reconstruct) -> torch.Tensor:
    """``h`` [batch, tokens, d] with the rows at ``keep`` [batch, tokens] replaced by ``fn`` of them."""
    out = h.clone()
    out[keep] = fn(h[keep]).to(h.dtype)
    return out


def _batch_sums(model: torch.nn.Module, layer: int, reconstruct: Reconstruct, ids: torch.Tensor, mask: torch.Tensor,
                keep: torch.Tensor) -> dict[str, np.ndarray]:
    """One batch [b, tokens] run clean, spliced at ``keep`` and zero-ablated there: per-row sums of CE and KL over the
    predictions of a real token from a real token, and their ``count``."""
    scored = (mask[:, :-1] * mask[:, 1:]).double()
    kwargs = dict(input_ids=ids, attention_mask=mask)
    clean = model(**kwargs).logits
    out = {"ce_clean": _next_token_stats(clean, ids, scored, None)[0]}
    for name, fn in (("spliced", reconstruct), ("zero", torch.zeros_like)):
        with replaced_residual(model, layer, lambda h, fn=fn: _splice(h, keep, fn)):
            logits = model(**kwargs).logits
        out[f"ce_{name}"], out[f"kl_{name}"] = _next_token_stats(logits, ids, scored, clean)
    out["count"] = scored.sum(1)
    return {k: v.cpu().numpy() for k, v in out.items()}


def _summary(sums: dict[str, np.ndarray], what: str) -> dict[str, Any]:
    """The means per predicted token of the per-row ``sums`` and loss recovered."""
    total = sums["count"].sum()
    if total == 0:
        raise ExtractionError(f"no next-token predictions to score (every {what} has one token)")
    mean = {k: float(sums[k].sum() / total) for k in _SUMS}
    gap = mean["ce_zero"] - mean["ce_clean"]
    return {**mean, "loss_recovered": float((mean["ce_zero"] - mean["ce_spliced"]) / gap) if gap != 0 else float("nan"),
            "n_tokens": int(total)}


def _sums_of(batches: Iterator[tuple[slice, dict[str, np.ndarray]]], n: int) -> dict[str, np.ndarray]:
    """The per-row sums of every batch, each batch ``(rows, sums)``, in one array per quantity [n]."""
    sums = {k: np.zeros(n) for k in (*_SUMS, "count")}
    for rows, batch in batches:
        for k, v in batch.items():
            sums[k][rows] = v
    return sums


@torch.inference_mode()
def splice_losses(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layer: int,
    reconstruct: Reconstruct,
    batch_size: int = 32,
    max_length: int = 64,
    exclude: Exclude = "auto",
) -> dict[str, Any]:
    """Next-token cross-entropy of ``texts`` clean, with block ``layer``'s residual output spliced through
    ``reconstruct`` ([n, d_model] -> [n, d_model], applied to real, non-excluded tokens), and zero-ablated.

    Returns floats ``ce_clean``, ``ce_spliced``, ``ce_zero`` (nats per predicted token), ``loss_recovered``,
    ``kl_spliced``, ``kl_zero`` (mean nats per predicted token), ``n_tokens`` (predictions scored) and
    per-prompt arrays ``[n_prompts]`` under ``per_prompt`` (sums and counts), so a caller can bootstrap.
    """
    if not texts:
        raise ExtractionError("no prompts to score")
    excluded = resolve_exclude(exclude, tokenizer)
    device = next(model.parameters()).device
    model.eval()

    def batches():
        for start in range(0, len(texts), batch_size):
            batch = [str(t) for t in texts[start : start + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
            mask = enc["attention_mask"]
            keep = pooling_mask(mask, excluded).bool()  # positions spliced: real tokens less the sink
            yield slice(start, start + len(batch)), _batch_sums(model, layer, reconstruct, enc["input_ids"], mask, keep)

    sums = _sums_of(batches(), len(texts))
    return {**_summary(sums, "prompt"), "pool_excluded": excluded, "per_prompt": sums}


@torch.inference_mode()
def splice_token_losses(
    model: torch.nn.Module,
    tokens: np.ndarray,
    layer: int,
    reconstruct: Reconstruct,
    batch_size: int = 16,
) -> dict[str, Any]:
    """:func:`splice_losses` of token windows: ``tokens`` [n, T] ids as a windows file stores them (ids >= 0, then
    ``-1`` padding; :mod:`mechflow.corpus`), fed as stored (padding id 0 under ``attention_mask`` 0), ``batch_size``
    windows a forward pass (fewer where their logits would pass :data:`LOGITS_MB`) cut to the longest of them. The
    reconstruction replaces every real token but position 0, the sink corpus activations leave out (the rows a
    corpus-level SAE trains on); position 0 keeps its clean activation. Returns the floats of :func:`splice_losses`
    and per-window sums and counts under ``per_window``.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ExtractionError(f"no windows to score: tokens must be [window, position] with a window, got {tokens.shape}")
    lengths = (tokens >= 0).sum(1)
    check_ids(tokens, lengths, np.arange(len(tokens)))
    device = next(model.parameters()).device
    model.eval()
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    per_window = 4 * tokens.shape[1] * max(vocab, 1)
    batch_size = max(1, min(int(batch_size), int(LOGITS_MB * 2**20) // per_window))  # the logits, not the model, bound it

    def batches():
        for start in range(0, len(tokens), batch_size):
            ids = torch.from_numpy(tokens[start : start + batch_size, : max(1, int(lengths[start : start + batch_size].max()))]
                                   .astype(np.int64))
            mask = (ids >= 0).long()
            keep = mask.bool()
            keep[:, SINK_POSITION] = False
            yield (slice(start, start + len(ids)),
                   _batch_sums(model, layer, reconstruct, ids.clamp_min(0).to(device), mask.to(device), keep.to(device)))

    sums = _sums_of(batches(), len(tokens))
    return {**_summary(sums, "window"), "pool_excluded": "first", "per_window": sums}


def _as_dataset(res: dict[str, Any], per: dict[str, np.ndarray], dim: str, coords: dict, layer: int, attrs: dict[str, Any]):
    """A splice result as splice.nc: the scalars, ``n_predictions``, the per-row sums ``<quantity>_sum`` and
    ``n_scored`` on ``dim``, ``coords``, attrs ``layer``, ``pool_excluded`` and the definition of loss recovered."""
    import xarray as xr

    scalars = {k: ((), res[k]) for k in ("ce_clean", "ce_spliced", "ce_zero", "loss_recovered", "kl_spliced", "kl_zero")}
    rows = {f"{k}_sum": (dim, per[k]) for k in _SUMS}
    return xr.Dataset(
        {**scalars, "n_predictions": ((), res["n_tokens"]), **rows, "n_scored": (dim, per["count"])},
        coords=coords,
        attrs={**(attrs or {}), "layer": int(layer), "pool_excluded": res["pool_excluded"], "loss_recovered": _DEFINITION},
    )


def splice_dataset(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Any,
    layer: int,
    reconstruct: Reconstruct,
    batch_size: int = 32,
    max_length: int = 64,
    exclude: Exclude = "auto",
    attrs: dict[str, Any] | None = None,
):
    """:func:`splice_losses` of a prompt set (an xarray Dataset with ``text`` on dim ``prompt``) as a Dataset:
    scalars ``ce_clean``, ``ce_spliced``, ``ce_zero``, ``loss_recovered``, ``kl_spliced``, ``kl_zero`` (nats
    per predicted token), ``n_predictions``; per prompt ``[prompt]`` the CE / KL sums and ``n_scored``."""
    texts = [str(t) for t in prompts["text"].values]
    res = splice_losses(model, tokenizer, texts, layer, reconstruct, batch_size, max_length, exclude)
    coords = {name: var for name, var in prompts.coords.items() if var.dims == ("prompt",) or name == "prompt"}
    return _as_dataset(res, res["per_prompt"], "prompt", coords, layer, attrs or {})


def held_out_windows(windows: Any, max_windows: int, seed: int = 0) -> np.ndarray:
    """Indices (in the windows file, ascending) of the held-out windows a corpus splice scores: all of them, or a
    sample of ``max_windows`` drawn without replacement by ``numpy.random.default_rng(seed)`` (as the prompt splice
    draws its prompts). ValueError when the file has no held-out window or ``max_windows`` < 1."""
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    rows = np.flatnonzero(np.asarray(windows["split"].values).astype(str) == "held_out")
    if rows.size == 0:
        raise ValueError("the windows file has no held-out window (datasets.<corpus>.held_out is 0 or too small)")
    if rows.size > max_windows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_windows, replace=False))
    return rows


def splice_windows(
    model: torch.nn.Module,
    windows: Any,
    layer: int,
    reconstruct: Reconstruct,
    batch_size: int = 16,
    max_windows: int = 64,
    seed: int = 0,
    attrs: dict[str, Any] | None = None,
):
    """:func:`splice_token_losses` of the held-out windows of a corpus windows file (:mod:`mechflow.corpus`; at most
    ``max_windows``, :func:`held_out_windows`) as a Dataset with splice.nc's variables, per window on dim ``window``
    (coords ``window``: the index in the windows file, ``document``, ``length``), attrs ``split`` (``held_out``),
    ``source`` (``corpus``), ``corpus`` (the windows file's ``dataset`` unless ``attrs`` names it),
    ``n_held_out_windows``, ``windows_selected`` and the caller's ``attrs``."""
    sink = int(windows.attrs.get("sink_position", SINK_POSITION))
    if sink != SINK_POSITION:
        raise ValueError(f"the windows file has sink_position {sink}; the corpus splice keeps position {SINK_POSITION} clean")
    rows = held_out_windows(windows, max_windows, seed)
    n_held = int((np.asarray(windows["split"].values).astype(str) == "held_out").sum())
    picked = windows.isel(window=rows)
    res = splice_token_losses(model, np.asarray(picked["tokens"].values), layer, reconstruct, batch_size)
    coords = {"window": ("window", rows.astype(np.int64)), "length": ("window", np.asarray(picked["length"].values))}
    if "document" in picked.coords:
        coords["document"] = ("window", np.asarray(picked["document"].values))
    how = ("every held-out window" if rows.size == n_held else
           f"a sample of {rows.size} of the {n_held} held-out windows (numpy default_rng({seed}), in file order)")
    return _as_dataset(res, res["per_window"], "window", coords, layer, {
        "corpus": str(windows.attrs.get("dataset", "")), **(attrs or {}), "split": "held_out", "source": "corpus",
        "n_held_out_windows": n_held, "windows_selected": how, "sink_position": SINK_POSITION})
