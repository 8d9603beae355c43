"""The result of a semi-NMF fit and its xarray data contract.

``SNMFResult.to_dataset()`` gives ``F`` [unit, factor], ``G`` [prompt, factor] (>= 0, unit-norm
columns), ``loss`` [iteration] with provenance attrs; :func:`top_prompts` each factor's strongest
samples; :func:`tokens_to_prompts` turns a token-level fit into one ``G`` row per prompt.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechflow.contracts import PROMPT_COORDS
from mechflow.io import digest, provenance_attrs
from mechflow.snmf.config import SNMFError

LOSS_DEFINITION = "||A - F G^T||_F^2 / ||A||_F^2 (relative squared reconstruction error of the sparse model)"
UNIT_DIM, SAMPLE_DIM = "unit", "prompt"


@dataclass
class SNMFResult:
    """A fitted semi-NMF ``A ~ F G^T``.

    F [units, factors] (original scale of A, exactly ``n_keep`` units per column on the support);
    G [samples, factors] >= 0 with unit-norm columns; loss [n_iter + 1] relative squared error,
    ``loss[0]`` at the initialisation, non-increasing. ``seconds`` (the fit's wall time) stays in
    memory and in the log: :meth:`to_dataset` writes only what identical runs reproduce.
    """

    F: np.ndarray
    G: np.ndarray
    loss: np.ndarray
    n_iter: int
    converged: bool
    stop_reason: str
    n_keep: int
    params: dict[str, Any]
    f_fallbacks: int = 0
    seconds: float = 0.0
    unit_coord: np.ndarray | None = None
    prompt_coords: dict[str, np.ndarray] = field(default_factory=dict)
    best_restart: int = 0
    restart_losses: np.ndarray | None = None

    @property
    def n_factors(self) -> int:
        return int(self.F.shape[1])

    def to_dataset(
        self,
        unit_coord: Sequence | np.ndarray | None = None,
        prompt_coords: Mapping[str, Any] | xr.Dataset | xr.DataArray | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> xr.Dataset:
        """The data contract: ``F`` [unit, factor], ``G`` [prompt, factor] (>= 0), ``loss`` [iteration].

        unit_coord: labels of the units (default: those of the input DataArray, else 0..units-1).
        prompt_coords: 1-D coordinates along prompts, as a mapping ``name -> [samples]`` or an xarray
            object whose coords on ``prompt`` are taken (default: those of the input DataArray).
        attrs: upstream provenance (model, hook, layer, ...); a ``config_digest`` key there
            replaces the digest of this fit's parameters.
        """
        n_units, n_samples = self.F.shape[0], self.G.shape[0]
        units = self.unit_coord if unit_coord is None else np.asarray(unit_coord)
        if units is None:
            units = np.arange(n_units)
        if units.shape != (n_units,):
            raise SNMFError(f"unit_coord has shape {units.shape}; expected ({n_units},)")
        coords: dict[str, Any] = {
            UNIT_DIM: units,
            "factor": np.arange(self.n_factors),
            "iteration": np.arange(self.loss.shape[0]),
        }
        pc = self.prompt_coords if prompt_coords is None else prompt_coords_from(prompt_coords)
        for name, values in pc.items():
            values = np.asarray(values)
            if values.shape != (n_samples,):
                raise SNMFError(f"prompt coordinate {name!r} has shape {values.shape}; expected ({n_samples},)")
            coords[name] = (SAMPLE_DIM, values)
        if SAMPLE_DIM not in pc:
            coords[SAMPLE_DIM] = np.arange(n_samples)
        extra = dict(attrs or {})
        config_digest = str(extra.pop("config_digest", digest(self.params)))
        ds = xr.Dataset(
            {
                "F": ((UNIT_DIM, "factor"), self.F),
                "G": ((SAMPLE_DIM, "factor"), self.G),
                "loss": (("iteration",), self.loss),
            },
            coords=coords,
        )
        ds["F"].attrs["description"] = "factor directions in unit space (sparse, mixed sign)"
        ds["G"].attrs["description"] = "factor activations per prompt (>= 0, unit-norm columns)"
        ds["loss"].attrs["description"] = LOSS_DEFINITION
        ds.attrs = provenance_attrs(
            config_digest,
            method="snmf",
            **self.params,
            n_keep=self.n_keep,
            n_iter=self.n_iter,
            converged=self.converged,
            stop_reason=self.stop_reason,
            f_fallbacks=self.f_fallbacks,
            **extra,
        )
        return ds


def prompt_coords_from(obj: Mapping[str, Any] | xr.Dataset | xr.DataArray) -> dict[str, np.ndarray]:
    """1-D coordinates along ``prompt`` of an xarray object, or a mapping ``name -> values`` as arrays."""
    if isinstance(obj, (xr.Dataset, xr.DataArray)):
        return {str(k): np.asarray(v.values) for k, v in obj.coords.items() if v.dims == (SAMPLE_DIM,)}
    return {str(k): np.asarray(v) for k, v in obj.items()}


def top_prompts(
    result: SNMFResult | xr.Dataset,
    k: int = 10,
    texts: Sequence[str] | np.ndarray | None = None,
) -> xr.Dataset:
    """Each factor's ``k`` top-activating samples (largest G), as a Dataset [factor, rank].

    Variables: ``prompt`` (int64 position of the sample in A's sample axis), ``value`` (G there),
    and every 1-D prompt coordinate known to the result (``text``, ``latitude``, ...) gathered the
    same way; ``texts`` [samples] overrides/adds ``text``. Rank 0 is the strongest.
    """
    if isinstance(result, SNMFResult):
        G = result.G
        coords = dict(result.prompt_coords)
    elif isinstance(result, xr.Dataset):
        if "G" not in result or result["G"].dims != (SAMPLE_DIM, "factor"):
            raise SNMFError("top_prompts needs a Dataset with G [prompt, factor] (from SNMFResult.to_dataset)")
        G = np.asarray(result["G"].values)
        coords = prompt_coords_from(result)
    else:
        raise SNMFError(f"top_prompts takes an SNMFResult or its Dataset, got {type(result).__name__}")
    n_samples, K = G.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_samples:
        raise SNMFError(f"k must be an integer in [1, {n_samples}] (the number of samples), got {k!r}")
    if texts is not None:
        texts = np.asarray(texts)
        if texts.shape != (n_samples,):
            raise SNMFError(f"texts has shape {texts.shape}; expected ({n_samples},)")
        coords["text"] = texts
    values, idx = torch.from_numpy(np.ascontiguousarray(G)).topk(k, dim=0, sorted=True)
    idx_np = idx.numpy().T  # [factor, rank]
    data: dict[Hashable, Any] = {
        "prompt": (("factor", "rank"), idx_np.astype(np.int64)),
        "value": (("factor", "rank"), values.numpy().T),
    }
    for name, vals in coords.items():
        if name == SAMPLE_DIM:
            if not np.array_equal(np.asarray(vals), np.arange(n_samples)):
                data["prompt_label"] = (("factor", "rank"), np.asarray(vals)[idx_np])
            continue
        data[name] = (("factor", "rank"), np.asarray(vals)[idx_np])
    return xr.Dataset(data, coords={"factor": np.arange(K), "rank": np.arange(k)})


def tokens_to_prompts(ds: xr.Dataset, prompt_coords: Sequence[str] = PROMPT_COORDS) -> xr.Dataset:
    """A token-level fit's Dataset -> one ``G`` row per prompt, each prompt's max over its tokens.

    ``ds``: :meth:`SNMFResult.to_dataset` of a fit whose samples are tokens, so ``G`` is
    [prompt, factor] with one row per token, and 1-D coords along that dim ``prompt_index`` (the
    prompt each token belongs to) and the prompt coordinates (``text``, ``latitude``, ...; the same
    value on every token of a prompt). Returns ``ds`` with the token dim renamed ``token``;
    ``G_token`` [token, factor] the token-level loadings (with ``prompt_index``, ``position``...);
    ``G`` [prompt, factor] with ``G[p, f] = max over tokens t of prompt p of G_token[t, f]``,
    ``prompt`` labelled by the sorted prompt indices, and the prompt coordinates moved to dim
    ``prompt`` (taken from each prompt's first token). This is the per-prompt reduction of the
    paper's token-level semi-NMF (Shafran, Geiger & Geva 2025) used for spatial analysis.
    """
    if "G" not in ds or ds["G"].dims != (SAMPLE_DIM, "factor") or "prompt_index" not in ds.coords:
        raise SNMFError("tokens_to_prompts needs G [prompt, factor] over tokens with a prompt_index coordinate")
    ds = ds.rename({SAMPLE_DIM: "token"})
    g_token = ds["G"]
    per_prompt = g_token.groupby(ds["prompt_index"]).max().rename(prompt_index=SAMPLE_DIM)
    _, first = np.unique(ds["prompt_index"].values, return_index=True)  # each prompt's first token, sorted as groupby
    names = [n for n in prompt_coords if n in ds.coords]
    per_prompt = per_prompt.assign_coords({n: (SAMPLE_DIM, ds[n].values[first]) for n in names})
    return ds.drop_vars(["G", *names]).assign(G_token=g_token.drop_vars(names), G=per_prompt)
