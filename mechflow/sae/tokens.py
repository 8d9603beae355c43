"""Token-level SAE inputs (``sae.level: tokens``): the rows of a token file, the prompt-level split, and
per-prompt pooling of token features.

A token file (``activations`` [token, layer, unit], rule ``extract_tokens``) holds every real token of
every prompt (extraction drops padding), with ``prompt_index`` [token] (the prompt's position in the
prompt set, which is also its ``prompt`` label) and ``excluded`` [token] (the position that pooling
leaves out: the attention sink, see :func:`mechflow.extract.resolve_exclude`). The SAE trains on the
kept tokens only, so the sink is left out of training exactly as pooling leaves it out of the pooled
vectors; ``extract.exclude: none`` flags nothing and keeps every token. ``features.nc`` stays per
prompt: the max or mean over each prompt's kept tokens of the token-level feature activations,
computed with segment reductions (``scatter_reduce``), never a loop over prompts or features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import xarray as xr

from mechflow.contracts import PROMPT_COORDS
from mechflow.sae.data import DataArraySource, RowSource, SubsetSource, layer_rows, split_rows

#: what the SAE trains on: one pooled vector per prompt, or every kept token
LEVELS: tuple[str, ...] = ("pooled", "tokens")
#: how ``features.nc`` makes one row per prompt from its tokens' feature activations
TOKEN_POOLING: tuple[str, ...] = ("max", "mean")
TokenPooling = Literal["max", "mean"]


def select_token_layer(da: xr.DataArray, layer: int) -> xr.DataArray:
    """A token file's ``activations`` [token, layer, unit] -> the lazy [token, unit] slice of ``layer``."""
    if set(da.dims) != {"token", "layer", "unit"}:
        raise ValueError(f"sae.level tokens needs a token-level file with dims (token, layer, unit) (rule extract_tokens), "
                         f"got {da.dims}")
    if "prompt_index" not in da.coords or da["prompt_index"].dims != ("token",):
        raise ValueError("the token file has no prompt_index [token] coordinate (the prompt of each token); "
                         "re-extract it with rule extract_tokens")
    return layer_rows(da, layer, "token", "token file")


@dataclass(frozen=True)
class TokenRows:
    """The kept token rows of one layer of a token file.

    ``source``: the kept rows [n_kept, d] (tokens not flagged ``excluded``, in file order);
    ``prompt_of`` [n_kept] int64: each row's prompt as a position in ``prompts``;
    ``prompts`` [n_prompts]: the prompt labels (``prompt_index`` values, sorted);
    ``coords``: per-prompt coordinates on dim ``prompt`` (text, latitude, ..., ``n_tokens``: the
    prompt's tokens in the file, the excluded one included, as the pooled file counts them);
    ``n_tokens``: rows in the file; ``n_excluded``: rows flagged and left out.
    """

    source: RowSource
    prompt_of: np.ndarray
    prompts: np.ndarray
    coords: xr.Dataset
    n_tokens: int
    n_excluded: int

    @property
    def n_prompts(self) -> int:
        return int(self.prompts.size)


def token_rows(layer_da: xr.DataArray, block: int = 256) -> TokenRows:
    """The training rows of a token-level layer slice [token, unit] (:func:`select_token_layer`).

    Rows flagged ``excluded`` (the sink; absent coordinate: none flagged) are left out. Raises
    ValueError when a prompt keeps no token or no token is left at all. ``block``: contiguous rows
    read together.
    """
    if layer_da.dims != ("token", "unit"):
        raise ValueError(f"token rows need a [token, unit] slice, got dims {layer_da.dims}")
    owner = np.asarray(layer_da["prompt_index"].values, dtype=np.int64)
    n = owner.size
    if n == 0:
        raise ValueError("the token file holds no tokens")
    excluded = (np.asarray(layer_da["excluded"].values, dtype=bool) if "excluded" in layer_da.coords
                else np.zeros(n, dtype=bool))
    prompts, first, inverse, counts = np.unique(owner, return_index=True, return_inverse=True, return_counts=True)
    kept = np.flatnonzero(~excluded)
    kept_per_prompt = np.bincount(inverse[kept], minlength=prompts.size)
    if (kept_per_prompt == 0).any():
        bad = prompts[kept_per_prompt == 0][:5].tolist()
        raise ValueError(f"{int((kept_per_prompt == 0).sum())} prompt(s) have every token flagged excluded (prompt_index "
                         f"{bad}); they would have no features")
    coords: dict[str, tuple[str, np.ndarray]] = {}
    for name in PROMPT_COORDS:
        if name in layer_da.coords and layer_da[name].dims == ("token",):
            coords[name] = ("prompt", np.asarray(layer_da[name].values)[first])
    coords["n_tokens"] = ("prompt", counts.astype(np.int64))
    per_prompt = xr.Dataset(coords={"prompt": prompts, **coords})
    base = DataArraySource(layer_da)
    source = base if kept.size == n else SubsetSource(base, kept, block)
    return TokenRows(source=source, prompt_of=inverse[kept].astype(np.int64), prompts=prompts, coords=per_prompt,
                     n_tokens=n, n_excluded=n - kept.size)


def split_prompts(prompt_of: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows), sorted, holding out whole prompts: ``round(fraction * n_prompts)``
    prompts (at least one, and at least one left for training) drawn by ``seed``, with every one of their rows.

    ``prompt_of`` [n_rows]: each row's prompt (0..n_prompts-1). The prompts are drawn as
    :func:`mechflow.sae.data.split_rows` draws blocks of one row, so a pooled run with ``shuffle_block: 1``
    and the same seed holds out the same prompts.
    """
    prompt_of = np.asarray(prompt_of, dtype=np.int64)
    n_prompts = int(prompt_of.max()) + 1 if prompt_of.size else 0
    if n_prompts < 2:
        raise ValueError(f"cannot hold out validation prompts: the rows come from {n_prompts} prompt(s)")
    _, val_prompts = split_rows(n_prompts, fraction, seed, 1)
    held = np.zeros(n_prompts, dtype=bool)
    held[val_prompts] = True
    return np.flatnonzero(~held[prompt_of]), np.flatnonzero(held[prompt_of])


class TokenPooler:
    """Accumulates token-level feature activations into one row per prompt (max or mean over its rows).

    ``add(acts [b, F], prompt_of [b])`` in any number of batches (a prompt may span several);
    ``result()`` -> [n_prompts, F] float32. Vectorised with ``scatter_reduce`` over all features.
    """

    def __init__(self, n_prompts: int, n_features: int, how: TokenPooling = "max", device: str | torch.device = "cpu"):
        if how not in TOKEN_POOLING:
            raise ValueError(f"token_pooling must be one of {list(TOKEN_POOLING)}, got {how!r}")
        self.how = how
        fill = float("-inf") if how == "max" else 0.0
        self.acc = torch.full((int(n_prompts), int(n_features)), fill, dtype=torch.float32, device=device)
        self.count = torch.zeros(int(n_prompts), dtype=torch.int64, device=device)

    def add(self, acts: torch.Tensor, prompt_of: torch.Tensor) -> None:
        if acts.ndim != 2 or acts.shape[1] != self.acc.shape[1] or prompt_of.shape != acts.shape[:1]:
            raise ValueError(f"expected acts [b, {self.acc.shape[1]}] and prompt_of [b], got {tuple(acts.shape)} and "
                             f"{tuple(prompt_of.shape)}")
        idx = prompt_of.to(self.acc.device, torch.int64)
        self.acc.scatter_reduce_(0, idx[:, None].expand(-1, acts.shape[1]), acts.to(self.acc), "amax" if self.how == "max"
                                 else "sum", include_self=True)
        self.count += torch.bincount(idx, minlength=self.count.numel())

    def result(self) -> np.ndarray:
        if (self.count == 0).any():
            missing = torch.nonzero(self.count == 0).flatten()[:5].tolist()
            raise ValueError(f"{int((self.count == 0).sum())} prompt(s) received no token (positions {missing})")
        out = self.acc if self.how == "max" else self.acc / self.count[:, None].to(self.acc.dtype)
        return out.cpu().numpy().astype(np.float32, copy=False)


def pool_tokens(acts: torch.Tensor | np.ndarray, prompt_of: torch.Tensor | np.ndarray, n_prompts: int,
                how: TokenPooling = "max") -> np.ndarray:
    """[n_rows, F] token rows -> [n_prompts, F] float32: the max or mean over each prompt's rows."""
    acts = torch.as_tensor(acts, dtype=torch.float32)
    pooler = TokenPooler(n_prompts, acts.shape[1], how, acts.device)
    pooler.add(acts, torch.as_tensor(prompt_of))
    return pooler.result()
