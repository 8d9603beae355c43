"""How a semi-NMF fit runs (:class:`SNMFRuntime`): where, at what precision, with which G-update kernel,
on how many threads, whether A stays in memory, who hears of each iteration. What is fitted is the
run config, :class:`mechflow.snmf.config.SNMFRunConfig`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class SNMFRuntime:
    """How :func:`mechflow.snmf.fit` runs; the defaults are the library's.

    device: where the fit runs: None (default) where A lives (numpy and DataArrays: the CPU); 'auto'
        (CUDA when torch sees a GPU, else the CPU; the workflow's ``snmf.device``), 'cpu', 'cuda', 'cuda:N'.
    dtype: float64 by default on CPU, float32 on CUDA.
    backend: kernel backend of the G update: None follows mechflow.kernels' process-wide setting
        (default 'auto': Triton on CUDA, PyTorch reference on CPU); or 'auto', 'reference', 'triton'.
    num_threads: intra-op threads of the fit (default 1). The products along the sample axis then run
        as fixed row blocks spread over the caller's ``torch.get_num_threads()`` threads
        (:class:`mechflow.kernels.threads.RowBlockMatmul`), so the results are bit-identical whatever
        the caller's setting, yet use its threads. None: the caller's setting as it is, plain
        products (the results may then depend on the thread count).
    in_memory: keep A in memory as float64 (or ``dtype``) sample blocks (:mod:`mechflow.snmf.blocks`).
        False re-reads each block at every pass instead: with a DataArray opened lazily from a file,
        the fit then holds one block of A (``SNMF_BLOCK_MB`` MiB) however many samples it has, and
        its result is bit-identical to the in-memory fit (same blocks, same arithmetic).
    callback: called as ``callback(iteration, loss)`` after every iteration.
    """

    device: str | torch.device | None = None
    dtype: torch.dtype | None = None
    backend: str | None = None
    num_threads: int | None = 1
    in_memory: bool = True
    callback: Callable[[int, float], None] | None = None


#: the keyword arguments of :func:`mechflow.snmf.fit` that build an :class:`SNMFRuntime`
RUNTIME_KEYS: frozenset[str] = frozenset(f.name for f in fields(SNMFRuntime))
