"""Steering vectors: a difference of means between two prompt sets, an SAE decoder row, a semi-NMF factor.

- :func:`mean_difference`: mean pooled activation of the positive prompts minus that of the negative
  prompts at one hook and layer [units] (activation addition, Turner et al. 2023; contrastive
  activation addition, Rimsky et al. 2024). Pooling is that of extraction (:func:`mechflow.extract.pool`,
  the same capture hooks): ``last`` (the last real token, where the effect is measured) or ``mean``
  (every real token but the first, the attention sink).
- :func:`sae_decoder_row`: row ``feature`` of an SAE's ``W_dec`` [d_sae, d_in] (``sae_weights.safetensors``):
  the direction the feature writes into the activations it was trained on.
- :func:`snmf_factor`: column ``factor`` of a semi-NMF ``F`` [unit, factor]: a pattern over the MLP hidden
  units, added at the MLP hidden hook (the down projection's input).
- :func:`top_moran_feature`: the feature or factor with the highest Moran's I in any region of a
  ``moran.nc`` file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechflow.extract import Exclude, iter_pooled

__all__ = ["mean_difference", "pooled_mean", "sae_decoder_row", "snmf_factor", "top_moran_feature"]


def pooled_mean(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], hook: str, layer: int, pooling: str = "last",
                batch_size: int = 32, max_length: int = 64, exclude: Exclude = "auto") -> np.ndarray:
    """Mean over ``texts`` of the pooled activation of ``hook`` at block ``layer`` [units] float64."""
    if not texts:
        raise ValueError("no prompts to average")
    total = None
    for _, pooled in iter_pooled(model, tokenizer, list(texts), hook, [layer], pooling, batch_size, max_length,
                                 progress=False, exclude=exclude):
        block = pooled[:, 0].astype(np.float64).sum(0)
        total = block if total is None else total + block
    return total / len(texts)


def mean_difference(model: torch.nn.Module, tokenizer: Any, positive: Sequence[str], negative: Sequence[str], hook: str,
                    layer: int, pooling: str = "last", batch_size: int = 32, max_length: int = 64,
                    exclude: Exclude = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean(positive) - mean(negative), mean(positive), mean(negative))``, each [units] float64, of the pooled
    activations of ``hook`` at block ``layer`` (see :func:`pooled_mean`)."""
    pos = pooled_mean(model, tokenizer, positive, hook, layer, pooling, batch_size, max_length, exclude)
    neg = pooled_mean(model, tokenizer, negative, hook, layer, pooling, batch_size, max_length, exclude)
    return pos - neg, pos, neg


def sae_decoder_row(weights: str | Path, feature: int) -> np.ndarray:
    """Row ``feature`` of ``W_dec`` [d_sae, d_in] in an SAE's ``sae_weights.safetensors`` [d_in] float64."""
    from safetensors import safe_open

    with safe_open(str(weights), "np") as f:
        w = f.get_slice("W_dec")
        n = w.get_shape()[0]
        if not 0 <= feature < n:
            raise ValueError(f"feature {feature} does not exist in {weights} ({n} features)")
        return np.asarray(w[feature : feature + 1], dtype=np.float64)[0]


def snmf_factor(snmf: xr.Dataset, factor: int) -> np.ndarray:
    """Column ``factor`` of a semi-NMF result's ``F`` [unit, factor] [unit] float64."""
    n = snmf.sizes["factor"]
    if not 0 <= factor < n:
        raise ValueError(f"factor {factor} does not exist ({n} factors)")
    return snmf["F"].isel(factor=factor).values.astype(np.float64)


def top_moran_feature(moran: xr.Dataset) -> tuple[int, str, float]:
    """``(index, region, I)`` of the feature (or factor, or unit) with the highest Moran's I in any region."""
    dim = next(d for d in ("feature", "factor", "unit") if d in moran["I"].dims)
    values = moran["I"].transpose("region", dim).values.astype(np.float64)
    if not np.isfinite(values).any():
        raise ValueError("no finite Moran's I to choose a feature by")
    r, j = np.unravel_index(np.nanargmax(values), values.shape)
    return int(moran[dim].values[j]), str(moran["region"].values[r]), float(values[r, j])
