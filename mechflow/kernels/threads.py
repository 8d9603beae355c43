"""CPU numerics whose results must not depend on the thread count a job runs with.

With more than one thread, PyTorch's CPU results depend on the thread count: MKL's GEMM splits
the inner dimension among threads once it is large (e.g. ``[256, 2304] @ [2304, 576]`` differs
in the last bits between 1 and 2 threads) and a full reduction (``t.sum()`` over more than 32,768
elements) adds one partial sum per thread. Each is repeatable at a fixed thread count, so a
computation run at a fixed count (:func:`torch_threads`) is bit-identical whatever the caller's
setting; :class:`RowBlockMatmul` then gives large products back the caller's threads, with a
partition that does not depend on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count after.

    ``None`` leaves the current setting alone (results may then depend on it).
    """
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"thread count must be >= 1 or None, got {n!r}")
    before = torch.get_num_threads()
    if before != int(n):
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class RowBlockMatmul:
    """``a @ b`` as fixed row blocks of ``a``, each one single-threaded BLAS call, run on ``workers`` threads.

    The blocks (``block_rows`` rows of ``a`` each) do not depend on ``workers``, and a single-threaded
    product of a given shape is repeatable, so ``a [m, k] @ b [k, n] -> [m, n]`` is bit-identical
    for any worker count: the parallelism of a multi-threaded GEMM without its dependence on the
    thread count. Use it inside ``torch_threads(1)``: each worker sets ``torch.set_num_threads(1)``
    as it starts (MKL's count is per thread). As a context manager it shuts its threads down on
    exit. CUDA tensors, and ``a`` of at most ``block_rows`` rows, take a plain ``a @ b``.
    """

    def __init__(self, workers: int = 1, block_rows: int = 128):
        if int(workers) < 1 or int(block_rows) < 1:
            raise ValueError(f"workers and block_rows must be >= 1, got {workers!r} and {block_rows!r}")
        self.workers, self.block_rows = int(workers), int(block_rows)
        self._pool: ThreadPoolExecutor | None = None
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mechflow-mm",
                                            initializer=torch.set_num_threads, initargs=(1,))

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"expected a [m, k] and b [k, n]; got {tuple(a.shape)} and {tuple(b.shape)}")
        m = a.shape[0]
        if a.device.type != "cpu" or m <= self.block_rows:
            return a @ b
        starts = range(0, m, self.block_rows)

        def block(i: int) -> torch.Tensor:
            return a[i : i + self.block_rows] @ b

        parts = list(self._pool.map(block, starts)) if self._pool is not None else [block(i) for i in starts]
        return torch.cat(parts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> RowBlockMatmul:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
