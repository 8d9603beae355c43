"""Head attribution of the features of an SAE trained on ``attn_z`` (per-head attention outputs before the output
projection), as in attention-output SAEs (Kissane et al. 2024): the hook's units are ``n_heads`` slices of
``d_head``, so each decoder row splits into one slice per head.

For feature ``f`` with decoder row ``d_f`` [n_heads * d_head] (slice ``d_f,h`` [d_head] of head ``h``):

- ``head_share`` [feature, head]: ``|d_f,h| / sum_h' |d_f,h'|`` (L2 norms), the share of the decoder norm on each
  head; sums to 1 over heads (NaN for an all-zero decoder row);
- ``head_direct`` [feature, head]: ``|W_O[:, h] @ d_f,h|``, the norm of what one unit of the feature, read by head
  ``h``, writes into the residual stream through that head's columns of the output projection W_O [d_model,
  n_heads * d_head] (residual-stream units per unit of feature activation; biases excluded). Its sum over heads
  bounds the norm of the feature's whole residual direction ``W_O @ d_f``.

:func:`head_attribution` returns them as an ``xarray.Dataset`` on dims (feature, head); the SAE pipeline writes
both into ``features.nc`` as coordinates (so ``features.nc``'s ``features`` variable reads as before):
``xr.open_dataset(features.nc)["head_share"]``. W_O and the head count come from
:func:`mechflow.hooks.output_projection`.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["HEAD_VARIABLES", "head_attribution", "model_output_projection"]

#: the variables :func:`head_attribution` returns (coordinates on (feature, head) in features.nc)
HEAD_VARIABLES: tuple[str, ...] = ("head_share", "head_direct")


def head_attribution(w_dec: np.ndarray, w_o: np.ndarray, n_heads: int) -> xr.Dataset:
    """``head_share`` and ``head_direct`` [feature, head] (float64) of decoder rows ``w_dec`` [d_sae, n_heads * d_head]
    through the output projection ``w_o`` [d_model, n_heads * d_head]; ``head`` coordinate 0 .. n_heads - 1.
    ValueError when the widths disagree or are not a multiple of ``n_heads``."""
    w_dec = np.asarray(w_dec, dtype=np.float64)
    w_o = np.asarray(w_o, dtype=np.float64)
    if w_dec.ndim != 2 or w_o.ndim != 2:
        raise ValueError(f"w_dec and w_o must be matrices, got shapes {w_dec.shape} and {w_o.shape}")
    d_sae, width = w_dec.shape
    if n_heads < 1 or width % n_heads:
        raise ValueError(f"decoder width {width} is not a multiple of {n_heads} heads")
    if w_o.shape[1] != width:
        raise ValueError(f"output projection W_O {w_o.shape} does not read the decoder's {width} units")
    d_head = width // n_heads
    slices = w_dec.reshape(d_sae, n_heads, d_head)
    norms = np.linalg.norm(slices, axis=2)                                    # [feature, head]
    total = norms.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, norms / total, np.nan)
    w_heads = w_o.reshape(-1, n_heads, d_head)
    gram = np.einsum("mhd,mhe->hde", w_heads, w_heads)                      # W_O,h^T W_O,h [head, d_head, d_head]
    squared = np.einsum("fhd,fhd->fh", np.einsum("fhd,hde->fhe", slices, gram), slices)  # |W_O,h d_f,h|^2
    direct = np.sqrt(np.maximum(squared, 0.0))                               # memory of [feature, head, d_head]
    coords = {"feature": np.arange(d_sae, dtype=np.int64), "head": np.arange(n_heads, dtype=np.int64)}
    return xr.Dataset(
        {"head_share": (("feature", "head"), share, {"units": "fraction of the decoder row's L2 norm, summed over heads"}),
         "head_direct": (("feature", "head"), direct,
                         {"units": "residual-stream norm per unit of feature activation, |W_O[:, head] @ decoder[head]|"})},
        coords=coords, attrs={"n_heads": int(n_heads), "d_head": int(d_head)})


def model_output_projection(model: dict, layer: int) -> tuple[np.ndarray, int]:
    """(W_O [d_model, n_heads * d_head] float32, n_heads) of block ``layer`` of the model that ``model`` (the study's
    model settings, :data:`mechflow.study.MODEL_KEYS`: spec, dtype, random_init, init_seed) loads on the CPU: the
    same weights, random-init controls included, that produced the activations."""
    from mechflow.hooks import output_projection
    from mechflow.models import load_model, resolve_model

    loaded, _ = load_model(resolve_model(model["spec"]), device="cpu", dtype=model.get("dtype", "float32"),
                           random_init=bool(model.get("random_init", False)), init_seed=int(model.get("init_seed", 0)))
    w_o, n_heads = output_projection(loaded, layer)
    return w_o.float().numpy().copy(), n_heads
