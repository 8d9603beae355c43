"""Save and load SAEs as ``sae_weights.safetensors`` + ``cfg.json``, in the SAELens (>= 6) format.

``SAE.load_from_disk(dir)`` of sae-lens (>= 6.54) loads a directory written by :func:`save_sae`, and
its ``encode`` / ``decode`` equal mechflow's (tested in tests/test_sae_saelens.py):

* tensors ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in], plus
  ``threshold`` [d_sae] for JumpReLU-style inference (jumprelu, batchtopk, matryoshka, gba); an MP-SAE
  is SAELens's decoder-only ``matching_pursuit`` architecture (``W_dec``, ``b_dec``; its encoder is
  ``W_dec.T``) with ``max_iterations`` = the pursuit steps, no residual threshold and no early stop;
* the weights read raw activations: a training-time normalisation factor is folded in, so
  ``normalize_activations`` is ``"none"`` (the run's setting and the folded factor are recorded under
  ``mechflow``: ``normalize_activations``, ``activation_norm_scaling_factor``);
* ``sae_lens_version`` (top level and in ``metadata``) is the format version, so SAELens reads the
  config as a 6.x one (without it, it takes its pre-6.0 path, which drops ``metadata``);
* ``metadata``: ``hook_name`` in TransformerLens naming (``blocks.5.hook_resid_post``), ``model_name``
  the Hugging Face id where known (else mechflow's model name), ``prepend_bos`` only when known,
  ``hf_hook_name`` (mechflow's hook), ``pooling`` (the per-prompt pooling of the training rows).

mechflow's own settings live under the ``mechflow`` key; :func:`load_sae` reads them back (and reads
directories written before the SAELens file name, with ``sae.safetensors``).
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

#: the weights file SAELens reads
WEIGHTS_FILE = "sae_weights.safetensors"
#: the weights file of directories written by mechflow before it used SAELens's name (read back too)
LEGACY_WEIGHTS_FILE = "sae.safetensors"
CFG_FILE = "cfg.json"
#: the SAELens config format written (SAELens >= 6.0 reads it as such)
SAE_LENS_FORMAT_VERSION = "6.54.0"

#: mechflow hook point -> TransformerLens hook name template
TL_HOOKS: dict[str, str] = {
    "resid": "blocks.{layer}.hook_resid_post",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_hidden": "blocks.{layer}.mlp.hook_post",
}


def transformer_lens_hook(hook: str, layer: int) -> str:
    """TransformerLens name of mechflow hook ``hook`` at block ``layer`` (``hook`` itself when unknown or no layer)."""
    if hook in TL_HOOKS and int(layer) >= 0:
        return TL_HOOKS[hook].format(layer=int(layer))
    return hook


def hf_model_id(model_spec: str) -> str | None:
    """The Hugging Face id of a mechflow model spec, where the model folder says it: ``_name_or_path`` of its
    config.json when it is an ``org/name`` id, or an ``models--org--name`` folder of the HF cache. None otherwise."""
    if not model_spec:
        return None
    try:
        from mechflow.models import resolve_model

        folder = resolve_model(model_spec).path
    except Exception:  # noqa: BLE001 - offline best effort: a spec that no longer resolves has no known id
        return None
    for part in Path(folder).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part.split("--")[1:])
    cfg = Path(folder) / "config.json"
    if cfg.is_file():
        try:
            name = json.loads(cfg.read_text(encoding="utf-8")).get("_name_or_path", "")
        except (OSError, ValueError):
            return None
        if isinstance(name, str) and name.count("/") == 1 and not name.startswith((".", "/", "~")) \
                and not Path(name).exists():
            return name
    return None


def sae_cfg(
    model: SparseAutoencoder,
    *,
    model_name: str = "",
    hook_name: str = "",
    hook_layer: int = -1,
    config_digest: str = "",
    pooling: str | None = None,
    prepend_bos: bool | None = None,
    hf_model: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cfg.json dict of a trained model: SAELens 6 keys, ``metadata``, and a ``mechflow`` section.

    ``model_name``: mechflow's model name; ``hf_model``: its Hugging Face id where known (then SAELens's
    ``model_name``); ``hook_name``: mechflow's hook point, written in TransformerLens naming for
    ``hook_layer``; ``pooling``: how the training rows were pooled over tokens (e.g. ``mean``);
    ``prepend_bos``: written only when known (None: left out).
    """
    run = dict(getattr(model, "run", {}) or {})
    resolved = dict(getattr(model, "resolved", {}) or {})
    dtype = str(model.W_dec.dtype).replace("torch.", "")
    metadata: dict[str, Any] = {
        "sae_lens_version": SAE_LENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": hf_model or model_name,
        "hook_name": transformer_lens_hook(hook_name, hook_layer),
        "hook_head_index": None,
        "hf_hook_name": hook_name,
        "context_size": None,
        "dataset_path": "",
        "model_from_pretrained_kwargs": {},
        "pooling": pooling,
        "mechflow_model": model_name,
        "hook_layer": int(hook_layer),
    }
    if prepend_bos is not None:
        metadata["prepend_bos"] = bool(prepend_bos)
    lens = model.sae_lens_fields()
    cfg: dict[str, Any] = {
        **lens,
        "d_in": model.d_in,
        "d_sae": model.n_features,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # the training-time factor is folded into the weights
        "reshape_activations": "none",
        "sae_lens_version": SAE_LENS_FORMAT_VERSION,
        "metadata": metadata,
        # the pre-6.0 top-level names, for readers of older SAELens configs
        "model_name": metadata["model_name"],
        "hook_name": metadata["hook_name"],
        "hook_layer": int(hook_layer),
        "mechflow": {
            "version": __version__,
            "arch": model.arch,
            "k": model.k,
            "options": dict(model.opts),
            "run": run,
            "resolved": resolved,
            "normalize_activations": run.get("normalize_activations", "none"),
            "activation_norm_scaling_factor": float(getattr(model, "scaling_factor", 1.0)),
            "scaling_factor_folded": True,
            "hook": hook_name,
            "model": model_name,
            "pooling": pooling,
            "config_digest": config_digest,
            "metrics": getattr(model, "metrics", None),
        },
    }
    cfg.update(extra or {})
    return cfg


def save_sae(model: SparseAutoencoder, out_dir: str | Path, cfg: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``sae_weights.safetensors`` and ``cfg.json`` into ``out_dir`` atomically; returns both paths."""
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


def weights_path(path: str | Path) -> Path:
    """The weights file of an SAE directory: ``sae_weights.safetensors``, else the legacy ``sae.safetensors``."""
    path = Path(path)
    for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        if (path / name).exists():
            return path / name
    raise FileNotFoundError(f"SAE directory {path} lacks {WEIGHTS_FILE}")


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load a directory written by :func:`save_sae` into its mechflow architecture, bit-exactly."""
    path = Path(path)
    cfg_path = path / CFG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"SAE directory {path} lacks {CFG_FILE}")
    w_path = weights_path(path)
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    mf = cfg.get("mechflow")
    if not mf:
        raise ValueError(f"{cfg_path} has no 'mechflow' section; it was not written by mechflow.sae.save_sae")
    options = dict(mf.get("options", {}))
    model = build_sae(mf["arch"], int(cfg["d_in"]), int(cfg["d_sae"]), mf.get("k"), **options)
    tensors = load_file(str(w_path))
    expected = {k: tuple(v.shape) for k, v in model.export_tensors().items()}
    if set(tensors) != set(expected):
        raise ValueError(f"{w_path} holds {sorted(tensors)}, expected {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{w_path}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    model.load_export(tensors)
    model.scaling_factor = float(mf.get("activation_norm_scaling_factor", cfg.get("activation_norm_scaling_factor", 1.0)))
    model.run = mf.get("run", {})
    model.resolved = mf.get("resolved", {})
    model.cfg = cfg
    model.eval()
    return model.to(device)


__all__ = ["CFG_FILE", "LEGACY_WEIGHTS_FILE", "SAE_LENS_FORMAT_VERSION", "WEIGHTS_FILE", "hf_model_id", "load_sae",
           "sae_cfg", "save_sae", "transformer_lens_hook", "weights_path"]
