"""Run config of a Matryoshka SAE (Bussmann et al. 2025)."""

from __future__ import annotations

from dataclasses import dataclass

from mechflow.runconfig import option
from mechflow.sae.configs.base import ARCH_DOC
from mechflow.sae.configs.batchtopk import BatchTopKConfig


@dataclass(frozen=True, kw_only=True)
class MatryoshkaConfig(BatchTopKConfig):
    """Options of a Matryoshka SAE: BatchTopK's, plus the nested prefixes."""

    arch: str = option("matryoshka", ARCH_DOC)
    matryoshka_prefixes: tuple[float, ...] = option(
        (0.25, 0.5), "nested dictionary prefixes as fractions of n_features (the full dictionary is always added)",
        exclusive_minimum=0, maximum=1)
    matryoshka_full_weight: float = option(
        0.75, "weight of the full dictionary's FVU in the loss; the nested prefixes share the rest equally "
        "(1 / (prefixes + 1): the paper's plain sum)", exclusive_minimum=0, maximum=1)
