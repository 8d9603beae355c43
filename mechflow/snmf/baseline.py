"""A straightforward dense PyTorch semi-NMF with the same update rules as :func:`mechflow.snmf.fit`.

Written plainly and independently of :mod:`mechflow.snmf.algorithm`: every loss from an explicit
[units, samples] residual, the G update of Ding, Li & Jordan (2010) written out, a dense solve,
sort-based winner-take-all and a plain masked conjugate-gradient refit. The tests check ``fit``
against it and ``benchmarks/snmf.py`` times ``fit`` against it.
"""

from __future__ import annotations

import torch


def dense_reference_fit(A: torch.Tensor, G0: torch.Tensor, n_keep: int, n_iter: int, ridge: float = 1e-6,
                        refit_iter: int = 5, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Semi-NMF of ``A`` [units, samples] from ``G0`` [samples, K] for ``n_iter`` iterations (tol = 0).

    Returns F [units, K] (``n_keep`` units per column), G [samples, K] (>= 0, unit-norm columns) and
    the relative losses ``||A - F G^T||^2 / ||A||^2`` [n_iter + 1] (the first at the initialisation).
    """
    A2 = (A * A).sum()
    K = G0.shape[1]

    def loss(F, G):
        return float(((A - F @ G.T) ** 2).sum() / A2)

    def wta(F):
        order = F.abs().argsort(dim=0, descending=True)
        return torch.zeros_like(F, dtype=torch.bool).scatter_(0, order[:n_keep], True)

    def refit(F, mask, G):
        H, B, m = G.T @ G, A @ G, mask.to(F.dtype)
        R = (B - F @ H) * m
        D = R.clone()
        for _ in range(refit_iter):
            HD = (D @ H) * m
            dHd, rd = (D * HD).sum(1), (R * D).sum(1)
            alpha = torch.where(dHd > 0, rd / torch.where(dHd > 0, dHd, 1.0), 0.0)[:, None]
            F, R_new = F + alpha * D, R - alpha * HD
            rr, rr_new = (R * R).sum(1), (R_new * R_new).sum(1)
            beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, 1.0), 0.0)[:, None]
            R, D = R_new, R_new + beta * D
        return F

    def ls_step(G):
        F = torch.linalg.solve(G.T @ G + ridge * torch.eye(K, dtype=G.dtype, device=G.device), (A @ G).T).T
        mask = wta(F) if n_keep < A.shape[0] else torch.ones_like(F, dtype=torch.bool)
        return refit(F * mask, mask, G), mask

    G = G0 / G0.norm(dim=0)
    F, mask = ls_step(G)
    losses = [loss(F, G)]
    for _ in range(n_iter):
        P, Q = A.T @ F, F.T @ F
        G_new = G * torch.sqrt((P.clamp(min=0) + G @ (-Q).clamp(min=0)) / ((-P).clamp(min=0) + G @ Q.clamp(min=0) + eps))
        norms = G_new.norm(dim=0)
        G_new, F_s = G_new / norms, F * norms
        loss_g = loss(F_s, G_new)
        F_new, mask_new = ls_step(G_new)
        if loss(F_new, G_new) > loss_g:  # guarded: fall back to one IHT step from the current F
            H = G_new.T @ G_new
            F_iht = F_s + (A @ G_new - F_s @ H) / torch.linalg.eigvalsh(H)[-1]
            mask_new = wta(F_iht)
            F_new = refit(F_iht * mask_new, mask_new, G_new)
            if loss(F_new, G_new) > loss_g:
                F_new, mask_new = F_s, mask
        F, G, mask = F_new, G_new, mask_new
        losses.append(loss(F, G))
    return F * mask, G, losses
