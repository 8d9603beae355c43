"""Sparse autoencoders: architectures, one training loop, checkpoints, SAELens-style export.

``train(x, arch=..., n_features=..., k=..., steps=..., seed=...)`` trains on a [n, d] tensor or
DataArray; ``train_from_file`` is the entry point of the ``sae`` workflow rule. A run's keys are
typed dataclasses (``SAERunConfig`` and one config per architecture, ``REGISTRY``); ``validate_run``
checks a run dict against them and ``run_schema`` is their JSON schema.
"""

from mechflow.sae.archs import ARCHITECTURES, CONFIGS, REGISTRY, SAERunConfig, SparseAutoencoder, build_sae
from mechflow.sae.config import ARCH_DEFAULTS, DEFAULT_RUN, RUN_DOCS, parse_run, run_defaults, run_schema, validate_run
from mechflow.sae.export import load_sae, sae_cfg, save_sae
from mechflow.sae.metrics import evaluate, fvu, mmcs
from mechflow.sae.pipeline import train_from_file
from mechflow.sae.train import Trainer, TrainingStopped, train

__all__ = [
    "ARCHITECTURES", "ARCH_DEFAULTS", "CONFIGS", "DEFAULT_RUN", "REGISTRY", "RUN_DOCS", "SAERunConfig",
    "SparseAutoencoder", "Trainer", "TrainingStopped", "build_sae", "evaluate", "fvu", "load_sae", "mmcs", "parse_run",
    "run_defaults", "run_schema", "sae_cfg", "save_sae", "train", "train_from_file", "validate_run",
]
