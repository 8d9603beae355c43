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
    """Reconstruction ``sum_j values[:, j] * W_dec[indices[:, j]] + b_dec`` [batch, d_in]: O(batch * k * d)."""
    return torch.einsum("bk,bkd->bd", values, W_dec[indices]) + b_dec


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
