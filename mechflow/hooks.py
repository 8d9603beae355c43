"""Named hook points: where in a transformer block activations are captured.

A hook point maps a model to one capture site per block (layer): a module and whether its
*output* or its *input* is recorded. Registered points:

- ``resid``: the residual stream after the block (the block's output hidden state) [tokens, d_model].
- ``mlp_hidden``: the MLP's hidden activations after the nonlinearity, before the down projection
  [tokens, d_mlp] (input of Llama/Mistral ``down_proj``, GPT-2 ``c_proj``, GPT-NeoX
  ``dense_4h_to_h``; output of BERT's ``intermediate``).
- ``attn_out``: the attention block's output projection before it is added to the residual
  [tokens, d_model].
- ``attn_z``: the per-head attention outputs concatenated, before the output projection [tokens,
  n_heads * d_head] (head ``h`` is units ``h * d_head .. (h + 1) * d_head``): the input of Llama / Mistral /
  Qwen / Gemma ``self_attn.o_proj``, GPT-2 ``attn.c_proj``, GPT-NeoX ``attention.dense``, OPT
  ``self_attn.out_proj``, BERT ``attention.output.dense``; TransformerLens's ``blocks.L.attn.hook_z``
  flattened over heads. :func:`output_projection` gives that layer's W_O and head count.

New points plug in with :func:`register_hook_point`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


class HookPointError(ValueError):
    """A hook point is unknown or the model's architecture does not expose it."""


@dataclass(frozen=True)
class CaptureSite:
    """One capture site: ``module``'s output (or its first positional input) is recorded."""

    module: nn.Module
    what: Literal["output", "input"]


@dataclass(frozen=True)
class HookPoint:
    name: str
    description: str
    locate: Callable[[nn.Module], list[CaptureSite]]


HOOK_POINTS: dict[str, HookPoint] = {}

# Paths (relative to the model) of the list of transformer blocks, by architecture family.
_BLOCK_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "encoder.layer", "bert.encoder.layer",
                "layers", "h", "model.decoder.layers", "transformer.layers")


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        if not hasattr(module, part):
            return None
        module = getattr(module, part)
    return module


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks, one per layer."""
    for path in _BLOCK_LISTS:
        blocks = _get(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    raise HookPointError(f"cannot find the transformer blocks of {type(model).__name__} (looked for {_BLOCK_LISTS})")


def n_layers(model: nn.Module) -> int:
    return len(find_blocks(model))


def _sites(model: nn.Module, candidates: tuple[tuple[str, Literal["output", "input"]], ...], hook: str) -> list[CaptureSite]:
    sites = []
    for block in find_blocks(model):
        for path, what in candidates:
            module = _get(block, path)
            if module is not None:
                sites.append(CaptureSite(module, what))
                break
        else:
            raise HookPointError(
                f"hook {hook!r} is not supported for {type(model).__name__} "
                f"(block {type(block).__name__} has none of {[p for p, _ in candidates]})"
            )
    return sites


def register_hook_point(point: HookPoint) -> HookPoint:
    HOOK_POINTS[point.name] = point
    return point


register_hook_point(HookPoint(
    "resid", "residual stream after each block",
    lambda model: [CaptureSite(b, "output") for b in find_blocks(model)],
))
register_hook_point(HookPoint(
    "mlp_hidden", "MLP hidden activations after the nonlinearity, before the down projection",
    lambda model: _sites(model, (
        ("mlp.down_proj", "input"),            # Llama, Mistral, Qwen, Gemma
        ("mlp.c_proj", "input"),               # GPT-2
        ("mlp.dense_4h_to_h", "input"),        # GPT-NeoX / Pythia
        ("mlp.fc2", "input"),                  # OPT-style, Phi
        ("intermediate", "output"),            # BERT (dense + activation)
    ), "mlp_hidden"),
))
register_hook_point(HookPoint(
    "attn_out", "attention output projection, before the residual add",
    lambda model: _sites(model, (
        ("self_attn.o_proj", "output"),        # Llama, Mistral, Qwen, Gemma
        ("attn.c_proj", "output"),             # GPT-2
        ("attention.dense", "output"),         # GPT-NeoX / Pythia
        ("self_attn.out_proj", "output"),      # OPT
        ("attention.output.dense", "output"),  # BERT
    ), "attn_out"),
))
register_hook_point(HookPoint(
    "attn_z", "per-head attention outputs concatenated, before the output projection",
    lambda model: _sites(model, (
        ("self_attn.o_proj", "input"),         # Llama, Mistral, Qwen, Gemma
        ("attn.c_proj", "input"),              # GPT-2
        ("attention.dense", "input"),          # GPT-NeoX / Pythia
        ("self_attn.out_proj", "input"),       # OPT
        ("attention.output.dense", "input"),   # BERT
    ), "attn_z"),
))

#: config keys of the attention head count, by architecture family
_HEAD_COUNT_KEYS = ("num_attention_heads", "n_head", "num_heads")


def n_heads(model: nn.Module) -> int:
    """Attention heads per layer (query heads: the output projection reads one slice per query head)."""
    config = getattr(model, "config", None)
    for key in _HEAD_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise HookPointError(f"{type(model).__name__}'s config names no attention head count (looked for {_HEAD_COUNT_KEYS})")


def output_projection(model: nn.Module, layer: int) -> tuple[torch.Tensor, int]:
    """Block ``layer``'s attention output projection W_O [d_model, n_heads * d_head] (``attn_out = attn_z @ W_O.T +
    bias``; GPT-2's ``Conv1D`` weight [in, out] transposed) and the head count. HookPointError when the width is
    not a multiple of the head count."""
    sites = capture_sites(model, "attn_z")
    if not 0 <= int(layer) < len(sites):
        raise HookPointError(f"layer {layer} is out of range: {type(model).__name__} has {len(sites)} blocks")
    module = sites[int(layer)].module
    weight = module.weight.detach()
    # transformers' Conv1D (GPT-2) computes x @ weight + bias with weight [in, out]; nn.Linear holds [out, in]
    w_o = weight.T if type(module).__name__ == "Conv1D" else weight
    heads = n_heads(model)
    if w_o.shape[1] % heads:
        raise HookPointError(f"attn_z width {w_o.shape[1]} of {type(model).__name__} is not a multiple of its {heads} heads")
    return w_o, heads


def capture_sites(model: nn.Module, hook: str) -> list[CaptureSite]:
    """The capture site of every layer for a named hook point."""
    if hook not in HOOK_POINTS:
        raise HookPointError(f"unknown hook {hook!r}; registered: {sorted(HOOK_POINTS)}")
    return HOOK_POINTS[hook].locate(model)


def site_name(model: nn.Module, hook: str, layer: int) -> tuple[str, Literal["output", "input"]]:
    """Where ``hook`` is captured at block ``layer``: the capture site's module path as ``model.named_modules()``
    names it (``model.layers.5`` for the residual stream of a Llama causal LM, ``transformer.h.5`` for GPT-2,
    ``model.layers.5.mlp.down_proj`` for ``mlp_hidden``) and whether its ``output`` or its ``input`` is recorded."""
    sites = capture_sites(model, hook)
    if not 0 <= int(layer) < len(sites):
        raise HookPointError(f"layer {layer} is out of range: {type(model).__name__} has {len(sites)} blocks")
    site = sites[int(layer)]
    return next(name for name, module in model.named_modules() if module is site.module), site.what
