"""Local Moran's I (LISA) for all columns of ``[n, F]`` with a conditional permutation test.

``Is`` and the quadrant ``q`` equal esda's ``Moran_Local`` (float64, same formulas).
The conditional permutation test is statistically equivalent to esda's and much cheaper:

esda draws, per replicate p, one ordered set ``J_p`` of neighbour slots shared by all
observations (each observation i then takes its first ``c_i`` slots from the n-1 others).
Here each replicate draws ``J_p`` per group of observations (``groups``, default 16): ``c_max + 1``
distinct indices from all n, shared by all observations and all columns; observation i uses the first ``c_i`` of them, replacing itself
(if drawn) by slot ``c_i``. That is a uniform ``c_i``-subset of the other n-1 observations,
the same null as esda's. Because every observation of a row-constant weights matrix (KNN,
contiguity, in any transform) sees the *same* sum ``T_p = sum_{l<c} z[J_pl]`` except the few
(i, p) pairs where i itself was drawn, the count of replicates with ``I_i^sim >= I_i`` is a
sorted search of the observed neighbour sum among ``{T_p}`` plus an exact correction for those
pairs: ``O(F * (P log P + n log P + P * c))`` instead of esda's ``O(F * n * P * c)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from libpysal.weights import W

from mechflow.devices import resolve_device
from mechflow.kernels.threads import torch_threads
from mechflow.spatial._sparse import as_2d_values, fold_counts, weights_csr

__all__ = ["local_moran"]


def _row_structure(A: sp.csr_matrix):
    """Self weights, cardinalities and the (single) off-diagonal weight of each row."""
    self_w = A.diagonal().astype(np.float64)
    B = sp.csr_matrix(A, copy=True)
    B.setdiag(0)
    B.eliminate_zeros()
    card = np.diff(B.indptr)
    rows = np.repeat(np.arange(B.shape[0]), card)
    wmax = np.full(B.shape[0], -np.inf)
    wmin = np.full(B.shape[0], np.inf)
    np.maximum.at(wmax, rows, B.data)
    np.minimum.at(wmin, rows, B.data)
    has = card > 0
    if np.any(wmax[has] != wmin[has]):
        raise ValueError(
            "local_moran's fast conditional permutation needs equal weights within each row "
            "(true for KNN and contiguity weights in any transform); got unequal row weights"
        )
    w_row = np.where(has, wmax, 0.0)
    Bbin = sp.csr_matrix((np.ones_like(B.data), B.indices, B.indptr), shape=B.shape)
    return self_w, card, w_row, Bbin


def local_moran(
    values,
    w: W,
    permutations: int = 999,
    seed: int = 0,
    device=None,
    chunk_size: int = 256,
    groups: int = 16,
    num_threads: int | None = 1,
) -> dict:
    """Local Moran's I of every column of ``values`` ``[n, F]`` (``w`` used as transformed).

    Returns a dict:
    - ``Is`` float64 ``[n, F]``: ``(n-1) z_i (Wz)_i / sum z^2`` with ``z = (y - mean)/std``;
    - ``q`` int8 ``[n, F]``: 1 HH, 2 LH, 3 LL, 4 HL (esda's default coding; 0 for constant columns);
    - ``p_sim`` float64 ``[n, F]``: folded pseudo p-value ``(larger + 1)/(P + 1)`` as esda's
      ``Moran_Local`` (NaN for constant columns, and when ``permutations == 0``);
    - ``p_local`` float64 ``[n, F]`` (not in esda): unfolded permutation p-value in the direction of
      the observed deviation, doubled: ``min(1, 2 (#{I_sim >= I_i} + 1)/(P + 1))`` when
      ``I_i >= E[I_i]`` (E under the conditional permutation null), else the same with ``<=``. The
      one-sided p in a direction chosen by the data is itself ~Uniform(0, 0.5] under the null (like
      the folded ``p_sim``); doubling makes it a valid two-sided p-value (~Uniform(0, 1]), fit for
      BH. NaN where ``p_sim`` is;
    - ``n_constant`` int.

    ``groups``: observations ``i % groups`` share one set of replicate draws (esda shares one set
    among all observations); more groups weaken the dependence between observations' p-values at
    ``groups`` times the (small) sorting cost. ``chunk_size``: columns per block. ``num_threads``:
    intra-op threads of the permutation test on CPU (default 1; None leaves torch's setting); the
    results do not depend on it, and its small torch ops gain little from more threads (on
    oversubscribed cores 2 threads were several times slower than 1).
    """
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    A = weights_csr(w)
    n = A.shape[0]
    y = as_2d_values(values, n)
    F = y.shape[1]
    constant = np.ptp(y, axis=0) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (y - y.mean(axis=0)) / y.std(axis=0)
    z[:, constant] = 0.0
    lag = A @ z
    den = (z * z).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        Is = (n - 1) * z * lag / den
    zp, lp = z > 0, lag > 0
    q = np.where(zp & lp, 1, np.where(~zp & lp, 2, np.where(~zp & ~lp, 3, 4))).astype(np.int8)
    Is[:, constant] = np.nan
    q[:, constant] = 0
    p_sim = np.full((n, F), np.nan)
    p_local = np.full((n, F), np.nan)
    if permutations and F:
        self_w, card, w_row, Bbin = _row_structure(A)
        S = Bbin @ z  # observed sum of neighbour values (self excluded)
        dev = resolve_device(device)
        with torch_threads(num_threads if dev.type == "cpu" else None):
            ge, le = _conditional_counts(z, S, self_w, card, w_row, permutations, seed,
                                         dev, chunk_size, groups)
        larger = fold_counts(ge, permutations)
        p_sim = (larger + 1.0) / (permutations + 1.0)
        p_sim[:, constant] = np.nan
        # I_i - E[I_i] = (n-1)/sum(z^2) * z_i w_i (S_i - E[T_i]), E[T_i] = -c_i z_i / (n-1) (the sum
        # of c_i of the other n-1 standardised values, which sum to -z_i)
        upper = np.sign(z * w_row[:, None]) * (S + card[:, None] * z / (n - 1)) >= 0
        p_local = np.minimum(1.0, 2.0 * (np.where(upper, ge, le) + 1.0) / (permutations + 1.0))
        p_local[:, constant] = np.nan
    return {"Is": Is, "q": q, "p_sim": p_sim, "p_local": p_local, "n_constant": int(constant.sum())}


TIE_TOL = 1e-9  # |T - S| below this (standardised units) is a tie, counted as ">=" like esda


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending, contiguous. On CPU numpy's (SIMD) sort, several times faster than torch's,
    which also computes indices; the sorted values are the same."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(np.ascontiguousarray(x.numpy()), axis=1))
    return x.contiguous().sort(dim=1).values


def _conditional_counts(z, S, self_w, card, w_row, P, seed, dev, chunk_size, groups=16) -> tuple[np.ndarray, np.ndarray]:
    """``[n, F]`` numbers of replicates with simulated ``I_i >= `` and ``<=`` observed ``I_i`` (ge, le).

    Simulated ``I_i = s z_i (w_i T + sw_i z_i)`` and observed ``I_i = s z_i (w_i S_i + sw_i z_i)``
    (s > 0), so ``I_sim >= I_obs`` iff ``T >= S_i`` when ``z_i w_i > 0``, ``T <= S_i`` when
    ``z_i w_i < 0``, and always when ``z_i w_i == 0``. Observation i uses draw group ``i % groups``.
    Sums that differ by less than ``TIE_TOL`` are ties (exact in real arithmetic, e.g. discrete data) and count as ``>=``.
    """
    n, F = z.shape
    cmax = int(card.max()) if card.size else 0
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    G = max(1, min(int(groups), n))
    obs_group = np.arange(n) % G
    # J[g, p]: cmax+1 distinct random indices (topk of uniforms: a random subset in random order)
    J = torch.empty((G, P, cmax + 1), dtype=torch.int64)
    for g in range(G):
        for s in range(0, P, 256):
            e = min(P, s + 256)
            J[g, s:e] = torch.rand((e - s, n), generator=gen).topk(cmax + 1, dim=1).indices
    J = J.to(dev)
    card_t = torch.from_numpy(card).to(dev)
    group_t = torch.from_numpy(obs_group).to(dev)
    pp, ll = torch.meshgrid(torch.arange(P, device=dev), torch.arange(cmax, device=dev), indexing="ij")
    direction = np.sign(z * w_row[:, None])  # +1: count T >= S, -1: count T <= S, 0: all
    counts = np.empty((n, F), dtype=np.int64)
    counts_le = np.empty((n, F), dtype=np.int64)
    plan = []
    for g in range(G):
        Jg = J[g]
        ii = Jg[:, :cmax]
        # (i, p) pairs of this group where i drew itself among its first c_i slots
        hit = (ll < card_t[ii]) & (group_t[ii] == g)
        hp, hi = pp[hit], ii[hit]
        rows_by_card = [(int(c), torch.from_numpy(np.flatnonzero((card == c) & (obs_group == g))).to(dev))
                        for c in np.unique(card[obs_group == g])]
        plan.append((Jg, hp, hi, Jg[hp, card_t[hi]], rows_by_card))
    for a in range(0, F, chunk_size):
        b = min(F, a + chunk_size)
        zc = torch.from_numpy(np.ascontiguousarray(z[:, a:b])).to(dev)
        Sc = torch.from_numpy(np.ascontiguousarray(S[:, a:b])).to(dev)
        dc = torch.from_numpy(np.ascontiguousarray(direction[:, a:b])).to(dev)
        cnt = torch.zeros((n, b - a), dtype=torch.int64, device=dev)
        cnt_le = torch.zeros((n, b - a), dtype=torch.int64, device=dev)
        for Jg, hp, hi, hrep, rows_by_card in plan:
            cums = zc[Jg[:, :cmax]].cumsum_(1)  # cums[p, c - 1] = sum of the first c slots (c >= 1)
            for c, rows_t in rows_by_card:
                Tc = cums[:, c - 1] if c else torch.zeros((P, b - a), dtype=zc.dtype, device=dev)
                Ts = _sorted_rows(Tc.T)  # [Fc, P], contiguous for searchsorted
                thr = Sc[rows_t].T.contiguous()  # [Fc, n_c]
                ge = P - torch.searchsorted(Ts, thr - TIE_TOL, side="left")
                le = torch.searchsorted(Ts, thr + TIE_TOL, side="right")
                dr = dc[rows_t].T
                cnt[rows_t] = torch.where(dr > 0, ge, torch.where(dr < 0, le, P)).T
                cnt_le[rows_t] = torch.where(dr > 0, le, torch.where(dr < 0, ge, P)).T
            if hp.numel():
                # exact correction for the pairs where i drew itself: slot c_i replaces it
                T_old = cums[hp, card_t[hi] - 1]  # [h, Fc] (a hit has c_i >= 1)
                T_new = T_old - zc[hi] + zc[hrep]
                S_h, d_h = Sc[hi], dc[hi]
                lo, hi_ = S_h - TIE_TOL, S_h + TIE_TOL
                d_ge = (T_new >= lo).long() - (T_old >= lo).long()  # change of "T >= S" for the pair
                d_le = (T_new <= hi_).long() - (T_old <= hi_).long()
                # z_i w_i > 0 counts T >= S, < 0 counts T <= S (the "<=" count swaps them), 0 always counts
                pos, neg = d_h > 0, d_h < 0
                zero = torch.zeros_like(d_ge)
                cnt.index_add_(0, hi, torch.where(pos, d_ge, torch.where(neg, d_le, zero)))
                cnt_le.index_add_(0, hi, torch.where(pos, d_le, torch.where(neg, d_ge, zero)))
        counts[:, a:b] = cnt.cpu().numpy()
        counts_le[:, a:b] = cnt_le.cpu().numpy()
    return counts, counts_le
