"""The ranking of a selection as an xarray Dataset (``ranking.nc``) and a table sorted by the SAE score (``ranking.csv``).

Dataset, dim ``candidate`` (the candidates' row order in their CSV): per method m, ``score_<m>`` (float64,
higher = closer to the target task) and ``rank_<m>`` (int64, 1 = closest; ties keep row order);
``selected`` (the ``top_n`` best by ``score_jaccard``), ``n_active`` (SAE features active in the candidate's
mean code), coordinates ``id``, ``text``, ``n_tokens`` and the CSV's other columns; ``prototype``
[``feature``]: the target's mean SAE code. With an evaluation label, ``relevant`` [candidate] and one
scalar ``precision_<m>`` per method (precision at ``top_n``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.selection.similarity import precision_at_k, rank

__all__ = ["METHODS", "BASELINES", "PRIMARY", "ranking_dataset", "ranking_table"]

#: every method's score, as written in the attrs of ``score_<method>``
METHODS: dict[str, str] = {
    "jaccard": "generalized Jaccard similarity sum_i min(x_i, p_i) / sum_i max(x_i, p_i) of the candidate's mean SAE "
               "activations x to the target's (MoNA, Ma et al. 2025)",
    "sae_cosine": "cosine similarity of the candidate's mean SAE activations to the target's",
    "raw_cosine": "cosine similarity of the candidate's mean raw activations (the SAE's hook and layer, the same tokens) "
                  "to the target's",
    "embedding": "cosine similarity of the candidate's sentence embedding (mean-pooled, L2-normalised) to the target's",
}
#: the method the selection ranks by; the others are baselines
PRIMARY = "jaccard"
BASELINES: tuple[str, ...] = tuple(m for m in METHODS if m != PRIMARY)
_RESERVED = frozenset({"candidate", "feature", "selected", "n_active", "n_tokens", "relevant", "prototype", "rank"})
AGGREGATE_DOC = {"prototype": "against the target prototype (the mean of the target samples' vectors)",
                 "max": "the highest similarity to any one target sample"}


def ranking_dataset(candidates: pd.DataFrame, scores: dict[str, np.ndarray], top_n: int, aggregate: str = "prototype",
                    n_tokens: np.ndarray | None = None, n_active: np.ndarray | None = None,
                    prototype: np.ndarray | None = None, relevant: np.ndarray | None = None,
                    attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """The ranking Dataset (module docstring) of ``candidates`` (columns ``id``, ``text``, others: coordinates)
    from ``scores`` (method -> [n]; must hold ``jaccard``). ``relevant`` [n] bool: an evaluation label."""
    if PRIMARY not in scores:
        raise ValueError(f"scores must include {PRIMARY!r}, got {sorted(scores)}")
    unknown = set(scores) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {list(METHODS)}")
    n = len(candidates)
    methods = [PRIMARY] + [m for m in METHODS if m in scores and m != PRIMARY]
    coords: dict[str, Any] = {"candidate": np.arange(n, dtype=np.int64)}
    for col in candidates.columns:  # a CSV column named like an output variable is kept as csv_<name>
        name = f"csv_{col}" if col in _RESERVED or str(col).startswith(("score_", "rank_", "precision_")) else str(col)
        coords[name] = ("candidate", candidates[col].astype(str).to_numpy())
    if n_tokens is not None:
        coords["n_tokens"] = ("candidate", np.asarray(n_tokens, dtype=np.int64))
    data: dict[str, Any] = {}
    how = AGGREGATE_DOC[aggregate]
    for m in methods:
        s = np.asarray(scores[m], dtype=np.float64)
        if s.shape != (n,):
            raise ValueError(f"scores[{m!r}] has shape {s.shape}, expected ({n},)")
        data[f"score_{m}"] = xr.Variable("candidate", s, {"description": f"{METHODS[m]}, {how}"})
        data[f"rank_{m}"] = xr.Variable("candidate", rank(s), {"description": f"rank by score_{m}: 1 = most similar; "
                                                                              "ties keep the candidates' row order"})
    data["selected"] = xr.Variable("candidate", data[f"rank_{PRIMARY}"].values <= top_n,
                                   {"description": f"among the top_n = {top_n} candidates by score_{PRIMARY}"})
    if n_active is not None:
        data["n_active"] = xr.Variable("candidate", np.asarray(n_active, dtype=np.int64),
                                       {"description": "SAE features active (> 0) in the candidate's mean code"})
    if prototype is not None:
        data["prototype"] = xr.Variable("feature", np.asarray(prototype, dtype=np.float32),
                                        {"description": "the target prototype: mean of the target samples' mean SAE codes"})
        coords["feature"] = np.arange(len(data["prototype"].values), dtype=np.int64)
    if relevant is not None:
        relevant = np.asarray(relevant, dtype=bool)
        coords["relevant"] = ("candidate", relevant)
        for m in methods:
            data[f"precision_{m}"] = xr.Variable((), precision_at_k(data[f"score_{m}"].values, relevant, top_n),
                                                 {"description": f"fraction of relevant candidates among the top_n = "
                                                                 f"{top_n} by score_{m}", "k": int(top_n)})
    return xr.Dataset(data, coords=coords, attrs={**(attrs or {}), "methods": ",".join(methods), "primary": PRIMARY,
                                                  "top_n": int(top_n), "aggregate": aggregate})


def ranking_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per candidate, sorted by ``rank_jaccard``: rank, id, text, selected, each method's score (and the
    baselines' ranks), n_tokens, n_active, relevant, then the CSV's other columns."""
    methods = str(ds.attrs.get("methods", PRIMARY)).split(",")
    cols: dict[str, Any] = {"rank": ds[f"rank_{PRIMARY}"].values, "id": ds["id"].values, "text": ds["text"].values,
                            "selected": ds["selected"].values}
    for m in methods:
        cols[f"score_{m}"] = ds[f"score_{m}"].values
        if m != PRIMARY:
            cols[f"rank_{m}"] = ds[f"rank_{m}"].values
    for name in ("n_tokens", "n_active", "relevant"):
        if name in ds.variables:
            cols[name] = ds[name].values
    for name, var in ds.coords.items():
        if var.dims == ("candidate",) and name not in cols and name != "candidate":
            cols[name] = var.values
    return pd.DataFrame(cols).sort_values("rank", kind="stable").reset_index(drop=True)
