"""Fused sparse kernels with a dispatch layer.

On CUDA tensors the Triton kernels run (where Triton is installed); on CPU the exact PyTorch
reference in :mod:`mechflow.kernels.reference` runs. ``TRITON_INTERPRET=1`` (set before import)
runs the Triton kernels themselves on CPU for tests.
"""

from mechflow.kernels.reference import snmf_update_g_ref, sparse_decode_ref, topk_encode_ref

# Public dispatchers (Triton paths are added by mechflow.kernels.triton_*; until then: reference).
topk_encode = topk_encode_ref
sparse_decode = sparse_decode_ref
snmf_update_g = snmf_update_g_ref

__all__ = ["topk_encode", "sparse_decode", "snmf_update_g", "topk_encode_ref", "sparse_decode_ref", "snmf_update_g_ref"]
