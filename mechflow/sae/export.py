"""Save and load SAEs as ``sae.safetensors`` + ``cfg.json`` in the SAELens convention.

Tensors: ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in],
plus ``threshold`` [d_sae] for JumpReLU-style inference (jumprelu, batchtopk, matryoshka).
The saved weights read raw activations: a training-time normalisation factor is folded in, as
SAELens does (``normalize_activations`` records what was used, ``activation_norm_scaling_factor``
the folded factor). mechflow-specific settings live under the ``mechflow`` key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechflow import __version__
from mechflow.io import atomic_path, atomic_write_text, canonical_json
from mechflow.sae.archs import SparseAutoencoder, build_sae

WEIGHTS_FILE = "sae.safetensors"
CFG_FILE = "cfg.json"


def sae_cfg(
    model: SparseAutoencoder,
    *,
    model_name: str = "",
    hook_name: str = "",
    hook_layer: int = -1,
    config_digest: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cfg.json dict of a trained model (SAELens keys plus a ``mechflow`` section)."""
    run = dict(getattr(model, "run", {}) or {})
    dtype = str(model.W_dec.dtype).replace("torch.", "")
    cfg: dict[str, Any] = {
        **model.sae_lens_fields(),
        "d_in": model.d_in,
        "d_sae": model.n_features,
        "dtype": dtype,
        "device": "cpu",
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_layer": int(hook_layer),
        "hook_head_index": None,
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": run.get("normalize_activations", "none"),
        "activation_norm_scaling_factor": float(getattr(model, "scaling_factor", 1.0)),
        "scaling_factor_folded": True,
        "prepend_bos": True,
        "context_size": None,
        "dataset_path": "",
        "sae_lens_training_version": None,
        "model_from_pretrained_kwargs": {},
        "metadata": {"model_name": model_name, "hook_name": hook_name, "hook_layer": int(hook_layer)},
        "mechflow": {
            "version": __version__,
            "arch": model.arch,
            "k": model.k,
            "options": {key: v for key, v in model.opts.items()},
            "run": run,
            "config_digest": config_digest,
        },
    }
    cfg.update(extra or {})
    return cfg


def save_sae(model: SparseAutoencoder, out_dir: str | Path, cfg: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``sae.safetensors`` and ``cfg.json`` into ``out_dir`` atomically; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = sae_cfg(model) if cfg is None else cfg
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.export_tensors().items()}
    weights = out / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "architecture": str(cfg.get("architecture", ""))})
    cfg_path = out / CFG_FILE
    atomic_write_text(cfg_path, json.dumps(json.loads(canonical_json(cfg)), indent=2, sort_keys=True) + "\n")
    return weights, cfg_path


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load a directory written by :func:`save_sae` into its mechflow architecture, bit-exactly."""
    path = Path(path)
    cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.exists():
            raise FileNotFoundError(f"SAE directory {path} lacks {p.name}")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    mf = cfg.get("mechflow")
    if not mf:
        raise ValueError(f"{cfg_path} has no 'mechflow' section; it was not written by mechflow.sae.save_sae")
    options = {k: v for k, v in mf.get("options", {}).items()}
    model = build_sae(mf["arch"], int(cfg["d_in"]), int(cfg["d_sae"]), mf.get("k"), **options)
    tensors = load_file(str(w_path))
    expected = {"W_enc": (model.d_in, model.n_features), "b_enc": (model.n_features,),
                "W_dec": (model.n_features, model.d_in), "b_dec": (model.d_in,)}
    if "threshold" in model.export_tensors():
        expected["threshold"] = (model.n_features,)
    if set(tensors) != set(expected):
        raise ValueError(f"{w_path} holds {sorted(tensors)}, expected {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{w_path}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(model, name).copy_(value)
    model.scaling_factor = float(cfg.get("activation_norm_scaling_factor", 1.0))
    model.run = mf.get("run", {})
    model.cfg = cfg
    model.eval()
    return model.to(device)


__all__ = ["save_sae", "load_sae", "sae_cfg", "WEIGHTS_FILE", "CFG_FILE"]
