"""Semi-nonnegative matrix factorisation of MLP activations (Shafran, Geiger & Geva 2025).

``A [units, samples] ~ F G^T`` with ``F [units, factors]`` mixed-sign and sparse per column
(winner-take-all: each factor keeps exactly ``n_keep = ceil(sparsity * units)`` units) and
``G [samples, factors] >= 0``, the factor activations per sample (prompt).

One iteration
-------------
1. **G step**: the multiplicative semi-NMF update of Ding, Li & Jordan (2010),
   ``G <- G * sqrt(((A^T F)+ + G (F^T F)-) / ((A^T F)- + G (F^T F)+))``, through
   :func:`mechflow.kernels.snmf_update_g` (the fused Triton kernel on CUDA, the PyTorch reference
   on CPU; ``backend=`` picks one). For fixed F it never increases ``||A - F G^T||^2`` (Ding et al., Theorem 1).
2. **Rescale** G's columns to unit norm; F's columns absorb the scale (the product is unchanged).
3. **F step**: ridge least squares ``F_ls = A G (G^T G + ridge I)^-1``; winner-take-all keeps the
   ``n_keep`` largest ``|F_ls|`` per column; the kept entries are then refit by ``refit_iter``
   conjugate-gradient steps on the unregularised least-squares problem restricted to that support
   (one batched CG per unit row, exact line search, so every step lowers the loss).

Monotone objective
------------------
The recorded objective is the *relative squared reconstruction error of the sparse model*,
``loss = ||A - F G^T||_F^2 / ||A||_F^2``, at the end of every iteration (``loss[0]`` is the
initialisation). Sparsifying the ridge solution can raise it, so the F step is guarded: the new
support's refit is accepted only if its loss is not above that of the current F (rescaled, with the
new G); otherwise F takes one iterative-hard-thresholding step from the current F (gradient step
of length 1 / lambda_max(G^T G), then winner-take-all; a majorisation argument shows it cannot raise
the loss, yet lets supports move) followed by the CG refit on that support, and if rounding still
made that worse, F stays as it is. With the G step's non-increase (a theorem) the objective is therefore
non-increasing; a final check on the whole iteration makes this hold at working precision too (an
iteration whose loss would rise, which only floating-point rounding can cause, is discarded and the
fit stops with ``stop_reason='precision'``). Alternating sparse fits have local minima: use
``n_init`` restarts ('kmeans' or 'random') and keep the lowest loss. Losses come from Gram identities
(``||A||^2 - 2<F, A G> + <F G^T G, F>``), so no ``[units, samples]`` residual is ever formed.

Scale: A is divided by ``||A||_F`` internally (so ``eps`` and ``ridge`` are scale-free) and F is
multiplied back at the end. G's columns have unit Euclidean norm.

Out of core: every product along the samples runs over fixed blocks of samples
(:class:`mechflow.snmf.blocks.SampleBlocks`), each iteration in one pass over them; with
``in_memory=False`` the blocks are read from the file at every pass, so memory holds one block plus
``G`` [samples, factors], and the result is the same to the bit as with A in memory.

Determinism: a multi-threaded BLAS product over the long sample axis rounds differently for each
thread count, so the fit runs at a fixed intra-op thread count (``num_threads``, default 1) and
spreads its large products over the caller's threads as fixed row blocks of single-threaded
products: F, G and the losses are bit-identical whatever ``torch.set_num_threads`` the caller
chose. The wall time goes to the log, not into the result's data.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mechflow.kernels.threads import RowBlockMatmul, torch_threads
from mechflow.snmf.blocks import SampleBlocks
from mechflow.snmf.config import INITS, Init, SNMFError, SNMFRunConfig
from mechflow.snmf.inputs import as_blocks, n_keep_for, user_G0
from mechflow.snmf.result import SNMFResult

log = logging.getLogger(__name__)

#: ``mm(a, b) -> a @ b``: the products that grow with the sample axis go through one (see :func:`fit`)
Matmul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _plain_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


#: defaults of the run keys of :func:`fit`: those of :class:`SNMFRunConfig` (the workflow's too)
DEFAULTS: dict[str, Any] = SNMFRunConfig.defaults()

# --------------------------------------------------------------------------------------------
# building blocks (all vectorised over factors)
# --------------------------------------------------------------------------------------------


def _rel_loss(F: torch.Tensor, B: torch.Tensor, H: torch.Tensor) -> float:
    """``||A - F G^T||^2`` for ``||A||_F = 1`` from ``B = A G`` [units, K] and ``H = G^T G`` [K, K]."""
    return max(0.0, float(1.0 - 2.0 * (F * B).sum() + ((F @ H) * F).sum()))


def _top_mask(F: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Winner-take-all support [units, K] (bool): the ``n_keep`` largest ``|F|`` per column."""
    if n_keep >= F.shape[0]:
        return torch.ones_like(F, dtype=torch.bool)
    idx = F.abs().topk(n_keep, dim=0, sorted=False).indices
    return torch.zeros_like(F, dtype=torch.bool).scatter_(0, idx, True)


def _refit(F: torch.Tensor, mask: torch.Tensor, B: torch.Tensor, H: torch.Tensor, n_iter: int) -> torch.Tensor:
    """Conjugate-gradient steps on ``min ||A - F G^T||^2`` over F supported on ``mask``.

    The problem splits by unit row (``min_f f^T H f - 2 b^T f`` on that row's support); all rows run
    together, each with its own step length. Exact line search (``alpha = r.d / d^T H d``) makes every
    step non-increasing whatever the rounding in the CG recurrences.
    """
    if n_iter <= 0:
        return F
    m = mask.to(F.dtype)
    R = (B - F @ H) * m
    D = R
    rr = (R * R).sum(1)
    for _ in range(n_iter):
        HD = (D @ H) * m
        dHd = (D * HD).sum(1)
        rd = (R * D).sum(1)
        alpha = torch.where(dHd > 0, rd / torch.where(dHd > 0, dHd, 1), 0).unsqueeze(1)
        F = F + alpha * D
        R = R - alpha * HD
        rr_new = (R * R).sum(1)
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, 1), 0).unsqueeze(1)
        D = R + beta * D
        rr = rr_new
    return F


def _ridge_wta(B: torch.Tensor, H: torch.Tensor, ridge: float, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares ``F = B (H + ridge I)^-1`` and its winner-take-all support."""
    K = H.shape[0]
    Hr = H + ridge * torch.eye(K, dtype=H.dtype, device=H.device)
    L, info = torch.linalg.cholesky_ex(Hr)
    if int(info) == 0:
        F = torch.cholesky_solve(B.T, L).T
    else:  # singular G^T G with ridge = 0: least-norm solution
        F = torch.linalg.lstsq(Hr, B.T).solution.T if B.device.type == "cpu" else (torch.linalg.pinv(Hr) @ B.T).T
    mask = _top_mask(F, n_keep)
    return F * mask, mask


def _f_step(
    B: torch.Tensor,
    H: torch.Tensor,
    F_cur: torch.Tensor,
    mask_cur: torch.Tensor,
    loss_cur: float,
    n_keep: int,
    ridge: float,
    refit_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    """Guarded F update; returns (F, mask, loss, fell_back) with loss <= loss_cur."""
    F_new, mask_new = _ridge_wta(B, H, ridge, n_keep)
    F_new = _refit(F_new, mask_new, B, H, refit_iter)
    loss_new = _rel_loss(F_new, B, H)
    if loss_new <= loss_cur:
        return F_new, mask_new, loss_new, False
    # fallback: one iterative-hard-thresholding step from the current F (gradient step of length
    # 1 / lambda_max(G^T G), then winner-take-all), which cannot raise the loss (majorisation), so
    # supports can still move; then the CG refit on the new support
    lam = float(torch.linalg.eigvalsh(H)[-1])
    if lam > 0:
        F_iht = F_cur + (B - F_cur @ H) / lam
        mask_iht = _top_mask(F_iht, n_keep)
        F_iht = _refit(F_iht * mask_iht, mask_iht, B, H, refit_iter)
        loss_iht = _rel_loss(F_iht, B, H)
        if loss_iht <= loss_cur:
            return F_iht, mask_iht, loss_iht, True
    return F_cur, mask_cur, loss_cur, True


def _unit_columns(G: torch.Tensor) -> torch.Tensor:
    """Column norms of G [K], with 1 for all-zero (dead) columns."""
    norms = G.norm(dim=0)
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def _unit_rows(Xb: torch.Tensor) -> torch.Tensor:
    """The samples of one block as rows of unit norm [b, units] (k-means clusters directions)."""
    return Xb.T / Xb.norm(dim=0).clamp(min=torch.finfo(Xb.dtype).tiny)[:, None]


def _kmeans_labels(A: SampleBlocks, K: int, gen: torch.Generator, n_iter: int = 25, mm: Matmul = _plain_mm) -> torch.Tensor:
    """Spherical k-means: k-means++ seeding then Lloyd iterations on the unit-norm samples of A; labels [n].

    One pass over A's blocks per seed and per Lloyd iteration (each accumulates the new centres' sums
    as it assigns labels); the seeds' rows are taken from their whole block.
    """
    n, d = A.shape[1], A.shape[0]
    dtype, device = A.dtype, A.device

    def row(j: int) -> torch.Tensor:
        i, at = A.find(j)
        return _unit_rows(A.block(i))[at]

    x2 = torch.cat([(X * X).sum(1) for X in (_unit_rows(Xb) for _, Xb in A)])
    centres = torch.empty(K, d, dtype=dtype, device=device)
    first = int(torch.randint(n, (1,), generator=gen))
    centres[0] = row(first)

    def dist2(c: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x2[sl] - 2 * _unit_rows(Xb) @ c + c2).clamp(min=0) for sl, Xb in A])

    d2 = dist2(centres[0], x2[first])
    for j in range(1, K):
        w = d2.double().cpu()
        pick = int(torch.multinomial(w, 1, generator=gen)) if float(w.sum()) > 0 else int(torch.randint(n, (1,), generator=gen))
        centres[j] = row(pick)
        d2 = torch.minimum(d2, dist2(centres[j], x2[pick]))
    labels = torch.full((n,), -1, dtype=torch.long, device=device)
    for _ in range(n_iter):
        c2 = (centres * centres).sum(1)[None, :]
        new = torch.empty_like(labels)
        sums = torch.zeros_like(centres)
        for sl, Xb in A:
            X = _unit_rows(Xb)
            new[sl] = (x2[sl, None] - 2 * mm(X, centres.T) + c2).argmin(1)
            sums.index_add_(0, new[sl], X)
        if torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=K).to(dtype)
        keep = counts > 0
        centres[keep] = sums[keep] / counts[keep, None]
    return labels


def _gram_eig(A: SampleBlocks, K: int, mm: Matmul) -> torch.Tensor:
    """``V S`` [samples, K] of A's top-K singular triplets (float64), from the smaller Gram matrix."""
    m, n = A.shape
    if m <= n:
        gram = torch.zeros(m, m, dtype=torch.float64, device=A.device)
        for _, Xb in A:
            X64 = Xb.double()
            gram += mm(X64, X64.T)
        evals, U = torch.linalg.eigh(gram)
        U = U[:, -K:].flip(1)
        VS = torch.empty(n, K, dtype=torch.float64, device=A.device)  # [n, K] = V S
        for sl, Xb in A:
            VS[sl] = mm(Xb.double().T, U)
        return VS
    gram = torch.empty(n, n, dtype=torch.float64, device=A.device)
    for i, si in enumerate(A.slices):
        Xi = A.block(i).double()
        gram[si, si] = mm(Xi.T, Xi)
        for j in range(i + 1, len(A)):
            sj = A.slices[j]
            gram[si, sj] = mm(Xi.T, A.block(j).double())
            gram[sj, si] = gram[si, sj].T
    evals, V = torch.linalg.eigh(gram)
    return V[:, -K:].flip(1) * evals[-K:].flip(0).clamp(min=0).sqrt()


def _sign_parts(VS: torch.Tensor, slices: list[slice]) -> tuple[torch.Tensor, torch.Tensor]:
    """Norms of the positive and of the negative part of each column of VS [samples, K], over row blocks."""
    pos = torch.zeros(VS.shape[1], dtype=VS.dtype, device=VS.device)
    neg = torch.zeros_like(pos)
    for sl in slices:
        part = VS[sl]
        pos += (part.clamp(min=0) ** 2).sum(0)
        neg += (part.clamp(max=0) ** 2).sum(0)
    return pos.sqrt(), neg.sqrt()


def _init_G(A: SampleBlocks, K: int, init: str, seed: int, mm: Matmul = _plain_mm) -> torch.Tensor:
    """Strictly positive initial G [samples, K] (zeros would stay zero under multiplicative updates)."""
    n = A.shape[1]
    gen = torch.Generator().manual_seed(seed)
    if init == "random":
        return torch.rand(n, K, generator=gen, dtype=torch.float64).to(device=A.device, dtype=A.dtype).add_(1e-2)
    if init == "kmeans":
        # spherical k-means: cluster the samples' directions, not their magnitudes (a sample that
        # is mostly one factor points along it, however strongly it activates)
        labels = _kmeans_labels(A, K, gen, mm=mm)
        G = torch.nn.functional.one_hot(labels, K).to(A.dtype)
        return G + 0.2  # Ding, Li & Jordan (2010): cluster indicators + 0.2
    if init == "svd":
        # top-K right singular directions scaled by the singular values, from the smaller Gram
        VS = _gram_eig(A, K, mm)
        # G >= 0 fixes each direction's sign: take the sign with the larger positive part
        pos, neg = _sign_parts(VS, A.slices)
        G = VS.mul_(torch.where(pos >= neg, 1.0, -1.0).to(VS)).clamp_(min=0)  # in place: G is [samples, K]
        # lift every entry (as NNDSVDa fills zeros) so no entry is frozen at zero
        floor = 0.2 * G.mean(0, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny) + 1e-12
        return G.add_(floor).to(A.dtype)
    raise SNMFError(f"init must be one of {INITS}, got {init!r}")


def _times(A: SampleBlocks, G: torch.Tensor, mm: Matmul) -> torch.Tensor:
    """``A G`` [units, K], summed over the blocks in order."""
    out = None
    for sl, Xb in A:
        part = mm(Xb, G[sl])
        out = part if out is None else out + part
    return out


def _g_update_fn(backend: str | None) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """The G update of :mod:`mechflow.kernels`: its process-wide backend (None) or the named one."""
    import mechflow.kernels as kernels

    backends = tuple(getattr(kernels, "BACKENDS", ("auto", "reference")))
    if backend is None:
        return kernels.snmf_update_g
    if backend not in backends:
        raise SNMFError(f"backend must be None (the process-wide kernel setting) or one of {backends}, got {backend!r}")
    if backend == "reference":
        return kernels.snmf_update_g_ref
    use_backend = getattr(kernels, "use_backend", None)
    if use_backend is None:
        return kernels.snmf_update_g

    def update(P: torch.Tensor, Q: torch.Tensor, G: torch.Tensor, eps: float) -> torch.Tensor:
        with use_backend(backend):
            return kernels.snmf_update_g(P, Q, G, eps)

    return update


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def fit(
    A: Any,
    n_factors: int,
    sparsity: float = DEFAULTS["sparsity"],
    init: Init | np.ndarray | torch.Tensor = DEFAULTS["init"],
    max_iter: int = DEFAULTS["max_iter"],
    tol: float = DEFAULTS["tol"],
    seed: int = DEFAULTS["seed"],
    *,
    n_init: int = DEFAULTS["n_init"],
    ridge: float = DEFAULTS["ridge"],
    refit_iter: int = DEFAULTS["refit_iter"],
    eps: float = 1e-12,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    backend: str | None = None,
    callback: Callable[[int, float], None] | None = None,
    num_threads: int | None = 1,
    in_memory: bool = True,
) -> SNMFResult:
    """Fit ``A [units, samples] ~ F G^T`` (see the module docstring for the algorithm).

    The run keys (n_factors ... refit_iter) and their defaults are those of :class:`SNMFRunConfig`,
    checked by its validator; errors are :class:`SNMFError` naming the key.

    A: numpy array, torch tensor or xarray DataArray [units, samples]; a DataArray with a ``unit``
        dim is read as (unit, other) in either order (pass a lazily opened one as opened, not
        transposed) and its coords are kept for :meth:`SNMFResult.to_dataset`.
    n_factors: K, between 1 and min(units, samples).
    sparsity: fraction of units kept per factor, in (0, 1]; ``n_keep = ceil(sparsity * units)``.
    init: 'svd' (top singular directions, sign chosen so their positive part dominates),
        'kmeans' (spherical k-means++ / Lloyd on samples; cluster indicators + 0.2), 'random'
        (uniform), or an array G0 [samples, factors] >= 0 (entries at 0 stay 0 under the G update).
    max_iter: iterations after the initialisation (0 returns the initialisation).
    tol: stop when the relative loss decrease of an iteration falls below ``tol`` (0: run max_iter).
    seed: seeds every random choice; the fit is deterministic for a fixed seed on a given device.
    n_init: restarts from seeds seed, seed+1, ...; the run with the lowest final loss is returned
        (alternating sparse fits have local minima; a few restarts of 'kmeans'/'random' avoid most).
    ridge: lambda of the ridge step, relative to G's unit-norm columns.
    refit_iter: CG steps refitting F on its support per iteration.
    eps: added to the denominator of the multiplicative update.
    dtype: float64 by default on CPU, float32 on CUDA.
    device: where the fit runs: None (default) where A lives (numpy and DataArrays: the CPU); 'auto'
        (CUDA when torch sees a GPU, else the CPU; the workflow's ``snmf.device``), 'cpu', 'cuda', 'cuda:N'.
    backend: kernel backend of the G update: None follows mechflow.kernels' process-wide setting
        (default 'auto': Triton on CUDA, PyTorch reference on CPU); or 'auto', 'reference', 'triton'.
    callback: called as ``callback(iteration, loss)`` after every iteration.
    num_threads: intra-op threads of the fit (default 1). The products along the sample axis then run
        as fixed row blocks spread over the caller's ``torch.get_num_threads()`` threads
        (:class:`mechflow.kernels.threads.RowBlockMatmul`), so the results are bit-identical whatever
        the caller's setting, yet use its threads. None: the caller's setting as it is, plain
        products (the results may then depend on the thread count).
    in_memory: keep A in memory as float64 (or ``dtype``) sample blocks (:mod:`mechflow.snmf.blocks`).
        False re-reads each block at every pass instead: with a DataArray opened lazily from a file,
        the fit then holds one block of A (``SNMF_BLOCK_MB`` MiB) however many samples it has, and
        its result is bit-identical to the in-memory fit (same blocks, same arithmetic).
    """
    if num_threads is None:
        return _fit(A, n_factors, sparsity, init, max_iter, tol, seed, n_init, ridge, refit_iter, eps, dtype, device,
                    backend, callback, _plain_mm, in_memory)
    workers = max(1, torch.get_num_threads() // int(num_threads))  # the caller's threads
    with torch_threads(num_threads), RowBlockMatmul(workers) as mm:
        return _fit(A, n_factors, sparsity, init, max_iter, tol, seed, n_init, ridge, refit_iter, eps, dtype, device,
                    backend, callback, mm, in_memory)


def _fit(
    A: Any,
    n_factors: int,
    sparsity: float,
    init: Init | np.ndarray | torch.Tensor,
    max_iter: int,
    tol: float,
    seed: int,
    n_init: int,
    ridge: float,
    refit_iter: int,
    eps: float,
    dtype: torch.dtype | None,
    device: str | torch.device | None,
    backend: str | None,
    callback: Callable[[int, float], None] | None,
    mm: Matmul,
    in_memory: bool = True,
) -> SNMFResult:
    """:func:`fit` at the current thread count, with ``mm`` for the products along the sample axis."""
    t0 = time.perf_counter()
    if isinstance(init, str) and init not in INITS:
        raise SNMFError(f"init must be one of {INITS} or an array G0 [samples, factors] >= 0, got {init!r}")
    # an array init stands in as 'svd' for the checks: both are deterministic (no restarts)
    cfg = SNMFRunConfig.from_dict(
        {"n_factors": n_factors, "sparsity": sparsity, "init": init if isinstance(init, str) else "svd",
         "max_iter": max_iter, "tol": tol, "seed": seed, "n_init": n_init, "ridge": ridge, "refit_iter": refit_iter},
        label="semi-NMF")
    if isinstance(eps, bool) or not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps >= 0):
        raise SNMFError(f"eps must be a finite number >= 0, got {eps!r}")
    update_g = _g_update_fn(backend)
    X, unit_coord, prompt_coords = as_blocks(A, dtype, device, in_memory)
    n_units, n_samples = X.shape
    if cfg.n_factors > min(n_units, n_samples):
        raise SNMFError(
            f"n_factors={n_factors} exceeds min(units, samples) = min({n_units}, {n_samples}); "
            "use fewer factors or more samples"
        )
    scale = X.scale
    if scale == 0.0:
        raise SNMFError("A is all zeros; there is nothing to factorise")
    K, n_keep = cfg.n_factors, n_keep_for(cfg.sparsity, n_units)
    ridge, eps = cfg.ridge, float(eps)

    best_run, best, restart_losses = None, 0, []
    for r in range(cfg.n_init):  # keep only the best run in memory
        run = _fit_once(X, K, init, cfg.seed + r, n_keep, cfg.max_iter, cfg.tol, ridge, cfg.refit_iter, eps, update_g, callback,
                        mm)
        restart_losses.append(run[2][-1])
        if best_run is None or run[2][-1] < best_run[2][-1]:
            best_run, best = run, r
    F, G, losses, it, converged, stop_reason, fallbacks = best_run
    seconds = time.perf_counter() - t0
    log.info("semi-NMF: %d factors of A [%d, %d] (%d sample blocks, %s), %d iterations (%s), loss %.6g, %.2f s", K,
             n_units, n_samples, len(X), "in memory" if X.in_memory else "read from disk at every pass", it, stop_reason,
             losses[-1], seconds)
    return SNMFResult(
        F=(F * scale).cpu().numpy(),
        G=G.cpu().numpy(),
        loss=np.asarray(losses, dtype=np.float64),
        n_iter=it,
        converged=converged,
        stop_reason=stop_reason,
        n_keep=n_keep,
        params={
            "n_factors": K,
            "sparsity": cfg.sparsity,
            "init": init if isinstance(init, str) else "array",
            "max_iter": cfg.max_iter,
            "tol": cfg.tol,
            "seed": cfg.seed,
            "n_init": cfg.n_init,
            "ridge": ridge,
            "refit_iter": cfg.refit_iter,
            "eps": eps,
            "dtype": str(X.dtype).removeprefix("torch."),
        },
        f_fallbacks=fallbacks,
        seconds=seconds,
        unit_coord=unit_coord,
        prompt_coords=prompt_coords,
        best_restart=best,
        restart_losses=np.asarray(restart_losses, dtype=np.float64),
    )


def _fit_once(
    X: SampleBlocks,
    K: int,
    init: Any,
    seed: int,
    n_keep: int,
    max_iter: int,
    tol: float,
    ridge: float,
    refit_iter: int,
    eps: float,
    update_g: Callable[..., torch.Tensor],
    callback: Callable[[int, float], None] | None,
    mm: Matmul = _plain_mm,
) -> tuple[torch.Tensor, torch.Tensor, list[float], int, bool, str, int]:
    """One run from one initialisation on X [units, samples] with ||X||_F = 1 (``mm``: the large products).

    Each iteration is one pass over X's blocks: a block's G rows are updated from ``X_b^T F`` and
    its share of ``X G`` is added at once (G's column scale is divided out after the pass).
    Returns (F masked, G, losses, n_iter, converged, stop_reason, F-step fallbacks).
    """
    n_samples = X.shape[1]
    if isinstance(init, str):
        G = _init_G(X, K, init, seed, mm=mm)
    else:
        G = user_G0(init, n_samples, K, torch.empty(0, dtype=X.dtype, device=X.device))
    G = G.div_(_unit_columns(G))
    B, H = _times(X, G, mm), mm(G.T, G)
    F, mask = _ridge_wta(B, H, ridge, n_keep)
    F = _refit(F, mask, B, H, refit_iter)
    losses = [_rel_loss(F, B, H)]

    converged, stop_reason, fallbacks, it = False, "max_iter", 0, 0
    for it in range(1, max_iter + 1):
        Q = F.T @ F
        G_new = torch.empty_like(G)
        B = None
        for sl, Xb in X:
            G_new[sl] = update_g(mm(Xb.T, F), Q, G[sl], eps)
            part = mm(Xb, G_new[sl])
            B = part if B is None else B + part
        norms = _unit_columns(G_new)
        G_new, F_scaled, B = G_new.div_(norms), F * norms, B / norms
        H = mm(G_new.T, G_new)
        loss_g = _rel_loss(F_scaled, B, H)
        F_new, mask_new, loss, fell = _f_step(B, H, F_scaled, mask, loss_g, n_keep, ridge, refit_iter)
        prev = losses[-1]
        if loss > prev:  # only rounding can get here (the G step is non-increasing in exact arithmetic)
            it -= 1
            converged, stop_reason = True, "precision"
            break
        F, G, mask = F_new, G_new, mask_new
        fallbacks += int(fell)
        losses.append(loss)
        if callback is not None:
            callback(it, loss)
        if prev == 0.0 or (prev - loss) / prev < tol:
            converged, stop_reason = True, "tol"
            break

    return F * mask, G, losses, it, converged, stop_reason, fallbacks
