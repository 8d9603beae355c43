"""Exact PyTorch reference implementations of the fused kernels (the CPU path).

Shapes: x [batch, d_in]; W_enc [d_in, n_features]; b_enc [n_features];
W_dec [n_features, d_in]; b_dec [d_in]; values/indices [batch, k].
"""

from __future__ import annotations

import torch


def topk_encode_ref(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the pre-activations ``x @ W_enc + b_enc``, then ReLU. Returns (values, indices) [batch, k].

    ``x`` is expected to be already centred (``x - b_dec``) by the caller.
    """
    pre = x @ W_enc + b_enc
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


def sparse_decode_ref(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """Reconstruction ``sum_j values[..., j] * W_dec[indices[..., j]] + b_dec`` [..., d_in]: O(batch * k * d).

    One ``embedding_bag`` (sum mode, ``values`` as per-sample weights): no [batch, k, d_in] gather
    is formed, and on CPU its backward sorts the indices and lets one thread add up each row of
    ``W_dec``'s gradient in that order, so the gradient is bit-identical run to run and for any
    thread count. (``W_dec[indices]``'s backward, ``index_put_(accumulate=True)``, adds with atomic
    float adds when several threads run: the order, and so the rounding, varies between runs.)
    """
    lead, k = values.shape[:-1], values.shape[-1]
    dtype = torch.promote_types(values.dtype, W_dec.dtype)
    if values.numel() == 0:
        return torch.zeros(*lead, W_dec.shape[1], dtype=dtype, device=W_dec.device) + b_dec
    out = torch.nn.functional.embedding_bag(indices.reshape(-1, k), W_dec.to(dtype),
                                            per_sample_weights=values.reshape(-1, k).to(dtype), mode="sum")
    return out.reshape(*lead, W_dec.shape[1]) + b_dec


def snmf_update_g_ref(P: torch.Tensor, Q: torch.Tensor, G: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Semi-NMF multiplicative update (Ding, Li & Jordan 2010) for G [n, K] >= 0.

    G <- G * sqrt((P+ + G Q-) / (P- + G Q+ + eps)), with P = A^T F [n, K] and Q = F^T F [K, K];
    X+ = max(X, 0), X- = max(-X, 0).
    """
    Pp, Pn = P.clamp(min=0), (-P).clamp(min=0)
    Qp, Qn = Q.clamp(min=0), (-Q).clamp(min=0)
    return G * torch.sqrt((Pp + G @ Qn) / (Pn + G @ Qp + eps))


def topk_encode_masked_ref(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (then ReLU) over the latents where ``mask`` [n_features] (bool) is True, e.g. dead latents for AuxK.

    Latents outside ``mask`` are never selected; ``k`` must not exceed ``mask.sum()``.
    Returns (values, indices) [batch, k], indices into the full latent range.
    """
    pre = x @ W_enc + b_enc
    pre = pre.masked_fill(~mask.to(device=pre.device, dtype=torch.bool), float("-inf"))
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices
