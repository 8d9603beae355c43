"""``torch.autograd.Function`` wrappers tying the Triton forward kernels to their sparse backward kernels.

All backward work is O(batch * k * d): gradients reach only the k selected latents per row.
"""

from __future__ import annotations

import torch

from mechflow.kernels import _triton_kernels as tk


class TopKEncode(torch.autograd.Function):
    """(values, indices) = top-k of relu(x @ W_enc + b_enc); gradients w.r.t. x, W_enc, b_enc."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k, mask, n_chunks):  # type: ignore[override]
        values, indices = tk.topk_encode_fwd(x, W_enc, b_enc, k, mask=mask, n_chunks=n_chunks)
        ctx.save_for_backward(x, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):  # type: ignore[override]
        x, W_enc, values, indices = ctx.saved_tensors
        n_features = W_enc.shape[1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if grad_values is None:
            return None, None, None, None, None, None
        # d relu: gradient passes only where the kept value is positive (as torch's relu backward)
        g = torch.where(values > 0, grad_values, torch.zeros((), dtype=grad_values.dtype, device=grad_values.device))
        grad_x = grad_w = grad_b = None
        if need_x:
            w_t = W_enc.t()  # [F, d]: rows must be contiguous for a coalesced gather
            if w_t.stride(1) != 1:
                w_t = w_t.contiguous()
            grad_x = tk.gather_sum(g, indices, w_t, None, x.dtype)
        if need_w or need_b:
            csr = tk.csr_of(indices, n_features)
            grad_w_t, grad_b = tk.segment_sum(csr, g, x, n_features, W_enc.dtype, with_bias=True)
            grad_w = grad_w_t.t().contiguous() if (need_w and W_enc.is_contiguous()) else grad_w_t.t()
            grad_w = grad_w if need_w else None
            grad_b = grad_b if need_b else None
        return grad_x, grad_w, grad_b, None, None, None


class SparseDecode(torch.autograd.Function):
    """out = sum_j values[:, j] * W_dec[indices[:, j]] + b_dec; gradients w.r.t. values, W_dec, b_dec."""

    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec):  # type: ignore[override]
        out = tk.gather_sum(values, indices, W_dec, b_dec, values.dtype)
        ctx.save_for_backward(values, indices, W_dec)
        ctx.b_dec_dtype = b_dec.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        values, indices, W_dec = ctx.saved_tensors
        need_v, _, need_w, need_b = ctx.needs_input_grad[:4]
        grad_v = grad_w = grad_b = None
        if need_v:
            grad_v = tk.gather_dot(grad_out, indices, W_dec, values.dtype)
        if need_w:
            csr = tk.csr_of(indices, W_dec.shape[0])
            grad_w, _ = tk.segment_sum(csr, values, grad_out, W_dec.shape[0], W_dec.dtype)
        if need_b:
            grad_b = grad_out.sum(0, dtype=torch.float32).to(ctx.b_dec_dtype)
        return grad_v, None, grad_w, grad_b
