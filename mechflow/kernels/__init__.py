"""Fused sparse kernels with a dispatch layer.

On CUDA tensors the Triton kernels run (where Triton is installed); on CPU the exact PyTorch
reference in :mod:`mechflow.kernels.reference` runs. ``TRITON_INTERPRET=1`` (set before the kernels are
first used) plus ``set_backend("triton")`` runs the Triton kernels themselves on CPU tensors, for tests.

Public dispatchers (same signatures and semantics as the ``*_ref`` functions, differentiable on every
backend):

* ``topk_encode(x, W_enc, b_enc, k) -> (values, indices)`` [..., k]
* ``topk_encode_masked(x, W_enc, b_enc, k, mask) -> (values, indices)``: top-k over latents where
  ``mask`` [n_features] is True (AuxK over dead latents)
* ``sparse_decode(values, indices, W_dec, b_dec) -> [..., d_in]``
* ``snmf_update_g(P, Q, G, eps=1e-12) -> G_new`` [n, K]

Backend control: ``set_backend("auto"|"reference"|"triton")``, ``get_backend()``, the context manager
``use_backend(name)``, and ``backend_for(tensor) -> "triton" | "reference"``.
"""

from __future__ import annotations

import torch

from mechflow.kernels._dispatch import (
    BACKENDS,
    backend_for,
    get_backend,
    interpreter_active,
    set_backend,
    triton_available,
    use_backend,
)
from mechflow.kernels.limits import MAX_TRITON_K
from mechflow.kernels.reference import (
    snmf_update_g_ref,
    sparse_decode_ref,
    topk_encode_masked_ref,
    topk_encode_ref,
)

_MAX_TRITON_K = MAX_TRITON_K  # larger k keeps a running buffer too big for registers: the reference runs instead


def _check_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int) -> None:
    if x.dim() < 1 or W_enc.dim() != 2 or b_enc.dim() != 1:
        raise ValueError(
            f"expected x [..., d_in], W_enc [d_in, n_features], b_enc [n_features]; got shapes "
            f"{tuple(x.shape)}, {tuple(W_enc.shape)}, {tuple(b_enc.shape)}"
        )
    if x.shape[-1] != W_enc.shape[0] or b_enc.shape[0] != W_enc.shape[1]:
        raise ValueError(
            f"shape mismatch: x [..., {x.shape[-1]}], W_enc {tuple(W_enc.shape)}, b_enc {tuple(b_enc.shape)}; "
            "expected x [..., d_in], W_enc [d_in, n_features], b_enc [n_features]"
        )
    if not isinstance(k, int) or not 1 <= k <= W_enc.shape[1]:
        raise ValueError(f"k must be an int in [1, n_features={W_enc.shape[1]}], got {k!r}")


def _encode_triton(x, W_enc, b_enc, k, mask, n_chunks):
    from mechflow.kernels._autograd import TopKEncode

    dtype = torch.promote_types(torch.promote_types(x.dtype, W_enc.dtype), b_enc.dtype)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(dtype)
    values, indices = TopKEncode.apply(x2, W_enc.to(dtype), b_enc.to(dtype), k, mask, n_chunks)
    return values.reshape(*lead, k), indices.reshape(*lead, k)


def _use_triton_encode(x: torch.Tensor, k: int) -> bool:
    return backend_for(x) == "triton" and k <= _MAX_TRITON_K and x.numel() > 0


def topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *, n_chunks: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the pre-activations ``x @ W_enc + b_enc``, then ReLU. Returns (values, indices) [..., k].

    The Triton path never writes the dense [batch, n_features] pre-activations; order within the k is
    descending by value with ties broken towards the lower feature index (the reference's order is
    unspecified). ``n_chunks`` (Triton only) sets how many feature chunks run in parallel per row block.
    """
    _check_encode(x, W_enc, b_enc, k)
    if _use_triton_encode(x, k):
        return _encode_triton(x, W_enc, b_enc, k, None, n_chunks)
    return topk_encode_ref(x, W_enc, b_enc, k)


def topk_encode_masked(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, mask: torch.Tensor,
    *, n_chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (then ReLU) over only the latents where ``mask`` [n_features] (bool) is True, e.g. AuxK on
    dead latents. ``k`` must be in [1, mask.sum()]. Returns (values, indices) [..., k] (full-range indices)."""
    _check_encode(x, W_enc, b_enc, k)
    if mask.shape != (W_enc.shape[1],):
        raise ValueError(f"mask must have shape [n_features={W_enc.shape[1]}], got {tuple(mask.shape)}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    n_allowed = int(mask.sum())
    if k > n_allowed:
        raise ValueError(f"k={k} exceeds the number of latents allowed by mask ({n_allowed})")
    if _use_triton_encode(x, k):
        return _encode_triton(x, W_enc, b_enc, k, mask, n_chunks)
    return topk_encode_masked_ref(x, W_enc, b_enc, k, mask)


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """Reconstruction ``sum_j values[..., j] * W_dec[indices[..., j]] + b_dec`` [..., d_in]: O(batch * k * d)."""
    if values.shape != indices.shape or values.dim() < 1 or W_dec.dim() != 2 or b_dec.shape != (W_dec.shape[1],):
        raise ValueError(
            f"expected values/indices [..., k] (same shape), W_dec [n_features, d_in], b_dec [d_in]; got "
            f"{tuple(values.shape)}, {tuple(indices.shape)}, {tuple(W_dec.shape)}, {tuple(b_dec.shape)}"
        )
    if backend_for(values) == "triton" and values.numel() > 0:
        from mechflow.kernels._autograd import SparseDecode

        dtype = torch.promote_types(torch.promote_types(values.dtype, W_dec.dtype), b_dec.dtype)
        lead, k = values.shape[:-1], values.shape[-1]
        out = SparseDecode.apply(
            values.reshape(-1, k).to(dtype), indices.reshape(-1, k).to(torch.int64), W_dec.to(dtype), b_dec.to(dtype)
        )
        return out.reshape(*lead, W_dec.shape[1])
    return sparse_decode_ref(values, indices, W_dec, b_dec)


def snmf_update_g(P: torch.Tensor, Q: torch.Tensor, G: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Semi-NMF multiplicative update G <- G * sqrt((P+ + G Q-) / (P- + G Q+ + eps)); P, G [n, K], Q [K, K].

    The Triton path fuses both products with the sign split: no [n, K] intermediate is written.
    """
    if P.dim() != 2 or G.shape != P.shape or Q.shape != (P.shape[1], P.shape[1]):
        raise ValueError(
            f"expected P [n, K], Q [K, K], G [n, K]; got {tuple(P.shape)}, {tuple(Q.shape)}, {tuple(G.shape)}"
        )
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (P, Q, G))
    if backend_for(G) == "triton" and G.numel() > 0 and not needs_graph:  # the update has no backward
        from mechflow.kernels import _triton_kernels as tk

        dtype = torch.promote_types(torch.promote_types(P.dtype, Q.dtype), G.dtype)
        return tk.snmf_update(P.to(dtype), Q.to(dtype), G.to(dtype), eps)
    return snmf_update_g_ref(P, Q, G, eps)


__all__ = [
    "BACKENDS",
    "backend_for",
    "get_backend",
    "interpreter_active",
    "set_backend",
    "snmf_update_g",
    "snmf_update_g_ref",
    "sparse_decode",
    "sparse_decode_ref",
    "topk_encode",
    "topk_encode_masked",
    "topk_encode_masked_ref",
    "topk_encode_ref",
    "triton_available",
    "use_backend",
]
