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
  the Hugging Face id where the model's files say it (:func:`hf_model_id`; else mechflow's model name),
  ``hf_hook_name`` the hook's module path in the Hugging Face model (``model.layers.5``; SAELens's
  ``HookedProxyLM`` hooks it by that name) with ``hf_hook_site`` (``output``, or ``input`` for
  ``mlp_hidden``, the input of the down projection), ``context_size`` (the token context of the training
  rows: ``extract.max_length`` for prompts), ``prepend_bos`` (whether the tokenizer puts a BOS first; left
  out when unknown), ``dataset_path`` (the study's prompt set), ``pooling`` (the per-prompt pooling of the
  training rows) -- :func:`lens_metadata` derives them from the activations file's attrs, without weights;
* the folded normalisation leaves decoder rows of norm other than 1: SAELens's ``fold_W_dec_norm``
  changes ``encode`` (README, "SAEs in SAELens", has the normalisation that keeps the reconstruction).

mechflow's own settings live under the ``mechflow`` key; :func:`load_sae` reads them back (and reads
directories written before the SAELens file name, with ``sae.safetensors``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechflow import __version__
from mechflow.hooks import site_name
from mechflow.io import atomic_path, atomic_write_text, canonical_json
from mechflow.models import ModelSpecError, ResolvedModel, gguf_metadata_value, is_causal_lm, load_tokenizer, resolve_model
from mechflow.sae.archs import SparseAutoencoder, build_sae

log = logging.getLogger(__name__)

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
    "attn_z": "blocks.{layer}.attn.hook_z",
    "mlp_hidden": "blocks.{layer}.mlp.hook_post",
}


def transformer_lens_hook(hook: str, layer: int) -> str:
    """TransformerLens name of mechflow hook ``hook`` at block ``layer`` (``hook`` itself when unknown or no layer)."""
    if hook in TL_HOOKS and int(layer) >= 0:
        return TL_HOOKS[hook].format(layer=int(layer))
    return hook


#: GGUF metadata keys that name the Hugging Face repository a file was converted from (llama.cpp's writers)
_GGUF_REPO_KEYS = ("general.source.huggingface.repository", "general.source.repo_url", "general.repo_url",
                   "general.source.url", "general.url")
_HF_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_HF_ID = re.compile(f"{_HF_NAME}/{_HF_NAME}")
_HF_URL = re.compile(f"https?://(?:www\\.)?huggingface\\.co/({_HF_NAME}/{_HF_NAME})/?")
#: a GGUF file name's encoding (and shard) tail: ``-Q4_K_M``, ``.Q4_1``, ``-f16``, ``-00001-of-00003``
_GGUF_TAIL = re.compile(r"(?:[.-](?:[IT]?Q\d\w*|BF16|F16|F32))?(?:-\d{5}-of-\d{5})?$", re.IGNORECASE)


def _gguf_hf_id(path: Path) -> str | None:
    """The Hugging Face id of the model a GGUF file was converted from, where its header says it: a repository
    key (``general.source.huggingface.repository``, or a huggingface.co URL in ``general.source.repo_url``,
    ``general.repo_url``, ``general.source.url``, ``general.url``), else ``general.organization`` and a name
    (``general.name``, else the file name less its encoding tail) that starts with ``general.basename`` and holds
    ``general.size_label``, so the name is the header's model and not a guess."""
    for key in _GGUF_REPO_KEYS:
        value = gguf_metadata_value(path, key)
        if isinstance(value, str):
            value = value.strip()
            if key.endswith(".repository") and _HF_ID.fullmatch(value):
                return value
            if (url := _HF_URL.fullmatch(value)) is not None:
                return url.group(1)
    org = gguf_metadata_value(path, "general.organization")
    if not isinstance(org, str) or not re.fullmatch(_HF_NAME, org):
        return None
    base, size = (str(gguf_metadata_value(path, key) or "").lower() for key in ("general.basename", "general.size_label"))
    for name in (gguf_metadata_value(path, "general.name"), _GGUF_TAIL.sub("", path.stem)):
        if isinstance(name, str) and re.fullmatch(_HF_NAME, name) and base and name.lower().startswith(base) \
                and size in name.lower():
            return f"{org}/{name}"
    return None


def _folder_hf_id(folder: Path) -> str | None:
    """``_name_or_path`` of a model folder's config.json when it is an ``org/name`` id (not a path), except in a
    sentence-transformers folder (modules.json), where it names the model the encoder was fine-tuned from
    (all-MiniLM-L6-v2's names nreimers/MiniLM-L6-H384-uncased), not the folder's own weights."""
    if (folder / "modules.json").is_file():
        return None
    try:
        name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except FileNotFoundError:
        return None
    if isinstance(name, str) and _HF_ID.fullmatch(name) and not (folder / name).exists() and not Path(name).exists():
        return name
    return None


def _hf_id(resolved: ResolvedModel) -> str | None:
    if resolved.gguf_file:  # a GGUF repository of the hub is not the model SAELens would load: the header names it
        return _gguf_hf_id(resolved.directory / resolved.gguf_file)
    for part in resolved.directory.parts:  # the hub cache: .../models--org--name/snapshots/<revision>/
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part.split("--")[1:])
    return _folder_hf_id(resolved.directory)


def _resolved(model_spec: str, base_dir: str | Path = ".") -> ResolvedModel | None:
    """The resolved model spec; None for an empty spec or one that no longer resolves (its metadata is unknown)."""
    if not model_spec:
        return None
    try:
        return resolve_model(model_spec, base_dir)
    except ModelSpecError:
        return None


def hf_model_id(model_spec: str, base_dir: str | Path = ".") -> str | None:
    """The Hugging Face id of a mechflow model spec where its files say it; None otherwise.

    A folder of the hub cache (``models--org--name``) gives its repository, another model folder the ``_name_or_path``
    of its config.json when that is an ``org/name`` id (not for sentence-transformers folders: :func:`_folder_hf_id`;
    note that a fine-tune saved by its trainer records the model it started from); a GGUF file what its header
    names (:func:`_gguf_hf_id`: the shipped SmolLM2 GGUF gives HuggingFaceTB/SmolLM2-135M-Instruct, the model it
    was quantised from, whose activations differ slightly from the dequantised weights mechflow runs).
    """
    resolved = _resolved(model_spec, base_dir)
    return None if resolved is None else _hf_id(resolved)


def model_skeleton(resolved: ResolvedModel) -> torch.nn.Module:
    """The model's module tree as :func:`mechflow.models.load_model` builds it (causal LMs with their LM head,
    encoders bare), on the meta device: no weights are read or allocated."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    extra = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    config = AutoConfig.from_pretrained(resolved.directory, local_files_only=True, trust_remote_code=False, **extra)
    with torch.device("meta"):
        return (AutoModelForCausalLM if is_causal_lm(resolved) else AutoModel).from_config(config)


def hf_hook_site(model_spec: str, hook: str, layer: int, base_dir: str | Path = ".") -> tuple[str, str] | None:
    """The module path of mechflow hook ``hook`` at block ``layer`` in the Hugging Face model (``model.layers.5``
    for a Llama's residual stream) and whether its ``output`` or ``input`` is the activation
    (:func:`mechflow.hooks.site_name` on :func:`model_skeleton`); None when the spec does not resolve or the
    architecture does not expose the hook."""
    resolved = _resolved(model_spec, base_dir)
    if resolved is None:
        return None
    try:
        return site_name(model_skeleton(resolved), hook, int(layer))
    except (OSError, ValueError) as e:  # no config, an architecture transformers or mechflow.hooks does not know
        log.warning("SAELens metadata: no hf_hook_name for hook %r layer %s of %s (%s)", hook, layer, model_spec, e)
        return None


def tokenizer_adds_bos(model_spec: str, base_dir: str | Path = ".") -> bool | None:
    """Whether the model's tokenizer puts a BOS token first (:func:`mechflow.extract.adds_bos`), i.e. whether
    every prompt mechflow ran started with one; None when the spec does not resolve or the tokenizer does not load."""
    resolved = _resolved(model_spec, base_dir)
    if resolved is None:
        return None
    from mechflow.extract.pooling import adds_bos  # the extract package loads its capture code: only when asked

    try:
        return adds_bos(load_tokenizer(resolved))
    except (OSError, ValueError) as e:
        log.warning("SAELens metadata: prepend_bos unknown for %s (%s)", model_spec, e)
        return None


def _attr_int(value: Any) -> int | None:
    return None if value is None or str(value) == "" else int(value)


def lens_metadata(attrs: Mapping[str, Any], hook: str, layer: int, base_dir: str | Path = ".") -> dict[str, Any]:
    """The SAELens metadata of an SAE trained on an activations file with ``attrs`` (its extraction provenance), as
    :func:`sae_cfg` keywords: ``hf_model`` (:func:`hf_model_id`; None for a ``random_init`` control, whose weights
    are not the named model's), ``hf_hook_name`` / ``hf_hook_site`` (:func:`hf_hook_site`), ``context_size`` (the
    token context the rows came from: the file's ``context_size``, else ``max_length``, the prompts' truncation),
    ``prepend_bos`` (the file's ``prepend_bos``, else :func:`tokenizer_adds_bos`) and ``dataset_path`` (the study's
    prompt set the rows came from). Reads config and tokenizer files, never weights."""
    spec = str(attrs.get("model_spec", ""))
    random_init = str(attrs.get("random_init", "")).strip().lower() in ("1", "true")
    site = hf_hook_site(spec, hook, layer, base_dir) if spec and int(layer) >= 0 else None
    bos = _attr_int(attrs.get("prepend_bos"))
    context = _attr_int(attrs.get("context_size"))
    context = _attr_int(attrs.get("max_length")) if context is None else context
    return {"hf_model": None if random_init else hf_model_id(spec, base_dir),
            "hf_hook_name": None if site is None else site[0], "hf_hook_site": None if site is None else site[1],
            "context_size": context, "prepend_bos": tokenizer_adds_bos(spec, base_dir) if bos is None else bool(bos),
            "dataset_path": str(attrs["dataset"]) if attrs.get("dataset") not in (None, "") else None}


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
    hf_hook_name: str | None = None,
    hf_hook_site: str | None = None,
    context_size: int | None = None,
    dataset_path: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cfg.json dict of a trained model: SAELens 6 keys, ``metadata``, and a ``mechflow`` section.

    ``model_name``: mechflow's model name; ``hf_model``: its Hugging Face id where known (then SAELens's
    ``model_name``); ``hook_name``: mechflow's hook point, written in TransformerLens naming for
    ``hook_layer``; ``hf_hook_name``: the hook's module path in the Hugging Face model (``model.layers.5``),
    whose ``hf_hook_site`` (``output`` or ``input``) is the activation; ``context_size``: the token context the
    training rows came from; ``dataset_path``: the data they came from; ``pooling``: how the training rows were
    pooled over tokens (e.g. ``mean``); ``prepend_bos``: written only when known (None: left out).
    :func:`lens_metadata` derives the Hugging Face keywords from an activations file's attrs.
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
        "hf_hook_name": hf_hook_name,
        "context_size": None if context_size is None else int(context_size),
        "dataset_path": dataset_path,
        "model_from_pretrained_kwargs": {},
        "pooling": pooling,
        "mechflow_model": model_name,
        "hook_layer": int(hook_layer),
    }
    if hf_hook_name is not None:
        metadata["hf_hook_site"] = hf_hook_site or "output"
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


__all__ = ["CFG_FILE", "LEGACY_WEIGHTS_FILE", "SAE_LENS_FORMAT_VERSION", "WEIGHTS_FILE", "hf_hook_site", "hf_model_id",
           "lens_metadata", "load_sae", "model_skeleton", "sae_cfg", "save_sae", "tokenizer_adds_bos",
           "transformer_lens_hook", "weights_path"]
