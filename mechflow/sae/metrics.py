"""Evaluation metrics of a trained SAE."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

#: a latent active on more than this fraction of the evaluated samples counts as dense
DENSE_FREQ = 0.1


def fvu(x: torch.Tensor, recon: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - recon||^2 / sum ||x - mean(x)||^2 over rows [n, d]."""
    total = (x - x.mean(0, keepdim=True)).double().pow(2).sum()
    if total <= 0:
        raise ValueError("FVU is undefined for inputs with zero variance")
    return float((x - recon).double().pow(2).sum() / total)


def l0(acts: torch.Tensor) -> float:
    """Mean number of non-zero activations per row of ``acts`` [n, n_features]."""
    return float((acts != 0).sum(1).double().mean())


def mmcs(learned: torch.Tensor, true: torch.Tensor) -> float:
    """Mean max cosine similarity: for each true feature (row of ``true`` [G, d]), the best cosine
    with any learned feature (row of ``learned`` [F, d]), averaged over the true features."""
    if learned.ndim != 2 or true.ndim != 2 or learned.shape[1] != true.shape[1]:
        raise ValueError(f"mmcs needs [F, d] and [G, d] with the same d, got {tuple(learned.shape)} and {tuple(true.shape)}")
    a = torch.nn.functional.normalize(learned.double(), dim=1)
    b = torch.nn.functional.normalize(true.double(), dim=1)
    return float((b @ a.T).max(1).values.mean())


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[torch.Tensor], counts: bool = False) -> dict[str, float]:
    """Inference metrics of ``model`` over row batches [b, d_in] (streamed; memory of one batch).

    ``fvu``: sum of squared errors over the total variance of all rows; ``l0``: mean active latents
    per row; ``dead_fraction``: latents active on no row; ``dense_fraction``: latents active on more
    than :data:`DENSE_FREQ` of the rows; ``n``: rows. With ``counts``, also ``counts``: the rows each
    latent is active on, [n_features] int64 numpy.
    """
    n, sse, sq, fired = 0, 0.0, 0.0, None
    total = None
    active_sum = 0.0
    for xb in batches:
        acts = model.encode(xb)
        recon = model.decode(acts)
        active = acts != 0
        sse += float((xb - recon).double().pow(2).sum())
        sq += float(xb.double().pow(2).sum())
        total = xb.double().sum(0) if total is None else total + xb.double().sum(0)
        c = active.sum(0)
        fired = c if fired is None else fired + c
        active_sum += float(active.sum())
        n += xb.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate on zero rows")
    var = sq - float(total.pow(2).sum()) / n
    if var <= 0:
        raise ValueError("FVU is undefined for inputs with zero variance")
    freq = fired.double() / n
    out = {"fvu": sse / var, "l0": active_sum / n, "dead_fraction": float((fired == 0).double().mean()),
           "dense_fraction": float((freq > DENSE_FREQ).double().mean()), "n": n}
    if counts:
        out["counts"] = fired.long().cpu().numpy()
    return out


#: edges of the feature-density histogram: log10 of the fraction of rows a latent fires on, plus
#: :data:`DENSITY_EPS` (SAELens's ``log10(density + 1e-10)``: a dead latent lands in the first bin)
DENSITY_EDGES = np.arange(-10.0, 0.01, 0.5)
DENSITY_EPS = 1e-10


def density_histogram(counts: np.ndarray, n: int, edges: np.ndarray = DENSITY_EDGES) -> np.ndarray:
    """Latents per bin of ``log10(counts / n + 1e-10)`` [len(edges) - 1] int64 (``counts`` [n_features]: rows
    each latent fired on, of ``n`` rows); values outside the edges count in the first or last bin."""
    if n < 1:
        raise ValueError("a feature density needs at least one row")
    log_density = np.log10(np.asarray(counts, dtype=np.float64) / n + DENSITY_EPS)
    return np.histogram(np.clip(log_density, edges[0], edges[-1]), bins=edges)[0].astype(np.int64)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """Inference FVU, L0, dead and dense fractions of ``model`` on ``x`` [n, d_in] (batched; see
    :func:`evaluate_batches`)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    out = evaluate_batches(model, (x[i : i + batch] for i in range(0, x.shape[0], batch)))
    out.pop("n")
    return out
