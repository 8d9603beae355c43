"""Evaluation metrics of a trained SAE."""

from __future__ import annotations

import torch


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
def evaluate(model: torch.nn.Module, x: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """Inference FVU and L0 of ``model`` on ``x`` [n, d_in] (batched)."""
    recons, l0s = [], []
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch]
        acts = model.encode(xb)
        recons.append(model.decode(acts))
        l0s.append((acts != 0).sum(1).double())
    return {"fvu": fvu(x, torch.cat(recons)), "l0": float(torch.cat(l0s).mean())}
