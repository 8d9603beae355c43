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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from mechflow.extract import Exclude, ExtractionError, _base_model, pooling_mask, resolve_exclude
from mechflow.hooks import capture_sites

__all__ = ["splice_losses", "replaced_residual"]

Reconstruct = Callable[[torch.Tensor], torch.Tensor]


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
                      clean_logp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-prompt sum of next-token CE over scored positions (and of KL to ``clean_logp``)."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    ce = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    ce_sum = (ce * scored).sum(1)
    kl_sum = None
    if clean_logp is not None:
        kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
        kl_sum = (kl * scored).sum(1)
    return ce_sum, kl_sum


def _splice(h: torch.Tensor, keep: torch.Tensor, fn: Reconstruct) -> torch.Tensor:
    """``h`` [batch, tokens, d] with the rows at ``keep`` [batch, tokens] replaced by ``fn`` of them."""
    out = h.clone()
    out[keep] = fn(h[keep]).to(h.dtype)
    return out


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
    n = len(texts)
    sums = {k: np.zeros(n) for k in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero", "count")}
    model.eval()
    for start in range(0, n, batch_size):
        batch = [str(t) for t in texts[start : start + batch_size]]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
        mask = enc["attention_mask"]
        ids = enc["input_ids"]
        keep = pooling_mask(mask, excluded).bool()  # positions spliced: real tokens less the sink
        scored = (mask[:, :-1] * mask[:, 1:]).double()  # predictions of a real token from a real token

        kwargs = dict(input_ids=ids, attention_mask=mask)
        clean = model(**kwargs).logits
        clean_logp = torch.log_softmax(clean[:, :-1].double(), dim=-1)
        ce, _ = _next_token_stats(clean, ids, scored, None)
        sl = slice(start, start + len(batch))
        sums["ce_clean"][sl] = ce.cpu().numpy()
        for name, fn in (("spliced", reconstruct), ("zero", torch.zeros_like)):
            with replaced_residual(model, layer, lambda h, fn=fn, keep=keep: _splice(h, keep, fn)):
                logits = model(**kwargs).logits
            ce, kl = _next_token_stats(logits, ids, scored, clean_logp)
            sums[f"ce_{name}"][sl] = ce.cpu().numpy()
            sums[f"kl_{name}"][sl] = kl.cpu().numpy()
        sums["count"][sl] = scored.sum(1).cpu().numpy()
    total = sums["count"].sum()
    if total == 0:
        raise ExtractionError("no next-token predictions to score (every prompt has one token)")
    mean = {k: float(v.sum() / total) for k, v in sums.items() if k != "count"}
    gap = mean["ce_zero"] - mean["ce_clean"]
    return {
        **mean,
        "loss_recovered": float((mean["ce_zero"] - mean["ce_spliced"]) / gap) if gap != 0 else float("nan"),
        "n_tokens": int(total),
        "pool_excluded": excluded,
        "per_prompt": sums,
    }


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
    import xarray as xr

    texts = [str(t) for t in prompts["text"].values]
    res = splice_losses(model, tokenizer, texts, layer, reconstruct, batch_size, max_length, exclude)
    per = res["per_prompt"]
    scalars = {k: ((), res[k]) for k in ("ce_clean", "ce_spliced", "ce_zero", "loss_recovered", "kl_spliced", "kl_zero")}
    per_prompt = {f"{k}_sum": ("prompt", per[k]) for k in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero")}
    coords = {name: var for name, var in prompts.coords.items() if var.dims == ("prompt",) or name == "prompt"}
    return xr.Dataset(
        {**scalars, "n_predictions": ((), res["n_tokens"]), **per_prompt, "n_scored": ("prompt", per["count"])},
        coords=coords,
        attrs={**(attrs or {}), "layer": int(layer), "pool_excluded": res["pool_excluded"],
               "loss_recovered": "(ce_zero - ce_spliced) / (ce_zero - ce_clean); next-token cross-entropy in nats per "
                                 "predicted token, the residual stream after block `layer` replaced by the reconstruction "
                                 "(spliced) or by zeros (zero) at every real token but the one pooling leaves out"},
    )
