"""The matrix of a semi-NMF fit, ``A [units, samples]``, as fixed blocks of samples.

Every product of the fit that runs along the samples (``A G``, ``A^T F``, the Gram matrices of the
SVD initialisation, the k-means passes, ``||A||_F``) is computed block by block, in block order.
The blocks are fixed by the data's shape alone (:func:`block_samples`: at most
:data:`mechflow.contracts.SNMF_BLOCK_MB` MiB of float64 columns each), so a fit whose blocks are kept
in memory and one that reads them from disk at every pass (``in_memory=False``: memory bounded by
one block, whatever the number of samples) do the same arithmetic on the same values: their
results are bit-identical, and choosing between them by the memory a job has never changes a result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from mechflow import contracts
from mechflow.snmf.config import SNMFError

#: ``read(start, stop) -> [units, stop - start]`` (numpy or torch): columns of A from wherever it lives
Reader = Callable[[int, int], Any]


def block_samples(n_units: int) -> int:
    """Samples per block for ``n_units`` units: ``SNMF_BLOCK_MB`` MiB of float64 columns (at least 1)."""
    return max(1, int(contracts.SNMF_BLOCK_MB * 2**20) // (8 * max(1, int(n_units))))


class SampleBlocks:
    """``A [units, samples]`` divided by ``||A||_F`` (``scale``), iterated as ``(slice, block [units, b])``.

    read: returns the columns ``start:stop`` of A (numpy or torch, any real dtype), unscaled.
    dtype, device: of every block (contiguous).
    in_memory: keep the scaled blocks after reading them once (``8 * units * samples`` bytes in
        float64); False reads and scales each block again at every pass, holding one at a time.

    Construction reads A once: it checks every value is finite, computes ``scale`` (the Frobenius
    norm of the per-block norms, so one block gives exactly ``torch.linalg.norm(A)``) and, in memory,
    keeps the blocks it read.
    """

    def __init__(self, read: Reader, n_units: int, n_samples: int, dtype: torch.dtype, device: torch.device | str,
                 in_memory: bool = True):
        self._read, self.dtype, self.device = read, dtype, torch.device(device)
        self.shape = (int(n_units), int(n_samples))
        self.in_memory = bool(in_memory)
        self._step = step = block_samples(n_units)
        self.slices = [slice(s, min(s + step, n_samples)) for s in range(0, n_samples, step)]
        norms, bad, kept = [], 0, []
        for sl in self.slices:
            block = self._convert(sl)
            finite = torch.isfinite(block)
            if not bool(finite.all()):
                bad += int(finite.numel() - finite.sum())
            del finite
            norms.append(torch.linalg.norm(block))
            if self.in_memory:
                kept.append(block)
            del block
        if bad:
            raise SNMFError(f"A holds {bad} non-finite values (NaN or inf); clean or drop them before fitting")
        self.scale = float(norms[0] if len(norms) == 1 else torch.linalg.norm(torch.stack(norms)))
        self._kept: list[torch.Tensor] | None = None
        if self.in_memory and self.scale > 0:
            self._kept = [block.div_(self.scale) for block in kept]  # as _convert(...).div_(scale): the same bits

    def _convert(self, sl: slice) -> torch.Tensor:
        block = self._read(sl.start, sl.stop)
        t = block.detach() if isinstance(block, torch.Tensor) else torch.from_numpy(np.asarray(block))
        shape = (self.shape[0], sl.stop - sl.start)
        if tuple(t.shape) != shape:
            raise SNMFError(f"read({sl.start}, {sl.stop}) gave shape {tuple(t.shape)}; expected {shape}")
        # one contiguous copy in the working dtype, whatever the layout read (a [b, units] block's transpose)
        return torch.empty(shape, dtype=self.dtype, device=self.device).copy_(t)

    def block(self, i: int) -> torch.Tensor:
        """Block ``i`` [units, b], scaled."""
        if self._kept is not None:
            return self._kept[i]
        return self._convert(self.slices[i]).div_(self.scale)

    def __iter__(self) -> Iterator[tuple[slice, torch.Tensor]]:
        for i, sl in enumerate(self.slices):
            yield sl, self.block(i)

    def __len__(self) -> int:
        return len(self.slices)

    def find(self, sample: int) -> tuple[int, int]:
        """(block index, position in that block) of a sample."""
        i = int(sample) // self._step
        return i, int(sample) - self.slices[i].start


#: float64 [samples, factors] arrays a fit holds at once: G, its update, ``A^T F`` of a block's rows and
#: the SVD initialisation's ``V S`` (k-means holds [samples] vectors only)
G_COPIES = 3


def working_bytes(n_units: int, n_samples: int, n_factors: int, in_memory: bool) -> int:
    """Bytes a fit holds besides the interpreter: A's blocks (all of them, or one block and the copies
    made reading it), G's copies, and ``n_samples x n_samples`` of the SVD initialisation where there
    are fewer samples than units (:func:`mechflow.snmf.algorithm._gram_eig`)."""
    block = 8 * n_units * min(n_samples, block_samples(n_units))
    held = 8 * n_units * n_samples + block if in_memory else 3 * block
    gram = 8 * min(n_units, n_samples) ** 2
    return held + G_COPIES * 8 * n_samples * n_factors + gram


def keep_in_memory(n_units: int, n_samples: int, n_factors: int, mem_mb: float, in_use_bytes: int,
                   device: Any = "cpu") -> bool:
    """Whether a fit with A in memory fits: on the CPU, ``mem_mb`` (MB = 10^6 bytes) beside
    ``in_use_bytes`` already held; on a CUDA device, 80% of its free memory. Else the fit reads A from
    disk at every pass (the same result, bit for bit; slower)."""
    need = working_bytes(n_units, n_samples, n_factors, True)
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return need <= 0.8 * free
    return in_use_bytes + need <= 0.9 * float(mem_mb) * 1e6


def plan_this_process(n_units: int, n_samples: int, n_factors: int, mem_mb: float, device: Any = "cpu",
                      out_of_core: bool = False) -> bool:
    """Whether this process's fit keeps A in memory: never with ``out_of_core`` (the study key
    ``snmf.out_of_core``), else :func:`keep_in_memory` for this process as it stands (its resident memory
    counted). When the fit will read A from disk, also has glibc return each dropped block to the system
    (:func:`mechflow.memory.return_large_frees`), so the process holds one block at a time."""
    from mechflow.memory import return_large_frees, rss_bytes

    in_memory = not out_of_core and keep_in_memory(n_units, n_samples, n_factors, mem_mb, rss_bytes(), device)
    if not in_memory:
        return_large_frees()
    return in_memory
