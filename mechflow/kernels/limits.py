"""Limits of the fused Triton kernels that the dispatch layer (:mod:`mechflow.kernels`) and the ahead-of-time
compile check (:mod:`mechflow.kernels.aot`) share; torch- and triton-free.

``MAX_TRITON_K``: the largest k the fused TopK kernels take; a larger k runs the PyTorch reference. The kernels keep
a running buffer of the next power of two of k per row in registers: compiled for sm_80 and sm_90 with Triton's
ptxas (``benchmarks/triton_aot.py`` on a CPU-only machine), k <= 16 already uses 255 registers with spills, and
k = 512 or 1024 (SAELens-style AuxK with k_aux = d_in / 2) took 5 to 10 minutes to compile and spilled 21 KB per
thread, so the cap is 256.
"""

MAX_TRITON_K = 256

__all__ = ["MAX_TRITON_K"]
