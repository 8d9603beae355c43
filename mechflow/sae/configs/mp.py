"""Run config of a matching-pursuit SAE (Costa et al. 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mechflow.runconfig import option
from mechflow.sae.configs.base import ARCH_DOC, SAERunConfig


@dataclass(frozen=True, kw_only=True)
class MPConfig(SAERunConfig):
    """Options of an MP-SAE: the number of pursuit steps (``k`` unless given)."""

    NEEDS_K: ClassVar[bool] = True

    arch: str = option("mp", ARCH_DOC)
    mp_steps: int | None = option(None, "greedy pursuit steps of the encoder (null: k)", minimum=1)
