"""SAE architectures, one module each (run config dataclass + model), and the registry of both.

``REGISTRY`` maps an arch name to ``(SAE class, config class)``; the config class declares the
architecture's options with their defaults, types, bounds and docs (the only place they live).
"""

from __future__ import annotations

from typing import Any

from mechflow.sae.archs.base import LossOut, SAERunConfig, SparseAutoencoder, batch_fvu
from mechflow.sae.archs.batchtopk import BatchTopKConfig, BatchTopKSAE
from mechflow.sae.archs.gba import GBASAE, GBAConfig
from mechflow.sae.archs.jumprelu import JumpReLUConfig, JumpReLUSAE
from mechflow.sae.archs.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from mechflow.sae.archs.mp import MPSAE, MPConfig
from mechflow.sae.archs.relu import ReLUConfig, ReLUSAE
from mechflow.sae.archs.topk import TopKConfig, TopKSAE

#: arch name -> (SAE class, run config class)
REGISTRY: dict[str, tuple[type[SparseAutoencoder], type[SAERunConfig]]] = {
    cls.arch: (cls, cls.config_cls) for cls in (TopKSAE, BatchTopKSAE, ReLUSAE, JumpReLUSAE, GBASAE, MPSAE, MatryoshkaSAE)
}
#: arch name -> SAE class
ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {arch: sae for arch, (sae, _) in REGISTRY.items()}
#: arch name -> run config class
CONFIGS: dict[str, type[SAERunConfig]] = {arch: cfg for arch, (_, cfg) in REGISTRY.items()}


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
