"""SAE architectures, one module each (the model, torch), and the registry of models and run configs.

Each architecture's run config (its options with their defaults, types, bounds and docs: the only
place they live) is in :mod:`mechflow.sae.configs` (no torch); its model, here, names it as
``config_cls``. ``REGISTRY`` maps an arch name to ``(SAE class, config class)``.
"""

from __future__ import annotations

from typing import Any

from mechflow.sae.archs.base import LossOut, SparseAutoencoder, batch_fvu
from mechflow.sae.archs.batchtopk import BatchTopKSAE
from mechflow.sae.archs.gba import GBASAE
from mechflow.sae.archs.jumprelu import JumpReLUSAE
from mechflow.sae.archs.matryoshka import MatryoshkaSAE
from mechflow.sae.archs.mp import MPSAE
from mechflow.sae.archs.relu import ReLUSAE
from mechflow.sae.archs.topk import TopKSAE
from mechflow.sae.configs import (
    CONFIGS,
    BatchTopKConfig,
    GBAConfig,
    JumpReLUConfig,
    MatryoshkaConfig,
    MPConfig,
    ReLUConfig,
    SAERunConfig,
    TopKConfig,
)

#: arch name -> SAE class (in the order of :data:`mechflow.sae.configs.CONFIGS`, which names the same architectures)
ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    cls.arch: cls for cls in (TopKSAE, BatchTopKSAE, ReLUSAE, JumpReLUSAE, GBASAE, MPSAE, MatryoshkaSAE)
}
#: arch name -> (SAE class, run config class)
REGISTRY: dict[str, tuple[type[SparseAutoencoder], type[SAERunConfig]]] = {
    arch: (sae, sae.config_cls) for arch, sae in ARCHITECTURES.items()
}


def build_sae(arch: str, d_in: int, n_features: int, k: int | None = None, **opts: Any) -> SparseAutoencoder:
    """Instantiate an architecture by name (see :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown SAE arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](d_in, n_features, k, **opts)


__all__ = [
    "ARCHITECTURES", "CONFIGS", "REGISTRY", "BatchTopKConfig", "BatchTopKSAE", "GBAConfig", "GBASAE", "JumpReLUConfig",
    "JumpReLUSAE", "LossOut", "MPConfig", "MPSAE", "MatryoshkaConfig", "MatryoshkaSAE", "ReLUConfig", "ReLUSAE",
    "SAERunConfig", "SparseAutoencoder", "TopKConfig", "TopKSAE", "batch_fvu", "build_sae",
]
