"""Decoder directions: nearest features by cosine, and the tokens a direction promotes and suppresses.

A feature's direction at a hook is carried to the residual stream (``resid``, ``attn_out``: as it is;
``mlp_hidden``: through the MLP's down projection; ``attn_z``, the heads' outputs before the attention output
projection: through that projection, ``W_O d`` with W_O [d_model, n_heads * d_head] of
:func:`mechflow.hooks.output_projection`) and read by the model's unembedding as the logit lens reads a residual
(:mod:`mechflow.lens.unembed`), with the final norm as a direction sees it: its per-channel scale (``norm.weight``),
after centring for a LayerNorm; the norm's division by the RMS only rescales every logit of one direction alike,
and its bias (like the projections' biases) is the same for every feature, so both are left out (as
sae-dashboard / Neuronpedia compute ``W_U (gamma * d)``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["nearest", "to_residual", "direction_logits", "logit_tokens"]


def nearest(directions: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` features with the largest decoder cosine to each feature (itself left out).

    directions [feature, d] -> (index [feature, k] int64, cosine [feature, k] float32), largest first.
    """
    d = torch.as_tensor(np.asarray(directions, dtype=np.float32))
    n = d.shape[0]
    k = min(k, n - 1)
    unit = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    idx = np.zeros((n, max(k, 0)), dtype=np.int64)
    cos = np.zeros((n, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return idx, cos
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        sim = unit[lo:hi] @ unit.T
        sim[torch.arange(hi - lo), torch.arange(lo, hi)] = -float("inf")
        v, i = sim.topk(k, dim=1)
        idx[lo:hi], cos[lo:hi] = i.numpy(), v.numpy()
    return idx, cos


def to_residual(model: torch.nn.Module, hook: str, layer: int, directions: torch.Tensor) -> torch.Tensor:
    """Directions [n, d_hook] at ``hook`` of block ``layer`` -> [n, d_model] in the residual stream."""
    from mechflow.extract import _base_model
    from mechflow.hooks import capture_sites

    if hook in ("resid", "attn_out"):
        return directions
    if hook == "attn_z":
        from mechflow.hooks import output_projection

        w_o, _ = output_projection(_base_model(model), layer)                 # [d_model, n_heads * d_head]
        if directions.shape[-1] != w_o.shape[1]:
            raise ValueError(f"attn_z directions have {directions.shape[-1]} units, block {layer}'s output projection "
                             f"reads {w_o.shape[1]}")
        return directions @ w_o.detach().to(directions.dtype).T             # biases left out, as for mlp_hidden
    site = capture_sites(_base_model(model), hook)[layer]
    if hook == "mlp_hidden" and site.what == "input":
        w = site.module.weight.detach().float()
        if isinstance(site.module, torch.nn.Linear):  # out = x W^T: [d_model, d_mlp]
            return directions @ w.T
        return directions @ w  # GPT-2 Conv1D: out = x W, [d_mlp, d_model]
    raise ValueError(f"cannot carry directions at hook {hook!r} to the residual stream")


def direction_logits(unembed, directions: torch.Tensor) -> torch.Tensor:
    """Residual directions [n, d_model] -> direct logit effects [n, vocab] (``unembed``:
    :class:`mechflow.lens.unembed.Unembedding`)."""
    x = directions.to(unembed.weight.dtype)
    if isinstance(unembed.norm, torch.nn.LayerNorm):
        x = x - x.mean(dim=-1, keepdim=True)
    gamma = getattr(unembed.norm, "weight", None)
    if isinstance(gamma, torch.Tensor):
        x = x * gamma.detach().to(x.dtype)
    return x @ unembed.weight.T


@torch.no_grad()
def logit_tokens(unembed, resid: torch.Tensor, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` most promoted and most suppressed token ids of each residual direction [n, d_model]:
    (up_ids, up_logits, down_ids, down_logits), each [n, k], most extreme first."""
    n = resid.shape[0]
    k = min(k, unembed.vocab_size)
    out = [np.zeros((n, k), dtype=t) for t in (np.int64, np.float32, np.int64, np.float32)]
    for lo in range(0, n, block):
        z = direction_logits(unembed, resid[lo:lo + block])
        up, down = z.topk(k, dim=1), (-z).topk(k, dim=1)
        out[0][lo:lo + block], out[1][lo:lo + block] = up.indices.numpy(), up.values.numpy()
        out[2][lo:lo + block], out[3][lo:lo + block] = down.indices.numpy(), -down.values.numpy()
    return out[0], out[1], out[2], out[3]
