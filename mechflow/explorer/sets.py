"""A feature set as the explorer reads it: pooled values per prompt, a token encoder and decoder directions.

Three kinds, as the spatial step names them (``source``): ``sae-<run>`` (an SAE run's ``features.nc`` and its
weights), ``snmf-<run>`` (a semi-NMF file: ``G`` per prompt, ``F`` [unit, factor]) and ``units`` (a hook's raw
units at one layer of a pooled activations file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from mechflow.io import load_dataset, load_feature_set, open_dataset

__all__ = ["FeatureSet", "load_set", "PLACE_COORDS"]

#: per-prompt coordinates the explorer shows
PLACE_COORDS = ("text", "latitude", "longitude", "region")


@dataclass
class FeatureSet:
    """One feature set.

    kind: ``sae``, ``snmf`` or ``units``; values: pooled activations [prompt, feature] float32 (what the
    spatial step tested); places: per-prompt coordinates (``PLACE_COORDS``); encode: token activations
    [n, d_hook] float32 -> feature activations [n, feature] float32; directions: [feature, d_hook] float32
    decoder rows (SAE ``W_dec``, semi-NMF ``F`` columns) or None (units: the unit basis);
    token_values: precomputed token-level values [token, feature] (a token-level semi-NMF's ``G_token``) or None,
    with token_prompt [token] the prompt of each of its rows;
    note: how token values are obtained, shown on the pages;
    heads: an ``attn_z`` SAE's head attribution (:mod:`mechflow.sae.heads`: ``head_share``, ``head_direct``
    [feature, head] float64, from features.nc) or None.
    """

    kind: str
    values: np.ndarray
    places: dict[str, np.ndarray]
    encode: Callable[[np.ndarray], np.ndarray]
    directions: np.ndarray | None
    note: str
    token_values: np.ndarray | None = None
    token_prompt: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    heads: dict[str, np.ndarray] | None = None

    @property
    def n_features(self) -> int:
        return int(self.values.shape[1])


def _places(da: xr.DataArray | xr.Dataset) -> dict[str, np.ndarray]:
    missing = [c for c in PLACE_COORDS if c not in da.coords]
    if missing:
        raise ValueError(f"the feature set lacks the prompt coordinates {missing}")
    return {c: np.asarray(da[c].values) for c in PLACE_COORDS}


def _sae(features: Path, sae_dir: Path) -> FeatureSet:
    import torch

    from mechflow.sae.export import load_sae

    da = load_feature_set(features, "sae")
    sae = load_sae(sae_dir)

    @torch.no_grad()
    def encode(x: np.ndarray) -> np.ndarray:
        return sae.encode(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()

    directions = sae.W_dec.detach().float().numpy()
    return FeatureSet("sae", da.values.astype(np.float32), _places(da), encode, directions,
                      "token values: the SAE's encoder on each token's activation", attrs=dict(da.attrs),
                      heads=_heads(features, da.sizes["feature"]))


def _heads(features: Path, n: int) -> dict[str, np.ndarray] | None:
    """The head attribution coordinates of an attn_z SAE's features.nc ([feature, head] each), or None."""
    from mechflow.sae.heads import HEAD_VARIABLES

    with open_dataset(features) as ds:
        if not all(v in ds.variables for v in HEAD_VARIABLES):
            return None
        out = {v: np.asarray(ds[v].transpose("feature", "head").values, dtype=np.float64) for v in HEAD_VARIABLES}
    if any(a.shape[0] != n for a in out.values()):
        raise ValueError(f"{features}: head attribution covers {out['head_share'].shape[0]} features, the set has {n}")
    return out


def _snmf(path: Path) -> FeatureSet:
    ds = load_dataset(path)
    F = np.asarray(ds["F"].transpose("unit", "factor").values, dtype=np.float64)
    pinv = np.linalg.pinv(F)  # [factor, unit]

    def encode(x: np.ndarray) -> np.ndarray:
        return np.maximum(np.asarray(x, dtype=np.float64) @ pinv.T, 0).astype(np.float32)

    token_values = token_prompt = None
    note = "token values: max(0, pinv(F) a) of each token's activation a (least squares on the factors, clipped)"
    if "G_token" in ds:
        token_values = np.asarray(ds["G_token"].transpose("token", "factor").values, dtype=np.float32)
        token_prompt = np.asarray(ds["prompt_index"].values, dtype=np.int64)
        note = "token values: the fit's own G of each token (G_token)"
    G = ds["G"].transpose("prompt", "factor")
    return FeatureSet("snmf", G.values.astype(np.float32), _places(G), encode, F.T.astype(np.float32), note,
                      token_values=token_values, token_prompt=token_prompt, attrs=dict(ds.attrs))


def _units(path: Path, layer: int) -> FeatureSet:
    da = load_feature_set(path, "units", layer)
    return FeatureSet("units", da.values.astype(np.float32), _places(da), lambda x: np.asarray(x, dtype=np.float32),
                      None, "token values: each unit's activation at each token", attrs=dict(da.attrs))


def load_set(source: str, features: str | Path, layer: int, sae_dir: str | Path | None = None) -> FeatureSet:
    """The feature set ``source`` (``units``, ``sae-<run>``, ``snmf-<run>``) of the file ``features`` at ``layer``
    (an SAE's features.nc needs its run folder ``sae_dir`` for the encoder and decoder)."""
    kind = source.partition("-")[0]
    if kind == "sae":
        if sae_dir is None:
            raise ValueError("an SAE feature set needs its run folder (sae_dir)")
        return _sae(Path(features), Path(sae_dir))
    if kind == "snmf":
        return _snmf(Path(features))
    if kind == "units":
        return _units(Path(features), int(layer))
    raise ValueError(f"unknown feature set {source!r} (units, sae-<run>, snmf-<run>)")
