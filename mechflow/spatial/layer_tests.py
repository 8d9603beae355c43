"""Layer-level permutation tests: is there spatial structure spread over the units of a layer?

Per-unit tests with BH over hundreds of units find a few strong features; a weak signal carried a little
by many units passes none of them. The layer tests compare statistics of the whole layer (one region's
``[n, F]`` feature set) with their null distribution under *joint* permutations of the places: one
permutation moves every unit's values together, so the null keeps the correlation between units, and
the observed layer is exchangeable with its permuted copies (every p-value below is exact, up to ties).

Statistics (:data:`LAYER_STATS`):

- ``mean_I``: mean Moran's I over the units (constant units left out);
- ``pc_I``: mean Moran's I of the leading :data:`N_PCS` principal components of the standardised units
  (eigenvectors of ``K = sum_f z_f z_f'``, ``z_f`` a unit's centred values scaled to unit norm, summed
  over column blocks; NaN for regions of more than :data:`MAX_GRAM_N` places). A row permutation
  permutes the components, so their null is the kernel of :mod:`mechflow.spatial._gram_numba` on the
  permuted components: ``nnz(W) * N_PCS`` multiply-adds per permutation, ``spatial.layer_permutations``
  of them (measured on 1,000 places: ~0.07 s per 1,000 permutations). Multivariate: a direction shared
  by many units concentrates in the leading components;
- ``frac_p05``: the fraction of units whose one-sided permutation p (``p_greater``) is below
  :data:`UNIT_ALPHA`;
- ``pi1``: Storey's estimate of the share of non-null units, ``1 - min(1, #{p > lambda} / ((1 - lambda)
  F))`` with ``lambda`` = :data:`STOREY_LAMBDA`.

``mean_I``, ``frac_p05`` and ``pi1`` reuse the per-unit test's replicates (``spatial.permutations`` of
them, the spatial engine's joint permutations, at no extra cost): the unit p-values of replicate ``b`` are
its ranks among the observed value and all replicates of that unit, so the observed layer and each
replicate get their statistic from the same rule. A mean-I null at 9,999 permutations would need the
per-unit engine at 9,999 (about 8x the whole per-unit test on 576 units); raise ``spatial.permutations``
for that.

For each statistic: ``obs``; the null's mean, 2.5% and 97.5% quantiles (``null_lo``, ``null_hi``); the
``excess`` = obs - null mean with the interval ``[obs - null_hi, obs - null_lo]`` (the null's 95% range
carried over to the excess: the spread a layer without signal would show); and ``p = (1 + #{T_b >= T_obs})
/ (P + 1)``. NaN where a statistic has no permutations.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import xarray as xr
from libpysal.weights import W
from scipy.stats import rankdata

from mechflow.spatial._sparse import count_at_least, weights_csr
from mechflow.spatial.blocks import block_codes, n_free_blocks, within_blocks

__all__ = ["LAYER_STATS", "LAYER_FIELDS", "LAYER_ATTRS", "RESID_NULL", "FREE_NULL", "N_PCS", "UNIT_ALPHA", "STOREY_LAMBDA", "storey_pi1",
           "unit_pvalue_counts", "arrangement_pvalue_counts", "SHUFFLE_FIELDS", "summarise_null", "RegionLayerTest", "LayerTests"]

LAYER_STATS = ("mean_I", "pc_I", "frac_p05", "pi1")
#: per statistic: observed, null mean / 2.5% / 97.5%, excess over the null mean with its interval, p
LAYER_FIELDS = ("obs", "null_mean", "null_lo", "null_hi", "excess", "excess_lo", "excess_hi", "p")
N_PCS = 10  # leading principal components of the pc_I statistic
UNIT_ALPHA = 0.05  # unit p-value threshold of frac_p05
STOREY_LAMBDA = 0.5  # Storey's lambda of pi1
PERM_BATCH = 256  # permutations drawn and gathered per kernel call
#: regions with more places than this get no pc_I: its Gram matrix K [n, n] (float64) would pass 200 MB
MAX_GRAM_N = 5000
#: columns per partial sum (the spatial step's block alignment), so a layer's sums do not depend on its blocks
SUM_CHUNK = 256

LAYER_ATTRS = {
    "layer_stat": "layer-level statistics under joint permutations of the places (all units together): mean_I = mean "
                  "Moran's I over units; pc_I = mean Moran's I of the leading principal components of the standardised "
                  f"units (layer_pcs of them, at most {N_PCS}); frac_p05 = fraction of units with one-sided p_greater < "
                  f"{UNIT_ALPHA}; pi1 = Storey's share of non-null units, 1 - min(1, #{{p > {STOREY_LAMBDA}}} / "
                  f"({1 - STOREY_LAMBDA} F))",
    "layer_p": "(1 + #{T_b >= T_obs}) / (P + 1) over the layer statistic's P joint permutations (layer_perms)",
    "layer_excess": "obs - null mean; layer_excess_lo/hi = obs - null 97.5% / 2.5% quantile (the null's 95% range)",
    "layer_perms": "permutations of each layer statistic: pc_I spatial.layer_permutations (drawn from spatial.seed "
                   "as the per-unit test's), mean_I, frac_p05 and pi1 the per-unit test's spatial.permutations (its "
                   "replicates)",
}
#: the null of the residualised variant (moran.nc attrs ``layer_null_resid``), where admin-1 units are known
RESID_NULL = ("permutations within admin-1 units (restricted randomisation): residuals on one-hot admin-1 sum to zero "
              "within each unit, which free permutations ignore (a conservative null); places move only within their "
              "unit, for the per-unit replicates and pc_I alike; layer_blocks_resid = units with two or more places")
FREE_NULL = "free permutations of the places within each region"
#: per statistic and shuffle of the coordinates: its excess over the data's null mean and its p-value
SHUFFLE_FIELDS = ("excess", "p")


def storey_pi1(p: np.ndarray, lam: float = STOREY_LAMBDA) -> np.ndarray:
    """Storey's ``pi1 = 1 - min(1, #{p > lam} / ((1 - lam) m))`` along the last axis (NaNs left out)."""
    p = np.asarray(p, dtype=np.float64)
    m = np.isfinite(p).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pi0 = (p > lam).sum(-1) / ((1.0 - lam) * m)
    return np.where(m > 0, 1.0 - np.minimum(1.0, pi0), np.nan)


def unit_pvalue_counts(obs_I: np.ndarray, sim_I: np.ndarray, alpha: float = UNIT_ALPHA,
                       lam: float = STOREY_LAMBDA) -> tuple[np.ndarray, np.ndarray, int]:
    """Per arrangement ``b`` (0 = observed, 1..P = the replicates), the number of units with one-sided p < ``alpha``
    and with p > ``lam``, where unit f's p in arrangement b is ``#{c: I[c, f] >= I[b, f]} / (P + 1)`` over the
    observed value and the replicates (for b = 0 it is ``p_greater``). ``obs_I [F]``, ``sim_I [P, F]``; NaN units
    (constant) are left out. Returns ``(below [P + 1], above [P + 1], F_valid)``."""
    count_ge, valid = _counts_ge(obs_I, sim_I)
    return (*_threshold_counts(count_ge, alpha, lam), int(valid.sum()))


def _threshold_counts(count_ge: np.ndarray, alpha: float = UNIT_ALPHA,
                      lam: float = STOREY_LAMBDA) -> tuple[np.ndarray, np.ndarray]:
    """Per arrangement (row of :func:`_counts_ge`), the units with p = count / (P + 1) below ``alpha`` and above ``lam``."""
    p = count_ge / count_ge.shape[0]
    return (p < alpha).sum(1).astype(np.float64), (p > lam).sum(1).astype(np.float64)


def _counts_ge(obs_I: np.ndarray, sim_I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``#{c: I_c >= I_b}`` over the observed value and the replicates, itself included, ``[P + 1, Fv]`` (row 0 the
    observed), and the mask ``[F]`` of the units counted (finite ``obs_I``)."""
    valid = np.isfinite(obs_I)
    allI = np.vstack([obs_I[None, valid], sim_I[:, valid]])  # [P + 1, Fv]
    if allI.shape[1] == 0:
        return np.zeros_like(allI), valid
    return allI.shape[0] + 1 - rankdata(allI, method="min", axis=0), valid


def arrangement_pvalue_counts(obs_I: np.ndarray, sim_I: np.ndarray, arr_I: np.ndarray, alpha: float = UNIT_ALPHA,
                              lam: float = STOREY_LAMBDA, arr_p: np.ndarray | None = None,
                              counts: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`unit_pvalue_counts` of every arrangement ``r`` tested as if observed (``unit_pvalue_counts(arr_I[r],
    sim_I)``: the arrangements ``{r, replicates}``), for all ``R`` at once: ``(below [R, P + 1], above [R, P + 1])``.
    ``obs_I [F]`` marks the units left out (NaN: constant), ``sim_I [P, F]``, ``arr_I [R, F]``. What the caller
    already has is not counted again: ``arr_p [R, F]``, the arrangements' own unit p (``p_greater`` of
    ``global_autocorrelation(..., arrangements=)``), and ``counts``, :func:`_counts_ge` of ``(obs_I, sim_I)``.

    A replicate's count ``#{c: I_c >= I_b}`` is its count among the replicates plus one where the arrangement's I is
    ``>= I_b``; that one only changes which side of ``alpha`` (or ``lam``) a unit's p falls where the count sits just
    at the threshold, so only those (replicate, unit) pairs are compared per arrangement."""
    count_ge, valid = _counts_ge(obs_I, sim_I) if counts is None else counts
    S, X = sim_I[:, valid], np.asarray(arr_I, dtype=np.float64)[:, valid]
    P, Fv = S.shape
    R, P1 = X.shape[0], P + 1
    if Fv == 0:
        return np.zeros((R, P1)), np.zeros((R, P1))
    own = (1.0 + count_at_least(S, X)) / P1 if arr_p is None else np.asarray(arr_p)[:, valid]  # [R, Fv]: p_greater
    below, above = np.zeros((R, P1)), np.zeros((R, P1))
    below[:, 0], above[:, 0] = (own < alpha).sum(1), (own > lam).sum(1)
    among = count_ge[1:] - (obs_I[valid][None, :] >= S)  # [P, Fv]: #{replicates c: I_c >= I_b}, the observed taken out
    for out, at0, at1, flips_when_ge in ((below, among / P1 < alpha, (among + 1) / P1 < alpha, False),
                                         (above, among / P1 > lam, (among + 1) / P1 > lam, True)):
        sure = at1 if not flips_when_ge else at0  # counted whether or not the arrangement's I >= I_b
        out[:, 1:] = sure.sum(1)[None, :]
        b, f = np.nonzero(at0 != at1)  # counted only one way: below iff I_arr < I_b; above iff I_arr >= I_b
        if b.size:
            hit = (X[:, f] >= S[b, f]) if flips_when_ge else (X[:, f] < S[b, f])  # [R, pairs]
            out[:, 1:] += np.stack([np.bincount(b, weights=h, minlength=P) for h in hit.astype(np.float64)])
    return below, above


def summarise_null(T: np.ndarray) -> dict[str, float]:
    """:data:`LAYER_FIELDS` of a statistic from ``T [P + 1]`` (``T[0]`` observed, the rest its null)."""
    obs = float(T[0])
    null = np.asarray(T[1:], dtype=np.float64)
    if null.size == 0 or not np.isfinite(obs):
        return dict(dict.fromkeys(LAYER_FIELDS, np.nan), obs=obs)
    mean = float(null.mean())
    lo, hi = (float(v) for v in np.quantile(null, [0.025, 0.975]))
    return {"obs": obs, "null_mean": mean, "null_lo": lo, "null_hi": hi, "excess": obs - mean,
            "excess_lo": obs - hi, "excess_hi": obs - lo, "p": float((1 + (null >= obs).sum()) / (null.size + 1))}


def _arrangement_fields(T: np.ndarray) -> dict:
    """For ``T [R, P + 1]`` (column 0 each arrangement's statistic, the rest its null): ``first`` (the first
    arrangement's :data:`LAYER_FIELDS`) and, for all ``R``, :data:`SHUFFLE_FIELDS` as :func:`summarise_null` gives
    them."""
    obs, null = T[:, 0], T[:, 1:]
    if null.shape[1] == 0:
        nan = np.full(T.shape[0], np.nan)
        return {"first": summarise_null(T[0]), "excess": nan, "p": nan.copy()}
    with np.errstate(invalid="ignore"):
        p = (1.0 + (null >= obs[:, None]).sum(1)) / (null.shape[1] + 1)
    return {"first": summarise_null(T[0]), "excess": obs - null.mean(1), "p": np.where(np.isfinite(obs), p, np.nan)}


def _standardise(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred columns scaled to unit norm ``[n, F]`` (constant columns zero) and the non-constant mask."""
    z = values - values.mean(0)
    ss = np.sqrt((z * z).sum(0))
    keep = np.ptp(values, axis=0) > 0
    return np.where(keep, z / np.where(keep, ss, 1.0), 0.0), keep


class RegionLayerTest:
    """The layer tests of one region, fed column blocks (:meth:`add`) and computed once at the end (:meth:`result`).

    ``w``: the region's weights (transform applied; rows in the order of the values' rows). ``blocks``: labels
    ``[n]`` (same rows): pc_I's permutations then move places only within their block, as the per-unit
    replicates fed to :meth:`add` must (:mod:`mechflow.spatial.blocks`). ``arrangements``: ``[R, n]``
    rearrangements of the places (row ``i`` takes row ``arrangements[r, i]``: a shuffle of the coordinates),
    each tested as if observed against the same null; :meth:`add` then needs their unit I (``arr_I``)."""

    def __init__(self, w: W, blocks=None, arrangements: np.ndarray | None = None):
        self.A = weights_csr(w)
        self.n = self.A.shape[0]
        self.codes = None if blocks is None else block_codes(blocks)
        if self.codes is not None and self.codes.size != self.n:
            raise ValueError(f"blocks has {self.codes.size} labels for {self.n} places")
        self.arrangements = None if arrangements is None else np.asarray(arrangements, dtype=np.int64)
        if self.arrangements is not None and (self.arrangements.ndim != 2 or self.arrangements.shape[1] != self.n):
            raise ValueError(f"arrangements must be [R, {self.n}], got {self.arrangements.shape}")
        self.s0 = float(self.A.sum())
        self.K = np.zeros((self.n, self.n)) if self.n <= MAX_GRAM_N else None
        self.F = 0
        self.below: np.ndarray | None = None
        self.above: np.ndarray | None = None
        self.sum_I: np.ndarray | None = None
        self.arr_sum_I = self.arr_below = self.arr_above = None  # [R], [R, P + 1], [R, P + 1]

    def add(self, values: np.ndarray, obs_I: np.ndarray | None = None, sim_I: np.ndarray | None = None,
            offset: int = 0, arr_I: np.ndarray | None = None, arr_p: np.ndarray | None = None) -> None:
        """One column block: ``values [n, Fb]`` and, from the per-unit test on it, ``obs_I [Fb]``, its
        replicates ``sim_I [P, Fb]`` (None: no per-unit statistics) and, given ``arrangements``, their unit I
        ``arr_I [R, Fb]`` (and their unit p ``arr_p [R, Fb]`` where already counted, else counted here).
        ``offset``: the block's first column in the whole set. Sums go by :data:`SUM_CHUNK`-column chunks of the
        whole set, added in order, so blocks that start at multiples of it give the unblocked result bit for bit."""
        values = np.asarray(values, dtype=np.float64)
        Fb = values.shape[1]
        if self.arrangements is not None and obs_I is not None and arr_I is None:
            raise ValueError("this test has arrangements: add() needs their unit I (arr_I)")
        cuts = sorted({0, Fb, *(c - offset for c in range(-(-offset // SUM_CHUNK) * SUM_CHUNK, offset + Fb, SUM_CHUNK)
                                if 0 < c - offset < Fb)})
        for a, b in zip(cuts[:-1], cuts[1:]):
            has_units = obs_I is not None
            self._add_chunk(values[:, a:b], np.asarray(obs_I[a:b], dtype=np.float64) if has_units else None,
                            np.asarray(sim_I[:, a:b], dtype=np.float64) if has_units and sim_I is not None else None,
                            np.asarray(arr_I[:, a:b], dtype=np.float64) if has_units and arr_I is not None else None,
                            None if arr_p is None else arr_p[:, a:b])

    def _add_chunk(self, values: np.ndarray, obs_I: np.ndarray | None, sim_I: np.ndarray | None,
                   arr_I: np.ndarray | None, arr_p: np.ndarray | None) -> None:
        zs, keep = _standardise(values)
        if self.K is not None:
            self.K += zs @ zs.T
        self.F += int(keep.sum())
        if obs_I is None:
            return
        sim_I = np.zeros((0, obs_I.size)) if sim_I is None else sim_I
        counts = _counts_ge(obs_I, sim_I)
        valid = counts[1]
        below, above = _threshold_counts(counts[0])
        sum_I = np.concatenate([[obs_I[valid].sum()], sim_I[:, valid].sum(1)])
        if self.below is None:
            self.below, self.above, self.sum_I = below, above, sum_I
        elif self.below.shape != below.shape:
            raise ValueError("every column block must come with the same number of replicates")
        else:
            self.below, self.above, self.sum_I = self.below + below, self.above + above, self.sum_I + sum_I
        if arr_I is not None:
            a_below, a_above = arrangement_pvalue_counts(obs_I, sim_I, arr_I, arr_p=arr_p, counts=counts)
            a_sum = arr_I[:, valid].sum(1)
            if self.arr_sum_I is None:
                self.arr_sum_I, self.arr_below, self.arr_above = a_sum, a_below, a_above
            else:
                self.arr_sum_I, self.arr_below, self.arr_above = (self.arr_sum_I + a_sum, self.arr_below + a_below,
                                                                  self.arr_above + a_above)

    def _pi1(self, above: np.ndarray) -> np.ndarray:
        return 1.0 - np.minimum(1.0, above / ((1.0 - STOREY_LAMBDA) * self.F))

    def components(self, n_pcs: int = N_PCS) -> np.ndarray:
        """The leading ``m <= n_pcs`` eigenvectors of K with a non-negligible eigenvalue, ``[n, m]`` (unit norm)."""
        m0 = max(0, min(n_pcs, self.n - 1))
        if m0 == 0 or self.F == 0 or self.K is None:
            return np.zeros((self.n, 0))
        if self.n > 4 * m0:  # Lanczos from a fixed start: a few products with K instead of a full eigh
            vals, vecs = scipy.sparse.linalg.eigsh(self.K, k=m0, which="LA", v0=np.cos(np.arange(self.n) + 0.5))  # not constant: K 1 = 0
        else:
            vals, vecs = scipy.linalg.eigh(self.K, subset_by_index=[self.n - m0, self.n - 1])
        return vecs[:, vals > 1e-10 * max(float(vals.max()), 1e-300)]

    def result(self, permutations: int, seed: int, n_pcs: int = N_PCS, num_threads: int | None = 1) -> dict[str, dict]:
        """Statistic -> :data:`LAYER_FIELDS`, plus ``"_info"``: ``n_units``, ``n_pcs`` and each statistic's
        permutation count. ``permutations`` (and ``seed``) of pc_I, on ``num_threads`` numba threads (None:
        numba's setting; the result does not depend on it); the others have the per-unit test's."""
        from mechflow.spatial import _gram_numba, _perm_numba  # numba loads on first use, as the fused engine's

        U = self.components(n_pcs)
        m = U.shape[1]
        nan = np.full(1, np.nan)
        R = 0 if self.arrangements is None else self.arrangements.shape[0]
        pc, pc_arr = nan, np.full(R, np.nan)
        if m:
            A = self.A
            rng = np.random.default_rng(int(seed))
            with _perm_numba.numba_threads(num_threads):
                parts = [_gram_numba.permuted_forms(U, A.indptr, A.indices, A.data, np.arange(self.n)[None])]
                for p0 in range(0, int(permutations), PERM_BATCH):
                    nb = min(PERM_BATCH, int(permutations) - p0)
                    perms = (rng.permuted(np.tile(np.arange(self.n), (nb, 1)), axis=1) if self.codes is None
                             else within_blocks(rng, nb, self.codes))
                    parts.append(_gram_numba.permuted_forms(U, A.indptr, A.indices, A.data, perms))
                if R:
                    pc_arr = (self.n / self.s0) * _gram_numba.permuted_forms(U, A.indptr, A.indices, A.data,
                                                                             self.arrangements) / m
            pc = (self.n / self.s0) * np.concatenate(parts) / m
        out: dict[str, dict] = {"pc_I": summarise_null(pc)}
        arr: dict[str, np.ndarray] = {"pc_I": np.column_stack([pc_arr, np.broadcast_to(pc[1:], (R, pc.size - 1))])}
        unit_perms = 0
        if self.below is not None and self.F > 0:
            unit_perms = self.below.size - 1
            out["mean_I"] = summarise_null(self.sum_I / self.F)
            out["frac_p05"] = summarise_null(self.below / self.F)
            out["pi1"] = summarise_null(self._pi1(self.above))
            if R:
                arr["mean_I"] = np.column_stack([self.arr_sum_I, np.broadcast_to(self.sum_I[1:], (R, unit_perms))]) / self.F
                arr["frac_p05"] = self.arr_below / self.F
                arr["pi1"] = self._pi1(self.arr_above)
        else:
            for s in ("mean_I", "frac_p05", "pi1"):
                out[s] = summarise_null(nan)
        if R:  # each arrangement: its statistic against the data's null, [R] per field
            out["_arrangements"] = {s: _arrangement_fields(arr.get(s, np.full((R, 1), np.nan))) for s in LAYER_STATS}
        out["_info"] = {"n_units": self.F, "n_pcs": m, "n_blocks": -1 if self.codes is None else n_free_blocks(self.codes),
                        "perms": {"mean_I": unit_perms, "pc_I": int(permutations) if m else 0,
                                  "frac_p05": unit_perms, "pi1": unit_perms}}
        return out


class LayerTests:
    """The layer tests of one variant (the data or a control) over every region of a feature set.

    Pass :meth:`collect` as ``moran_dataset(..., on_region=...)`` for each column block; then :meth:`dataset`.
    ``blocks``: labels per prompt of the whole set (``weights``' positions index them): every permutation moves
    places only within their block (pass the same to ``moran_dataset``); the dataset then has ``layer_blocks``.
    ``arrangements``: region -> ``[R, n_region]`` shuffles of its coordinates as rearrangements of its places (pass
    the same to ``moran_dataset``), each tested as if observed against the data's null: :meth:`shuffled_dataset`."""

    def __init__(self, weights: Mapping[str, tuple], permutations: int, seed: int, n_pcs: int = N_PCS,
                 num_threads: int | None = 1, blocks=None, arrangements: Mapping[str, np.ndarray] | None = None):
        blocks = None if blocks is None else np.asarray(blocks)
        self.blocked = blocks is not None
        self.tests = {str(reg): RegionLayerTest(w, None if blocks is None else blocks[idx],
                                                None if arrangements is None else arrangements[reg])
                      for reg, (idx, w) in weights.items()}
        self.permutations, self.seed, self.n_pcs = int(permutations), int(seed), int(n_pcs)
        self.num_threads = num_threads
        self._results: dict[str, dict] | None = None

    def collect(self, region: str, values: np.ndarray, res: Mapping, offset: int = 0) -> None:
        """``moran_dataset``'s per-region callback: the region's block of values (its first column ``offset`` in
        the whole set; bind it with ``functools.partial``) and the engine's result."""
        arr = res.get("arrangements")  # the observed I as the replicates compute it: the counts compare like with like
        self.tests[str(region)].add(values, res.get("replicates_observed", res["moran"]["I"]), res.get("replicates"),
                                    offset=offset, arr_I=None if arr is None else arr["I"],
                                    arr_p=None if arr is None else arr["p_greater"])

    def results(self) -> dict[str, dict]:
        """Region -> :meth:`RegionLayerTest.result` (computed once, after the last block)."""
        if self._results is None:
            self._results = {r: self.tests[r].result(self.permutations, self.seed, self.n_pcs, self.num_threads)
                             for r in sorted(self.tests)}
        return self._results

    def dataset(self, suffix: str = "") -> xr.Dataset:
        """Dims ``region``, ``layer_stat``: ``layer_<field><suffix>`` for each of :data:`LAYER_FIELDS`,
        ``layer_perms<suffix>`` (permutations of each statistic), ``layer_units<suffix>`` and
        ``layer_pcs<suffix>`` per region (and, with blocks, ``layer_blocks<suffix>``: blocks of two or more places,
        the ones a restricted permutation can change)."""
        res = self.results()
        return self._dataset({r: {s: res[r][s] for s in LAYER_STATS} for r in res}, res, suffix)

    def _dataset(self, fields: Mapping[str, Mapping[str, Mapping]], res: Mapping[str, Mapping], suffix: str) -> xr.Dataset:
        regions = sorted(res)
        data = {f"layer_{f}{suffix}": (("region", "layer_stat"),
                                       np.array([[fields[r][s][f] for s in LAYER_STATS] for r in regions]))
                for f in LAYER_FIELDS}
        data[f"layer_perms{suffix}"] = (("region", "layer_stat"),
                                        np.array([[res[r]["_info"]["perms"][s] for s in LAYER_STATS] for r in regions]))
        data[f"layer_units{suffix}"] = ("region", np.array([res[r]["_info"]["n_units"] for r in regions]))
        data[f"layer_pcs{suffix}"] = ("region", np.array([res[r]["_info"]["n_pcs"] for r in regions]))
        if self.blocked:
            data[f"layer_blocks{suffix}"] = ("region", np.array([res[r]["_info"]["n_blocks"] for r in regions]))
        return xr.Dataset(data, coords={"region": regions, "layer_stat": list(LAYER_STATS)})

    def shuffled_dataset(self, suffix: str = "_shuffled") -> xr.Dataset:
        """The arrangements' tests: ``layer_<field><suffix>`` etc. as :meth:`dataset` for the first arrangement (one
        shuffle, a test like the data's), and over all ``R`` of them ``layer_shuffle_excess`` and ``layer_shuffle_p``
        (dims ``region``, ``layer_stat``, ``shuffle``): each shuffle's excess over the data's null mean and its
        permutation p-value (uniform where the test is calibrated)."""
        res = self.results()
        regions = sorted(res)
        if any("_arrangements" not in res[r] for r in regions):
            raise ValueError("these layer tests have no arrangements")
        first = {r: {s: res[r]["_arrangements"][s]["first"] for s in LAYER_STATS} for r in regions}
        ds = self._dataset(first, res, suffix)
        for f in SHUFFLE_FIELDS:
            ds[f"layer_shuffle_{f}"] = (("region", "layer_stat", "shuffle"),
                                        np.array([[res[r]["_arrangements"][s][f] for s in LAYER_STATS] for r in regions]))
        return ds
