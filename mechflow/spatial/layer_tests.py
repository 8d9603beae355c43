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

from mechflow.spatial._sparse import weights_csr
from mechflow.spatial.blocks import block_codes, n_free_blocks, within_blocks

__all__ = ["LAYER_STATS", "LAYER_FIELDS", "LAYER_ATTRS", "RESID_NULL", "FREE_NULL", "N_PCS", "UNIT_ALPHA", "STOREY_LAMBDA", "storey_pi1",
           "unit_pvalue_counts", "summarise_null", "RegionLayerTest", "LayerTests"]

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
    valid = np.isfinite(obs_I)
    allI = np.vstack([obs_I[None, valid], sim_I[:, valid]])  # [P + 1, Fv]
    P1 = allI.shape[0]
    if allI.shape[1] == 0:
        return np.zeros(P1), np.zeros(P1), 0
    count_ge = P1 + 1 - rankdata(allI, method="min", axis=0)  # #{c: I_c >= I_b}, itself included
    p = count_ge / P1
    return (p < alpha).sum(1).astype(np.float64), (p > lam).sum(1).astype(np.float64), int(valid.sum())


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
    replicates fed to :meth:`add` must (:mod:`mechflow.spatial.blocks`)."""

    def __init__(self, w: W, blocks=None):
        self.A = weights_csr(w)
        self.n = self.A.shape[0]
        self.codes = None if blocks is None else block_codes(blocks)
        if self.codes is not None and self.codes.size != self.n:
            raise ValueError(f"blocks has {self.codes.size} labels for {self.n} places")
        self.s0 = float(self.A.sum())
        self.K = np.zeros((self.n, self.n)) if self.n <= MAX_GRAM_N else None
        self.F = 0
        self.below: np.ndarray | None = None
        self.above: np.ndarray | None = None
        self.sum_I: np.ndarray | None = None

    def add(self, values: np.ndarray, obs_I: np.ndarray | None = None, sim_I: np.ndarray | None = None,
            offset: int = 0) -> None:
        """One column block: ``values [n, Fb]`` and, from the per-unit test on it, ``obs_I [Fb]`` and its
        replicates ``sim_I [P, Fb]`` (None: no per-unit statistics). ``offset``: the block's first column in
        the whole set. Sums go by :data:`SUM_CHUNK`-column chunks of the whole set, added in order, so blocks
        that start at multiples of it give the unblocked result bit for bit."""
        values = np.asarray(values, dtype=np.float64)
        Fb = values.shape[1]
        cuts = sorted({0, Fb, *(c - offset for c in range(-(-offset // SUM_CHUNK) * SUM_CHUNK, offset + Fb, SUM_CHUNK)
                                if 0 < c - offset < Fb)})
        for a, b in zip(cuts[:-1], cuts[1:]):
            self._add_chunk(values[:, a:b], None if obs_I is None else np.asarray(obs_I[a:b], dtype=np.float64),
                            None if obs_I is None or sim_I is None else np.asarray(sim_I[:, a:b], dtype=np.float64))

    def _add_chunk(self, values: np.ndarray, obs_I: np.ndarray | None, sim_I: np.ndarray | None) -> None:
        zs, keep = _standardise(values)
        if self.K is not None:
            self.K += zs @ zs.T
        self.F += int(keep.sum())
        if obs_I is None:
            return
        sim_I = np.zeros((0, obs_I.size)) if sim_I is None else sim_I
        below, above, _ = unit_pvalue_counts(obs_I, sim_I)
        valid = np.isfinite(obs_I)
        sum_I = np.concatenate([[obs_I[valid].sum()], sim_I[:, valid].sum(1)])
        if self.below is None:
            self.below, self.above, self.sum_I = below, above, sum_I
        elif self.below.shape != below.shape:
            raise ValueError("every column block must come with the same number of replicates")
        else:
            self.below, self.above, self.sum_I = self.below + below, self.above + above, self.sum_I + sum_I

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
        pc = nan
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
            pc = (self.n / self.s0) * np.concatenate(parts) / m
        out: dict[str, dict] = {"pc_I": summarise_null(pc)}
        unit_perms = 0
        if self.below is not None and self.F > 0:
            unit_perms = self.below.size - 1
            out["mean_I"] = summarise_null(self.sum_I / self.F)
            out["frac_p05"] = summarise_null(self.below / self.F)
            out["pi1"] = summarise_null(1.0 - np.minimum(1.0, self.above / ((1.0 - STOREY_LAMBDA) * self.F)))
        else:
            for s in ("mean_I", "frac_p05", "pi1"):
                out[s] = summarise_null(nan)
        out["_info"] = {"n_units": self.F, "n_pcs": m, "n_blocks": -1 if self.codes is None else n_free_blocks(self.codes),
                        "perms": {"mean_I": unit_perms, "pc_I": int(permutations) if m else 0,
                                  "frac_p05": unit_perms, "pi1": unit_perms}}
        return out


class LayerTests:
    """The layer tests of one variant (the data or a control) over every region of a feature set.

    Pass :meth:`collect` as ``moran_dataset(..., on_region=...)`` for each column block; then :meth:`dataset`.
    ``blocks``: labels per prompt of the whole set (``weights``' positions index them): every permutation moves
    places only within their block (pass the same to ``moran_dataset``); the dataset then has ``layer_blocks``."""

    def __init__(self, weights: Mapping[str, tuple], permutations: int, seed: int, n_pcs: int = N_PCS,
                 num_threads: int | None = 1, blocks=None):
        blocks = None if blocks is None else np.asarray(blocks)
        self.blocked = blocks is not None
        self.tests = {str(reg): RegionLayerTest(w, None if blocks is None else blocks[idx])
                      for reg, (idx, w) in weights.items()}
        self.permutations, self.seed, self.n_pcs = int(permutations), int(seed), int(n_pcs)
        self.num_threads = num_threads

    def collect(self, region: str, values: np.ndarray, res: Mapping, offset: int = 0) -> None:
        """``moran_dataset``'s per-region callback: the region's block of values (its first column ``offset`` in
        the whole set; bind it with ``functools.partial``) and the engine's result."""
        moran = res["moran"]
        self.tests[str(region)].add(values, moran["I"], res.get("replicates"), offset=offset)

    def dataset(self, suffix: str = "") -> xr.Dataset:
        """Dims ``region``, ``layer_stat``: ``layer_<field><suffix>`` for each of :data:`LAYER_FIELDS`,
        ``layer_perms<suffix>`` (permutations of each statistic), ``layer_units<suffix>`` and
        ``layer_pcs<suffix>`` per region (and, with blocks, ``layer_blocks<suffix>``: blocks of two or more places,
        the ones a restricted permutation can change)."""
        regions = sorted(self.tests)
        res = {r: self.tests[r].result(self.permutations, self.seed, self.n_pcs, self.num_threads) for r in regions}
        data = {f"layer_{f}{suffix}": (("region", "layer_stat"),
                                       np.array([[res[r][s][f] for s in LAYER_STATS] for r in regions]))
                for f in LAYER_FIELDS}
        data[f"layer_perms{suffix}"] = (("region", "layer_stat"),
                                        np.array([[res[r]["_info"]["perms"][s] for s in LAYER_STATS] for r in regions]))
        data[f"layer_units{suffix}"] = ("region", np.array([res[r]["_info"]["n_units"] for r in regions]))
        data[f"layer_pcs{suffix}"] = ("region", np.array([res[r]["_info"]["n_pcs"] for r in regions]))
        if self.blocked:
            data[f"layer_blocks{suffix}"] = ("region", np.array([res[r]["_info"]["n_blocks"] for r in regions]))
        return xr.Dataset(data, coords={"region": regions, "layer_stat": list(LAYER_STATS)})
