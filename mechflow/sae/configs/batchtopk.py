"""Run config of a BatchTopK SAE (Bussmann, Leask & Nanda 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mechflow.runconfig import option
from mechflow.sae.configs.base import ARCH_DOC
from mechflow.sae.configs.topk import TopKConfig


@dataclass(frozen=True, kw_only=True)
class BatchTopKConfig(TopKConfig):
    """Options of a BatchTopK SAE: TopK's AuxK, plus the inference threshold's moving average."""

    AUXK_DEFAULT: ClassVar[float] = 1 / 8

    arch: str = option("batchtopk", ARCH_DOC)
    topk_warmup: float = option(0.9, "fraction of steps trained with a per-sample TopK (k per sample) before the "
                                     "batch-wide top k x batch (0: BatchTopK from the start)", minimum=0,
                                exclusive_maximum=1)
    threshold_momentum: float = option(0.99, "momentum of the moving average of the smallest kept activation per "
                                             "batch, the inference threshold", minimum=0, maximum=1)
