"""Every token of the prompts as a feature set sees it: top contexts, histograms and densities per feature.

A token file (rule ``extract_tokens``: ``activations`` [token, layer, unit] with ``prompt_index``, ``position``,
``token_str`` and ``excluded`` per token) is encoded block by block; an SAE's token values are kept sparse
(scipy CSC, zeros dropped), other sets dense. Excluded tokens (the sink) are shown, never counted or highlighted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mechflow.explorer.sets import FeatureSet
from mechflow.io import open_dataarray

__all__ = ["TokenTable", "token_table", "FeatureTokens", "feature_tokens"]


@dataclass
class TokenTable:
    """prompt, position: [token] int64 (sorted by prompt, then position); token: [token] str; excluded: [token] bool;
    values: [token, feature] float32, scipy CSC (sparse sets) or ndarray; starts: [prompt + 1] each prompt's first row."""

    prompt: np.ndarray
    position: np.ndarray
    token: np.ndarray
    excluded: np.ndarray
    values: sp.csc_matrix | np.ndarray
    starts: np.ndarray

    @property
    def n_real(self) -> int:
        return int((~self.excluded).sum())

    def column(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and values of feature ``f`` at real tokens: nonzeros of a sparse set, every row of a dense one."""
        if sp.issparse(self.values):
            lo, hi = self.values.indptr[f], self.values.indptr[f + 1]
            rows, vals = self.values.indices[lo:hi], self.values.data[lo:hi]
        else:
            rows = np.arange(self.values.shape[0])
            vals = self.values[:, f]
        keep = ~self.excluded[rows]
        return rows[keep], vals[keep]


def _blocks(n: int, block: int) -> Iterator[slice]:
    for lo in range(0, n, block):
        yield slice(lo, min(n, lo + block))


def token_table(tokens_path: str | Path, layer: int, fs: FeatureSet, n_prompts: int, block: int = 2048) -> TokenTable:
    """Encode every token of ``tokens_path`` at ``layer`` with ``fs`` (its ``token_values`` where the set has them)."""
    da = open_dataarray(tokens_path)
    try:
        layers = da["layer"].values.tolist()
        if layer not in layers:
            raise ValueError(f"{tokens_path}: layer {layer} was not extracted at token level (have {layers})")
        prompt = np.asarray(da["prompt_index"].values, dtype=np.int64)
        position = np.asarray(da["position"].values, dtype=np.int64)
        token = np.asarray(da["token_str"].values).astype(str)
        excluded = (np.asarray(da["excluded"].values, dtype=bool) if "excluded" in da.coords
                    else np.zeros(prompt.size, dtype=bool))
        order = np.lexsort((position, prompt))
        if not np.array_equal(order, np.arange(order.size)):
            raise ValueError(f"{tokens_path}: tokens are not ordered by prompt and position")
        if fs.token_values is not None and fs.token_prompt is not None and np.array_equal(fs.token_prompt, prompt):
            values: sp.csc_matrix | np.ndarray = fs.token_values.astype(np.float32)
        else:
            x = da.sel(layer=layer)
            parts = [fs.encode(np.asarray(x[s].values, dtype=np.float32)) for s in _blocks(prompt.size, block)]
            if fs.kind == "sae":
                values = sp.vstack([sp.csr_matrix(p) for p in parts]).tocsc()
                values.sort_indices()
            else:
                values = np.concatenate(parts).astype(np.float32)
    finally:
        da.close()
    if values.shape[1] != fs.n_features:
        raise ValueError(f"token values have {values.shape[1]} features, the set has {fs.n_features}")
    starts = np.searchsorted(prompt, np.arange(n_prompts + 1))
    return TokenTable(prompt, position, token, excluded, values, starts)


@dataclass
class FeatureTokens:
    """One feature over every real token: ``contexts`` (top prompts, each a dict of prompt, tokens, values, max),
    ``hist`` (edges, counts of its nonzero token values), ``density`` (fraction of real tokens > 0), ``max``."""

    contexts: list[dict]
    hist: dict
    density: float
    max: float


def _round(a: np.ndarray, digits: int = 4) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(a, dtype=np.float64)]


def feature_tokens(table: TokenTable, f: int, n_contexts: int = 10, bins: int = 24) -> FeatureTokens:
    """Feature ``f``'s top contexts (prompts ranked by their largest token value), histogram, density and max."""
    rows, vals = table.column(f)
    nonzero = vals[vals != 0]
    density = float((vals > 0).sum() / max(table.n_real, 1))
    top = float(vals.max()) if vals.size else 0.0
    if nonzero.size:
        counts, edges = np.histogram(nonzero, bins=bins)
        hist = {"edges": _round(edges), "counts": counts.astype(int).tolist()}
    else:
        hist = {"edges": [], "counts": []}
    contexts = []
    if vals.size:
        by_value = np.argsort(-vals, kind="stable")
        prompts = table.prompt[rows[by_value]]
        _, first = np.unique(prompts, return_index=True)
        for i in np.sort(first)[:n_contexts]:
            p = int(prompts[i])
            if vals[by_value[i]] <= 0 and contexts:
                break
            lo, hi = table.starts[p], table.starts[p + 1]
            a, b = np.searchsorted(rows, [lo, hi])
            tv = np.zeros(hi - lo)
            tv[rows[a:b] - lo] = vals[a:b]
            contexts.append({"prompt": p, "tokens": table.token[lo:hi].tolist(), "values": _round(tv, 3),
                             "excluded": np.flatnonzero(table.excluded[lo:hi]).tolist(), "max": _round([vals[by_value[i]]])[0]})
    return FeatureTokens(contexts, hist, density, top)
