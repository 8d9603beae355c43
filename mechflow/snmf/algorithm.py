"""Semi-nonnegative matrix factorisation of MLP activations (Shafran, Geiger & Geva 2025).

``A [units, samples] ~ F G^T`` with ``F [units, factors]`` mixed-sign and sparse per column
(winner-take-all: each factor keeps exactly ``n_keep = ceil(sparsity * units)`` units) and
``G [samples, factors] >= 0``, the factor activations per sample (prompt).

One iteration
-------------
1. **G step**: the multiplicative semi-NMF update of Ding, Li & Jordan (2010),
   ``G <- G * sqrt(((A^T F)+ + G (F^T F)-) / ((A^T F)- + G (F^T F)+))``, through
   :func:`mechflow.kernels.snmf_update_g` (the fused Triton kernel on CUDA, the PyTorch reference
   on CPU; :attr:`SNMFRuntime.backend` picks one). For fixed F it never increases ``||A - F G^T||^2`` (Ding et al., Theorem 1).
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
``SNMFRuntime(in_memory=False)`` the blocks are read from the file at every pass, so memory holds one block plus
``G`` [samples, factors], and the result is the same to the bit as with A in memory.

Determinism: a multi-threaded BLAS product over the long sample axis rounds differently for each
thread count, so the fit runs at a fixed intra-op thread count (``SNMFRuntime.num_threads``, default 1) and
spreads its large products over the caller's threads as fixed row blocks of single-threaded
products: F, G and the losses are bit-identical whatever ``torch.set_num_threads`` the caller
chose. The wall time goes to the log, not into the result's data.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mechflow.kernels.threads import RowBlockMatmul, torch_threads
from mechflow.snmf.blocks import SampleBlocks
from mechflow.snmf.config import INITS, SNMFError, SNMFRunConfig
from mechflow.snmf.inputs import as_blocks, n_keep_for, user_G0
from mechflow.snmf.result import SNMFResult
from mechflow.snmf.runtime import RUNTIME_KEYS, SNMFRuntime

log = logging.getLogger(__name__)

#: ``mm(a, b) -> a @ b``: the products that grow with the sample axis go through one (see :func:`fit`)
Matmul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``update_g(P, Q, G, eps) -> G_new``: the multiplicative G update (:func:`mechflow.kernels.snmf_update_g`)
GUpdate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def _plain_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


#: defaults of the run keys of :func:`fit`: those of :class:`SNMFRunConfig` (the workflow's too)
DEFAULTS: dict[str, Any] = SNMFRunConfig.defaults()
#: default ``eps`` of :func:`fit`, added to the denominator of the multiplicative G update
EPS = 1e-12


@dataclass(frozen=True)
class _Problem:
    """What every restart of one fit shares: A [units, samples] as sample blocks scaled to ``||A||_F = 1``,
    what is fitted (``cfg``; ``G0``: the caller's initial G [samples, factors] in place of ``cfg.init``,
    or None), and the routines it runs through (``mm`` for the products along the sample axis)."""

    X: SampleBlocks
    cfg: SNMFRunConfig
    n_keep: int
    eps: float
    G0: np.ndarray | torch.Tensor | None
    update_g: GUpdate
    mm: Matmul
    callback: Callable[[int, float], None] | None


@dataclass(frozen=True)
class _FModel:
    """F [units, K] (zero off its support), its winner-take-all support ``mask`` [units, K] (bool), and
    the relative loss it gives with the current G."""

    F: torch.Tensor
    mask: torch.Tensor
    loss: float


@dataclass(frozen=True)
class _Attempt:
    """One run from one initialisation: F [units, K] masked to its support, G [samples, K], the loss at the
    initialisation and after every iteration, the iterations run, how it stopped, F-step fallbacks."""

    F: torch.Tensor
    G: torch.Tensor
    losses: list[float]
    n_iter: int
    converged: bool
    stop_reason: str
    fallbacks: int


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


def _f_step(p: _Problem, B: torch.Tensor, H: torch.Tensor, cur: _FModel) -> tuple[_FModel, bool]:
    """Guarded F update from ``B = A G`` [units, K] and ``H = G^T G`` [K, K]; returns (new F, fell_back),
    the new loss <= ``cur.loss``."""
    n_keep, ridge, refit_iter = p.n_keep, p.cfg.ridge, p.cfg.refit_iter
    F_new, mask_new = _ridge_wta(B, H, ridge, n_keep)
    F_new = _refit(F_new, mask_new, B, H, refit_iter)
    loss_new = _rel_loss(F_new, B, H)
    if loss_new <= cur.loss:
        return _FModel(F_new, mask_new, loss_new), False
    # fallback: one iterative-hard-thresholding step from the current F (gradient step of length
    # 1 / lambda_max(G^T G), then winner-take-all), which cannot raise the loss (majorisation), so
    # supports can still move; then the CG refit on the new support
    lam = float(torch.linalg.eigvalsh(H)[-1])
    if lam > 0:
        F_iht = cur.F + (B - cur.F @ H) / lam
        mask_iht = _top_mask(F_iht, n_keep)
        F_iht = _refit(F_iht * mask_iht, mask_iht, B, H, refit_iter)
        loss_iht = _rel_loss(F_iht, B, H)
        if loss_iht <= cur.loss:
            return _FModel(F_iht, mask_iht, loss_iht), True
    return cur, True


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


def _g_update_fn(backend: str | None) -> GUpdate:
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
    cfg: SNMFRunConfig | None = None,
    runtime: SNMFRuntime | None = None,
    *,
    G0: np.ndarray | torch.Tensor | None = None,
    eps: float = EPS,
    **keys: Any,
) -> SNMFResult:
    """Fit ``A [units, samples] ~ F G^T``: ``F [units, factors]`` sparse, ``G [samples, factors] >= 0``
    (the algorithm: the module docstring). Returns an :class:`SNMFResult` (F in A's units, G with
    unit-norm columns, the loss at the initialisation and after every iteration).

    A: numpy array, torch tensor or xarray DataArray [units, samples]; a DataArray with a ``unit``
        dim is read as (unit, other) in either order (pass a lazily opened one as opened, not
        transposed) and its coords are kept for :meth:`SNMFResult.to_dataset`.
    cfg: what is fitted, an :class:`SNMFRunConfig` (checked again here by its validator; errors are
        :class:`SNMFError` naming the key): ``n_factors`` K, between 1 and min(units, samples);
        ``sparsity``, ``n_keep = ceil(sparsity * units)`` units kept per factor; ``init`` 'svd' (top
        singular directions, sign chosen so their positive part dominates), 'kmeans' (spherical
        k-means++ / Lloyd on samples; cluster indicators + 0.2) or 'random' (uniform); ``max_iter``
        iterations after the initialisation (0 returns it); ``tol``, stop when an iteration lowers the
        relative loss by less (0: run max_iter); ``seed`` of every random choice (the fit is
        deterministic for a seed on a given device); ``n_init`` restarts from seeds seed, seed+1, ...,
        the lowest final loss kept (alternating sparse fits have local minima; a few restarts of
        'kmeans'/'random' avoid most); ``ridge`` lambda of the ridge step, relative to G's unit-norm
        columns; ``refit_iter`` CG steps refitting F on its support per iteration.
    runtime: how it runs, an :class:`SNMFRuntime` (device, dtype, G-update backend, threads, A in
        memory or re-read from its file, a per-iteration callback); default ``SNMFRuntime()``.
    G0: an initial G [samples, factors] >= 0 in place of ``cfg.init`` (entries at 0 stay 0 under the
        G update; deterministic, so ``n_init`` must be 1); the result records init 'array'.
    eps: added to the denominator of the multiplicative update.
    keys: the fields of ``cfg`` and/or of ``runtime``, where that one is not given:
        ``fit(A, n_factors=8, init='kmeans', device='auto')`` is
        ``fit(A, SNMFRunConfig.from_dict({'n_factors': 8, 'init': 'kmeans'}), SNMFRuntime(device='auto'))``.
    """
    cfg, runtime = _settings(cfg, runtime, G0, keys)
    if runtime.num_threads is None:
        return _fit(A, cfg, runtime, G0, eps, _plain_mm)
    workers = max(1, torch.get_num_threads() // int(runtime.num_threads))  # the caller's threads
    with torch_threads(runtime.num_threads), RowBlockMatmul(workers) as mm:
        return _fit(A, cfg, runtime, G0, eps, mm)


def _settings(
    cfg: SNMFRunConfig | None, runtime: SNMFRuntime | None, G0: Any, keys: dict[str, Any]
) -> tuple[SNMFRunConfig, SNMFRuntime]:
    """The checked run config and the runtime of :func:`fit`, each from its argument or from ``keys``."""
    run = {k: v for k, v in keys.items() if k not in RUNTIME_KEYS}
    how = {k: v for k, v in keys.items() if k in RUNTIME_KEYS}
    for given, name, passed in ((cfg, "cfg", run), (runtime, "runtime", how)):
        if given is not None and passed:
            raise TypeError(f"fit() got {name} and its keys {sorted(passed)} as keywords; pass one or the other")
    if cfg is not None and not isinstance(cfg, SNMFRunConfig):
        raise TypeError(f"fit()'s cfg must be an SNMFRunConfig, got {type(cfg).__name__}; or pass the run keys as "
                        "keywords, e.g. fit(A, n_factors=8)")
    if not isinstance(run.get("init", ""), str):
        raise SNMFError(f"init must be one of {INITS}; pass an initial G [samples, factors] as G0=")
    run = cfg.to_dict() if cfg is not None else run
    # an array G0 stands in as 'svd' for the checks: both are deterministic (no restarts)
    cfg = SNMFRunConfig.from_dict(run if G0 is None else {**run, "init": "svd"}, label="semi-NMF")
    return cfg, runtime if runtime is not None else SNMFRuntime(**how)


def _fit(A: Any, cfg: SNMFRunConfig, runtime: SNMFRuntime, G0: Any, eps: float, mm: Matmul) -> SNMFResult:
    """:func:`fit` of a checked ``cfg`` at the current thread count, with ``mm`` for the products along the sample axis."""
    t0 = time.perf_counter()
    if isinstance(eps, bool) or not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps >= 0):
        raise SNMFError(f"eps must be a finite number >= 0, got {eps!r}")
    update_g = _g_update_fn(runtime.backend)
    X, unit_coord, prompt_coords = as_blocks(A, runtime.dtype, runtime.device, runtime.in_memory)
    n_units, n_samples = X.shape
    if cfg.n_factors > min(n_units, n_samples):
        raise SNMFError(
            f"n_factors={cfg.n_factors} exceeds min(units, samples) = min({n_units}, {n_samples}); "
            "use fewer factors or more samples"
        )
    scale = X.scale
    if scale == 0.0:
        raise SNMFError("A is all zeros; there is nothing to factorise")
    p = _Problem(X, cfg, n_keep_for(cfg.sparsity, n_units), float(eps), G0, update_g, mm, runtime.callback)

    best_run, best, restart_losses = None, 0, []
    for r in range(cfg.n_init):  # keep only the best run in memory
        run = _fit_once(p, cfg.seed + r)
        restart_losses.append(run.losses[-1])
        if best_run is None or run.losses[-1] < best_run.losses[-1]:
            best_run, best = run, r
    seconds = time.perf_counter() - t0
    log.info("semi-NMF: %d factors of A [%d, %d] (%d sample blocks, %s), %d iterations (%s), loss %.6g, %.2f s",
             cfg.n_factors, n_units, n_samples, len(X), "in memory" if X.in_memory else "read from disk at every pass",
             best_run.n_iter, best_run.stop_reason, best_run.losses[-1], seconds)
    return SNMFResult(
        F=(best_run.F * scale).cpu().numpy(),
        G=best_run.G.cpu().numpy(),
        loss=np.asarray(best_run.losses, dtype=np.float64),
        n_iter=best_run.n_iter,
        converged=best_run.converged,
        stop_reason=best_run.stop_reason,
        n_keep=p.n_keep,
        params={
            **cfg.to_dict(),
            "init": cfg.init if G0 is None else "array",
            "eps": p.eps,
            "dtype": str(X.dtype).removeprefix("torch."),
        },
        f_fallbacks=best_run.fallbacks,
        seconds=seconds,
        unit_coord=unit_coord,
        prompt_coords=prompt_coords,
        best_restart=best,
        restart_losses=np.asarray(restart_losses, dtype=np.float64),
    )


def _fit_once(p: _Problem, seed: int) -> _Attempt:
    """One run of ``p`` from one initialisation (seeded by ``seed``).

    Each iteration is one pass over X's blocks: a block's G rows are updated from ``X_b^T F`` and
    its share of ``X G`` is added at once (G's column scale is divided out after the pass).
    """
    X, cfg, mm = p.X, p.cfg, p.mm
    if p.G0 is None:
        G = _init_G(X, cfg.n_factors, cfg.init, seed, mm=mm)
    else:
        G = user_G0(p.G0, X.shape[1], cfg.n_factors, torch.empty(0, dtype=X.dtype, device=X.device))
    G = G.div_(_unit_columns(G))
    B, H = _times(X, G, mm), mm(G.T, G)
    F, mask = _ridge_wta(B, H, cfg.ridge, p.n_keep)
    F = _refit(F, mask, B, H, cfg.refit_iter)
    losses = [_rel_loss(F, B, H)]

    converged, stop_reason, fallbacks, it = False, "max_iter", 0, 0
    for it in range(1, cfg.max_iter + 1):
        Q = F.T @ F
        G_new = torch.empty_like(G)
        B = None
        for sl, Xb in X:
            G_new[sl] = p.update_g(mm(Xb.T, F), Q, G[sl], p.eps)
            part = mm(Xb, G_new[sl])
            B = part if B is None else B + part
        norms = _unit_columns(G_new)
        G_new, F_scaled, B = G_new.div_(norms), F * norms, B / norms
        H = mm(G_new.T, G_new)
        new, fell = _f_step(p, B, H, _FModel(F_scaled, mask, _rel_loss(F_scaled, B, H)))
        prev = losses[-1]
        if new.loss > prev:  # only rounding can get here (the G step is non-increasing in exact arithmetic)
            it -= 1
            converged, stop_reason = True, "precision"
            break
        F, G, mask = new.F, G_new, new.mask
        fallbacks += int(fell)
        losses.append(new.loss)
        if p.callback is not None:
            p.callback(it, new.loss)
        if prev == 0.0 or (prev - new.loss) / prev < cfg.tol:
            converged, stop_reason = True, "tol"
            break

    return _Attempt(F * mask, G, losses, it, converged, stop_reason, fallbacks)
