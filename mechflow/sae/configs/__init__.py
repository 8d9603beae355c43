"""Run configs of the SAE architectures, one module each, and their registry (no torch).

A run config is a dataclass that declares an architecture's options with their defaults, types,
bounds and docs (the only place they live); the models (:mod:`mechflow.sae.archs`, torch) take
theirs from here, so a study's runs are validated and their schema generated without loading torch.
"""

from __future__ import annotations

from mechflow.sae.configs.base import ARCH_DOC, SAERunConfig
from mechflow.sae.configs.batchtopk import BatchTopKConfig
from mechflow.sae.configs.gba import GBAConfig
from mechflow.sae.configs.jumprelu import JumpReLUConfig
from mechflow.sae.configs.matryoshka import MatryoshkaConfig
from mechflow.sae.configs.mp import MPConfig
from mechflow.sae.configs.relu import ReLUConfig
from mechflow.sae.configs.topk import TopKConfig

#: arch name -> run config class (this order is the order of the generated schema)
CONFIGS: dict[str, type[SAERunConfig]] = {
    cls.__dataclass_fields__["arch"].default: cls
    for cls in (TopKConfig, BatchTopKConfig, ReLUConfig, JumpReLUConfig, GBAConfig, MPConfig, MatryoshkaConfig)
}

__all__ = ["ARCH_DOC", "CONFIGS", "BatchTopKConfig", "GBAConfig", "JumpReLUConfig", "MPConfig", "MatryoshkaConfig",
           "ReLUConfig", "SAERunConfig", "TopKConfig"]
