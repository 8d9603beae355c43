"""Run config of a ReLU SAE with an L1 penalty (Bricken et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mechflow.runconfig import option
from mechflow.sae.configs.base import ARCH_DOC, SAERunConfig


@dataclass(frozen=True, kw_only=True)
class ReLUConfig(SAERunConfig):
    """Options of a ReLU SAE: the L1 penalty (fixed, or adapted to an L0 of ``k``) and its warm-up."""

    USES_K: ClassVar[bool] = True
    LR_BASE: ClassVar[float] = 4e-3

    arch: str = option("relu", ARCH_DOC)
    l1_coef: float | None = option(None, "weight of the L1 penalty (activations x decoder row norms, relative to the "
                                         "batch's RMS input norm); null: adapted every step so the batch L0 reaches "
                                         "k (starting at 0.1; see mechflow.sae.defaults)", minimum=0)
    l1_warmup: float = option(0.05, "fraction of steps over which a fixed L1 weight ramps up linearly from 0",
                              minimum=0, maximum=1)
