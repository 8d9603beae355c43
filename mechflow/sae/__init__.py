"""Sparse autoencoders: architectures, one training loop, checkpoints, SAELens-style export.

``train(x, arch=..., n_features=..., k=..., steps=..., seed=...)`` trains on a [n, d] tensor or
DataArray; ``train_from_file`` is the entry point of the ``sae`` workflow rule, ``train_from_shards`` trains on
corpus token shards (``ShardedSource``, :mod:`mechflow.corpus.activations`). A run's keys are
typed dataclasses (``SAERunConfig`` and one config per architecture, ``CONFIGS``: :mod:`mechflow.sae.configs`);
``validate_run`` checks a run dict against them and ``run_schema`` is their JSON schema
(:mod:`mechflow.sae.config`). The models are in :mod:`mechflow.sae.archs` (``REGISTRY``).

The names below are re-exported lazily, so that resolving a study (which validates its SAE runs)
does not load torch; code whose digest matters (rule scripts) imports from the submodules.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from mechflow.lazy import lazy_exports

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "ARCHITECTURES": "archs", "REGISTRY": "archs", "SparseAutoencoder": "archs", "build_sae": "archs",
    "CONFIGS": "configs", "SAERunConfig": "configs",
    "ARCH_DEFAULTS": "config", "DEFAULT_RUN": "config", "RUN_DOCS": "config", "parse_run": "config",
    "run_defaults": "config", "run_schema": "config", "validate_run": "config",
    "load_sae": "export", "sae_cfg": "export", "save_sae": "export",
    "evaluate": "metrics", "fvu": "metrics", "mmcs": "metrics",
    "train_from_file": "pipeline", "train_from_shards": "pipeline", "ShardedSource": "data",
    "Trainer": "train", "TrainingStopped": "train", "train": "train",
}
__all__ = [
    "ARCHITECTURES", "ARCH_DEFAULTS", "CONFIGS", "DEFAULT_RUN", "REGISTRY", "RUN_DOCS", "SAERunConfig",
    "ShardedSource", "SparseAutoencoder", "Trainer", "TrainingStopped", "build_sae", "evaluate", "fvu", "load_sae", "mmcs",
    "parse_run", "run_defaults", "run_schema", "sae_cfg", "save_sae", "train", "train_from_file", "train_from_shards",
    "validate_run",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """``mechflow.sae.train`` stays the function: importing the submodule of the same name would bind the
    module over it on the package (the import system sets it as an attribute), so that binding is skipped
    and the name resolves through ``__getattr__``; the submodule is in ``sys.modules`` as usual."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
