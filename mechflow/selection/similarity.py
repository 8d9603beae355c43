"""Similarity of candidate samples to a target task, and ranking metrics (MoNA, Ma et al. 2025).

Shapes: ``X`` [n, f] candidates (one row per sample), ``T`` [m, f] target samples, ``p`` [f] a prototype.
Every function is one batched tensor operation over all candidates and features, taken over chunks of
candidate rows to bound memory (never a Python loop over samples or features).

* :func:`generalized_jaccard` ``J(x, p) = sum_i min(x_i, p_i) / sum_i max(x_i, p_i)``, for nonnegative
  vectors (SAE activations are >= 0 for every mechflow architecture). A negative entry is an error:
  raw activations are mixed-sign, and for them the baseline is cosine (:func:`cosine_similarity`).
  ``J`` is 0 where both vectors are all zero (nothing shared).
* :func:`prototype`: the mean of the target samples' vectors (the task prototype of MoNA).
* :func:`similarity_to_target`: a metric against the prototype (``aggregate="prototype"``) or the
  highest similarity to any single target sample (``aggregate="max"``; pairwise Jaccard through the L1
  distance, ``sum min = (|x| + |y| - |x - y|_1) / 2`` and ``sum max = (|x| + |y| + |x - y|_1) / 2``).
* :func:`rank` (1 = most similar, ties by row order), :func:`precision_at_k`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["METRICS", "AGGREGATES", "generalized_jaccard", "generalized_jaccard_pairwise", "cosine_similarity",
           "cosine_pairwise", "prototype", "similarity_to_target", "rank", "precision_at_k"]

Metric = Literal["jaccard", "cosine"]
Aggregate = Literal["prototype", "max"]
METRICS: tuple[str, ...] = ("jaccard", "cosine")
AGGREGATES: tuple[str, ...] = ("prototype", "max")

#: relative size below which the L1 form of sum min is rounding error, set to 0 (float64 cancellation)
_ROUNDING = 1e-12
#: elements of one chunk of a batched operation (float64: 128 MiB)
CHUNK_ELEMENTS = 1 << 24


def _tensor(x: np.ndarray | torch.Tensor, name: str, ndim: int) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    t = t.detach().to(torch.float64)
    if torch.isnan(t).any():
        raise ValueError(f"{name} holds NaN values")
    return t


def _nonnegative(t: torch.Tensor, name: str) -> torch.Tensor:
    if (t < 0).any():
        raise ValueError(f"generalized Jaccard needs nonnegative vectors, but {name} has {int((t < 0).sum())} negative "
                         "value(s); SAE activations are >= 0, raw activations are mixed-sign (use cosine for those)")
    return t


def _chunk(rows_cost: int, chunk: int | None) -> int:
    """Candidate rows per chunk: ``chunk`` if given, else as many as keep a chunk under CHUNK_ELEMENTS."""
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        return int(chunk)
    return max(1, CHUNK_ELEMENTS // max(1, rows_cost))


def _check_width(X: torch.Tensor, f: int, what: str) -> None:
    if X.shape[1] != f:
        raise ValueError(f"candidates have {X.shape[1]} features but {what} has {f}")


def generalized_jaccard(X: np.ndarray | torch.Tensor, p: np.ndarray | torch.Tensor, chunk: int | None = None) -> np.ndarray:
    """``sum_i min(X[j, i], p[i]) / sum_i max(X[j, i], p[i])`` for every row j: [n] float64 in [0, 1].

    X [n, f] and p [f] nonnegative (ValueError otherwise); 0 where a row and ``p`` are both all zero.
    ``chunk``: candidate rows per batched step (None: sized to keep a step under 2^24 elements).
    """
    X, p = _nonnegative(_tensor(X, "X", 2), "X"), _nonnegative(_tensor(p, "p", 1), "p")
    _check_width(X, p.shape[0], "p")
    out = torch.zeros(X.shape[0], dtype=torch.float64)
    step = _chunk(X.shape[1], chunk)
    for s in range(0, X.shape[0], step):
        x = X[s : s + step]
        num = torch.minimum(x, p).sum(1)
        den = torch.maximum(x, p).sum(1)
        out[s : s + step] = torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return out.numpy()


def generalized_jaccard_pairwise(X: np.ndarray | torch.Tensor, T: np.ndarray | torch.Tensor, chunk: int | None = None) -> np.ndarray:
    """Generalized Jaccard of every candidate with every target sample: [n, m] float64.

    ``J = (|x|_1 + |t|_1 - |x - t|_1) / (|x|_1 + |t|_1 + |x - t|_1)`` (nonnegative x, t), with the L1 distance
    from ``torch.cdist``: memory O(chunk * m), never [n, m, f].
    """
    X, T = _nonnegative(_tensor(X, "X", 2), "X"), _nonnegative(_tensor(T, "T", 2), "T")
    _check_width(X, T.shape[1], "the target")
    out = torch.zeros(X.shape[0], T.shape[0], dtype=torch.float64)
    st = T.sum(1)
    step = _chunk(X.shape[1] + T.shape[0], chunk)
    for s in range(0, X.shape[0], step):
        x = X[s : s + step]
        l1 = torch.cdist(x, T, p=1)
        total = x.sum(1, keepdim=True) + st[None, :]
        num = total - l1  # 2 * sum min: cancels to rounding error (not exactly 0) where nothing is shared
        num = torch.where(num > _ROUNDING * total, num, 0.0)
        den = total + l1
        out[s : s + step] = torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return out.clamp_(0.0, 1.0).numpy()


def cosine_similarity(X: np.ndarray | torch.Tensor, p: np.ndarray | torch.Tensor, chunk: int | None = None) -> np.ndarray:
    """Cosine of every row of X [n, d] with p [d]: [n] float64 (any sign; 0 where a norm is 0)."""
    X, p = _tensor(X, "X", 2), _tensor(p, "p", 1)
    _check_width(X, p.shape[0], "p")
    out = torch.zeros(X.shape[0], dtype=torch.float64)
    pn = p.norm()
    step = _chunk(X.shape[1], chunk)
    for s in range(0, X.shape[0], step):
        x = X[s : s + step]
        den = x.norm(dim=1) * pn
        out[s : s + step] = torch.where(den > 0, (x @ p) / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return out.numpy()


def cosine_pairwise(X: np.ndarray | torch.Tensor, T: np.ndarray | torch.Tensor, chunk: int | None = None) -> np.ndarray:
    """Cosine of every candidate with every target sample: [n, m] float64 (0 where a norm is 0)."""
    X, T = _tensor(X, "X", 2), _tensor(T, "T", 2)
    _check_width(X, T.shape[1], "the target")
    Tn = T / T.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    out = torch.zeros(X.shape[0], T.shape[0], dtype=torch.float64)
    step = _chunk(X.shape[1] + T.shape[0], chunk)
    for s in range(0, X.shape[0], step):
        x = X[s : s + step]
        out[s : s + step] = (x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)) @ Tn.T
    return out.numpy()


def prototype(T: np.ndarray | torch.Tensor) -> np.ndarray:
    """The task prototype: the mean of the target samples' vectors T [m, f] -> [f] float64."""
    T = _tensor(T, "T", 2)
    if T.shape[0] == 0:
        raise ValueError("the target has no samples: a prototype needs at least one")
    return T.mean(0).numpy()


def similarity_to_target(X: np.ndarray | torch.Tensor, T: np.ndarray | torch.Tensor, metric: Metric = "jaccard",
                         aggregate: Aggregate = "prototype", chunk: int | None = None) -> np.ndarray:
    """Similarity of each candidate X [n, f] to the target task T [m, f]: [n] float64.

    ``metric``: ``jaccard`` (generalized Jaccard, nonnegative inputs) or ``cosine``. ``aggregate``:
    ``prototype`` compares with the mean target vector (:func:`prototype`); ``max`` takes the highest
    similarity to any one target sample.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    if aggregate == "prototype":
        p = prototype(T)
        return generalized_jaccard(X, p, chunk) if metric == "jaccard" else cosine_similarity(X, p, chunk)
    if aggregate == "max":
        if len(T) == 0:
            raise ValueError("the target has no samples")
        pair = generalized_jaccard_pairwise(X, T, chunk) if metric == "jaccard" else cosine_pairwise(X, T, chunk)
        return pair.max(1)
    raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}")


def rank(scores: np.ndarray) -> np.ndarray:
    """Rank of each candidate by descending score: [n] int64, 1 = most similar; ties keep row order, NaN last."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    key = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(-key, kind="stable")
    out = np.empty(s.size, dtype=np.int64)
    out[order] = np.arange(1, s.size + 1)
    return out


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Fraction of relevant candidates among the ``k`` best ranked by ``scores`` (:func:`rank`); k > n uses n."""
    relevant = np.asarray(relevant, dtype=bool)
    if relevant.shape != np.shape(scores):
        raise ValueError(f"relevant has shape {relevant.shape}, scores {np.shape(scores)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if relevant.size == 0:
        raise ValueError("no candidates")
    top = rank(scores) <= min(int(k), relevant.size)
    return float(relevant[top].mean())
