"""Global Moran's I and Geary's C for all columns of ``[n, F]`` at once, matching ``esda``.

Analytical parts (I, EI, VI_norm, z_norm, p_norm, the randomisation moments, Geary's C and its
moments) are computed in float64 and equal esda's to rounding. The permutation test draws one
permutation of the observations per replicate and applies it to every column at once; each
replicate needs, per column, the cross term ``z_p' W z_p`` (Moran) and ``sum_i rc_i z_p[i]^2``
(Geary; ``rc`` = row + column sums of W), and statistics are accumulated per column (counts, sums,
sums of squares), so memory does not grow with the number of permutations. Three engines compute
the replicates (``engine=``):

- ``"fused"`` (CPU default): a numba kernel (:mod:`mechflow.spatial._perm_numba`) that gathers the
  permuted rows straight from cache-sized column tiles and multiplies them by W in one pass, on
  ``num_threads`` threads, without materialising the permuted matrix. Bit-identical for any
  thread count.
- ``"numpy"`` (the reference): a numpy row gather of the permuted matrix and a single-threaded
  scipy CSR product per replicate batch.
- ``"torch"`` (CUDA default; also runs on CPU): the same products with torch sparse CSR.

``"fused"`` and ``"numpy"`` draw the same permutations for a seed (a numpy Generator, one
permutation per replicate in order) and differ only in summation order (float32 rounding by
default, ``sim_dtype=torch.float64`` for float64); ``"torch"`` draws its own (torch generator). So
the permutation outputs (``p_sim``, ``z_sim``, ...) agree with esda in distribution, not bit for bit.

Conventions (esda 2.x, default arguments):
- Moran ``p_norm``/``p_rand``: two-tailed (``2 * sf(|z|)``) when ``two_tailed=True`` (esda's
  default), else one-tailed in the direction of z.
- Geary ``p_norm``/``p_rand``: one-tailed in the direction of ``C - 1`` (esda has no option).
- ``p_sim = (larger + 1) / (permutations + 1)`` where ``larger`` counts replicates ``>=`` the
  observed statistic and is folded to ``permutations - larger`` when that is smaller.
- ``z_sim = (stat - mean(sim)) / std(sim)`` with ``ddof=0``; ``p_z_sim = sf(|z_sim|)``.
- Not in esda: one-sided, unfolded permutation p-values for *positive* spatial autocorrelation from
  the same replicates, Moran ``p_greater = (#{I_sim >= I} + 1) / (P + 1)`` and Geary
  ``p_less = (#{C_sim <= C} + 1) / (P + 1)`` (small C = positive autocorrelation). Under the null
  they are (discrete) Uniform(0, 1]; the folded ``p_sim`` is roughly Uniform(0, 0.5], so it must not
  be read as a one-sided p-value. NaN when ``permutations == 0``.
- Constant columns (zero variance, e.g. dead features) give NaN statistics (esda returns
  NaN/inf with warnings); they are counted in ``n_constant``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from libpysal.weights import W
from scipy.stats import norm

from mechflow.devices import resolve_device
from mechflow.kernels.threads import torch_threads
from mechflow.spatial._sparse import (
    as_2d_values,
    count_at_least,
    fold_counts,
    locality_order,
    torch_csr,
    weights_csr,
)
from mechflow.spatial.blocks import block_codes, within_blocks

__all__ = ["global_moran", "global_geary", "global_autocorrelation", "ENGINES"]

ENGINES = ("fused", "numpy", "torch")  # permutation-test engines; CPU default "fused", CUDA default "torch"


def _observed(y: np.ndarray, A: sp.csr_matrix, w: W, two_tailed: bool):
    n = y.shape[0]
    constant = np.ptp(y, axis=0) == 0
    z = y - y.mean(axis=0)
    z[:, constant] = 0.0
    z2 = z * z
    z2ss = z2.sum(axis=0)
    lag = A @ z
    inum = (z * lag).sum(axis=0)
    s0, s1, s2 = float(w.s0), float(w.s1), float(w.s2)
    n2, s02 = n * n, s0 * s0
    with np.errstate(divide="ignore", invalid="ignore"):
        kurt = ((z2 * z2).sum(axis=0) / n) / (z2ss / n) ** 2
        # Moran (Cliff & Ord), exactly esda's expressions
        I = n / s0 * inum / z2ss  # noqa: E741
        EI = -1.0 / (n - 1)
        VI_norm = (n2 * s1 - n * s2 + 3 * s02) / ((n - 1) * (n + 1) * s02) - (1.0 / (n - 1)) ** 2
        a_ = n * ((n2 - 3 * n + 3) * s1 - n * s2 + 3 * s02)
        b_ = kurt * ((n2 - n) * s1 - 2 * n * s2 + 6 * s02)
        VI_rand = (a_ - b_) / ((n - 1) * (n - 2) * (n - 3) * s02) - EI * EI
        z_norm = (I - EI) / VI_norm**0.5
        z_rand = (I - EI) / np.sqrt(VI_rand)
        # Geary: sum_ij w_ij (z_i - z_j)^2 = sum_i (r_i + c_i) z_i^2 - 2 z'Wz; a column sum, not a BLAS
        # product, so each column's value does not depend on the other columns (blocks of columns agree)
        rc = np.asarray(A.sum(axis=1)).ravel() + np.asarray(A.sum(axis=0)).ravel()
        num = (rc[:, None] * z2).sum(axis=0) - 2.0 * inum
        C = (n - 1) * num / (z2ss * s0 * 2.0)
        ga = (n - 1) * s1 * (n2 - 3 * n + 3 - (n - 1) * kurt)
        gb = 0.25 * ((n - 1) * s2 * (n2 + 3 * n - 6 - (n2 - n + 2) * kurt))
        gc = s02 * (n2 - 3 - (n - 1) ** 2 * kurt)
        VC_rand = (ga - gb + gc) / (n * (n - 2) * (n - 3) * s02)
        VC_norm = (1 / (2 * (n + 1) * s02)) * ((2 * s1 + s2) * (n - 1) - 4 * s02)
        gz_norm = (C - 1.0) / VC_norm**0.5
        gz_rand = (C - 1.0) / np.sqrt(VC_rand)
    tails = 2.0 if two_tailed else 1.0
    F = y.shape[1]
    full = np.full(F, np.nan)
    moran = {
        "I": I,
        "EI": np.full(F, EI),
        "VI_norm": np.full(F, VI_norm),
        "seI_norm": np.full(F, VI_norm**0.5),
        "z_norm": z_norm,
        "p_norm": tails * norm.sf(np.abs(z_norm)),
        "VI_rand": VI_rand,
        "seI_rand": np.sqrt(VI_rand),
        "z_rand": z_rand,
        "p_rand": tails * norm.sf(np.abs(z_rand)),
    }
    geary = {
        "C": C,
        "EC": np.ones(F),
        "VC_norm": np.full(F, VC_norm),
        "seC_norm": np.full(F, VC_norm**0.5),
        "z_norm": gz_norm,
        "p_norm": norm.sf(np.abs(gz_norm)),
        "VC_rand": VC_rand,
        "seC_rand": np.sqrt(VC_rand),
        "z_rand": gz_rand,
        "p_rand": norm.sf(np.abs(gz_rand)),
    }
    for d in (moran, geary):
        for key, val in d.items():
            if key not in ("EI", "VI_norm", "seI_norm", "EC", "VC_norm", "seC_norm"):
                d[key] = np.where(constant, full, val)
    return z, z2ss, rc, constant, moran, geary


class _NumpyReplicates:
    """CPU engine: numpy row gathers and single-threaded scipy CSR products (robust on shared cores)."""

    def __init__(self, zs: np.ndarray, A: sp.csr_matrix, rc: np.ndarray, chunks, dtype: torch.dtype, seed: int):
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        self.n = zs.shape[0]
        self.W = sp.csr_matrix(A, dtype=np_dtype)
        self.parts = [np.ascontiguousarray(zs[:, a:b], dtype=np_dtype) for a, b in chunks]
        self.rc = rc.astype(np_dtype)
        self.rng = np.random.default_rng(int(seed))

    def draw(self, nb: int) -> np.ndarray:
        """``[nb, n]`` independent uniform permutations of ``range(n)``."""
        return self.rng.permuted(np.tile(np.arange(self.n), (nb, 1)), axis=1)

    def replicates(self, perms: np.ndarray, want_sq: bool):
        """Per column chunk: ``cross [nb, Fc]`` (``z_p' W z_p``) and ``sq [nb, Fc]`` (``sum_i rc_i z_p[i]^2``),
        where ``z_p[i] = z[perms[p, i]]``."""
        nb, n = perms.shape
        idx = np.ascontiguousarray(perms.T)  # [n, nb]: row i of replicate b is observation perms[b, i]
        for part in self.parts:
            Zp = part[idx].reshape(n, -1)
            cross = np.einsum("ij,ij->j", Zp, self.W @ Zp).reshape(nb, -1).astype(np.float64)
            sq = None
            if want_sq:
                sq = (self.rc @ np.square(Zp)).reshape(nb, -1).astype(np.float64)
            yield cross, sq


class _TorchReplicates:
    """torch engine (CUDA by default; runs on CPU too): the same products with torch sparse CSR."""

    def __init__(self, zs: np.ndarray, A: sp.csr_matrix, rc: np.ndarray, chunks, dtype: torch.dtype, seed: int,
                 device: torch.device):
        self.n, self.dev = zs.shape[0], device
        self.W = torch_csr(A, dtype, device)
        self.parts = [torch.from_numpy(zs[:, a:b]).to(device=device, dtype=dtype).contiguous() for a, b in chunks]
        self.rc = torch.from_numpy(rc).to(device=device, dtype=dtype)
        self.gen = torch.Generator(device=device).manual_seed(int(seed))

    def draw(self, nb: int) -> torch.Tensor:
        return torch.rand((nb, self.n), generator=self.gen, device=self.dev).argsort(dim=1)

    def replicates(self, perms, want_sq: bool):
        perms = torch.as_tensor(perms, device=self.dev)
        nb, n = perms.shape
        idx = perms.T.contiguous()
        for part in self.parts:
            Zp = part[idx].reshape(n, -1)
            cross = (Zp * (self.W @ Zp)).sum(0).view(nb, -1).double().cpu().numpy()
            sq = None
            if want_sq:
                sq = (self.rc @ Zp.square()).view(nb, -1).double().cpu().numpy()
            yield cross, sq


class _FusedReplicates:
    """CPU engine (default): the numba kernel of :mod:`mechflow.spatial._perm_numba` on all columns
    (tiles of 64) per batch of replicates, on ``num_threads`` threads (None: numba's setting).
    Draws the same permutations as :class:`_NumpyReplicates` for a seed."""

    def __init__(self, zs: np.ndarray, A: sp.csr_matrix, rc: np.ndarray, dtype: torch.dtype, seed: int,
                 num_threads: int | None):
        from mechflow.spatial import _perm_numba  # numba is imported (and the kernel loaded) on first use

        self.kernel = _perm_numba
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        self.n, self.F = zs.shape
        A = sp.csr_matrix(A)
        self.Zt = _perm_numba.tile_columns(zs, np_dtype)
        self.indptr = A.indptr.astype(np.int64)
        self.indices = A.indices.astype(np.uint32)
        self.data = A.data.astype(np_dtype)
        row_w = _perm_numba.equal_row_weights(A.indptr, A.data)
        self.row_w = (np.zeros(0) if row_w is None else row_w).astype(np_dtype)
        self.rc = rc.astype(np_dtype)
        self.rng = np.random.default_rng(int(seed))
        self.num_threads = num_threads

    def draw(self, nb: int) -> np.ndarray:
        """``[nb, n]`` independent uniform permutations of ``range(n)`` (the numpy engine's stream)."""
        return self.rng.permuted(np.tile(np.arange(self.n), (nb, 1)), axis=1)

    def replicates(self, perms: np.ndarray, want_sq: bool):
        """One chunk (all F columns): ``cross [nb, F]`` and ``sq [nb, F]`` (None unless ``want_sq``)."""
        perms = np.ascontiguousarray(perms, dtype=np.uint32)
        with self.kernel.numba_threads(self.num_threads):
            cross, sq = self.kernel.replicates(self.Zt, self.indptr, self.indices, self.data, self.row_w, self.rc,
                                               perms, want_sq)
        yield cross[:, : self.F], (sq[:, : self.F] if want_sq else None)


class _WithinBlocks:
    """An engine whose replicates permute places only within blocks (:mod:`mechflow.spatial.blocks`), drawn from
    the engine's own random stream; ``codes [n]`` in the engine's row order."""

    def __init__(self, eng, codes: np.ndarray):
        self.eng, self.codes = eng, np.asarray(codes, dtype=np.int64)

    def draw(self, nb: int):
        if isinstance(self.eng, _TorchReplicates):
            codes = torch.as_tensor(self.codes, device=self.eng.dev, dtype=torch.float64)
            keys = codes + torch.rand((nb, self.codes.size), generator=self.eng.gen, device=self.eng.dev, dtype=torch.float64)
            perms = torch.empty((nb, self.codes.size), dtype=torch.int64, device=self.eng.dev)
            perms[:, torch.as_tensor(np.argsort(self.codes, kind="stable"), device=self.eng.dev)] = keys.argsort(dim=1)
            return perms
        return within_blocks(self.eng.rng, nb, self.codes)

    def replicates(self, perms, want_sq: bool):
        return self.eng.replicates(perms, want_sq)


def _permute(z, z2ss, rc, A, n_perm, seed, device, chunk_size, sim_dtype, want_geary, constant, engine=None,
             num_threads=1, batch_columns=None, keep_replicates=False, blocks=None, arrangements=None):
    """Shared-permutation replicates; returns per-column (count>=obs, sum, sumsq) for I and C
    (and, for C, count<=obs).

    ``engine``: ``"fused"`` (default on CPU): batches of up to 256 replicates (fewer for very
    wide inputs), all columns per kernel call, on ``num_threads`` numba threads; ``chunk_size`` is not
    used. ``"numpy"`` and ``"torch"`` (default on CUDA; also runs on CPU, at ``num_threads`` intra-op
    threads): columns go in chunks of ``Fc`` and replicates in batches of ``B`` with
    ``B * Fc ~ chunk_size``: one row gather of the permuted columns ``[n, B * Fc]``, one sparse
    product for their spatial lag, and a column sum of their product give the cross term
    ``z_p' W z_p`` of every replicate; Geary's C also needs ``sum_i (r_i + c_i) z_p[i]^2`` (row +
    column sums of W). ``batch_columns``: size the replicate batches as for this many columns (default
    ``F``); the batches fix which replicates are summed together, so a block of a wider feature set
    passes the set's width to reproduce its sums bit for bit. ``keep_replicates``: also keep every
    replicate's Moran's I, ``acc["sim_I"] [n_perm, F]``. ``blocks``: integer codes ``[n]``; replicates then
    permute places only within blocks. ``arrangements [R, n]``: ``acc["arr_I"] [R, F]``, their I by the replicates'
    arithmetic.

    The counts compare each replicate with the observed arrangement *through the same arithmetic* (the engine at
    the identity permutation, ``acc["obs_I"]``), not with the float64 ``obs_I``: a permutation p-value is exact
    only when the observed statistic and the replicates are one function of the arrangement. Features with tied
    values (sparse SAE features: many arrangements share one I) otherwise have their ties broken by float32
    rounding, which made ``p_greater`` too small for them. ``constant [F]``: columns with no variance (never
    counted: their observed value is inf, ``acc["obs_I"]`` NaN).
    """
    n, F = z.shape
    Fb = max(int(batch_columns or F), 1)
    dev = resolve_device(device)
    engine = engine or ("fused" if dev.type == "cpu" else "torch")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    order = locality_order(A)
    with np.errstate(divide="ignore", invalid="ignore"):
        zs = np.where(z2ss > 0, z / np.sqrt(z2ss), 0.0)[order]
    A_ord, rc_ord = A[order][:, order], rc[order]
    if engine == "fused":
        chunks = [(0, F)]
        B = max(1, min(n_perm, 256, 2**21 // Fb))
        eng = _FusedReplicates(zs, A_ord, rc_ord, sim_dtype, seed, num_threads)
    else:
        if chunk_size is None:
            chunk_size = 256 if dev.type == "cpu" else max(256, int(2**30 // (16 * n)))
        Fc = min(F, chunk_size)
        B = max(1, min(n_perm, chunk_size // min(Fb, chunk_size)))
        chunks = [(s, min(F, s + Fc)) for s in range(0, F, Fc)]
        args = (zs, A_ord, rc_ord, chunks, sim_dtype, seed)
        eng = _NumpyReplicates(*args) if engine == "numpy" else _TorchReplicates(*args, dev)
    if blocks is not None:
        eng = _WithinBlocks(eng, np.asarray(blocks)[order])
    s0 = float(A.sum())
    EI = -1.0 / (n - 1)
    acc = {key: np.zeros(F) for key in ("nI", "sI", "qI", "nC", "lC", "sC", "qC")}
    if keep_replicates:
        acc["sim_I"] = np.empty((n_perm, F))
    with torch_threads(num_threads if engine == "torch" and dev.type == "cpu" else None):
        kI, kC = _evaluate(eng, chunks, np.arange(n)[None], want_geary, n, s0, F)  # the observed, as a replicate
        acc["obs_I"] = np.where(constant, np.nan, kI[0])
        obs_I = np.where(constant, np.inf, kI[0])
        obs_C = np.where(constant, np.inf, kC[0]) if want_geary else None
        _accumulate(eng, acc, chunks, n, s0, EI, n_perm, B, want_geary, obs_I, obs_C)
        if arrangements is not None:
            rank = np.empty_like(order)
            rank[order] = np.arange(n)
            # ordered row j is row order[j], which takes row arrangements[r, order[j]], now at ordered row rank[...]
            perms = rank[np.asarray(arrangements, dtype=np.int64)[:, order]]
            acc["arr_I"] = np.concatenate([_evaluate(eng, chunks, perms[p0 : p0 + B], False, n, s0, F)[0]
                                           for p0 in range(0, perms.shape[0], B)] or [np.zeros((0, F))])
    return acc, EI


def _evaluate(eng, chunks, perms, want_geary, n, s0, F):
    """Moran's I ``[nb, F]`` (and Geary's C, or None) of the arrangements ``perms [nb, n]`` (engine row order), by
    the arithmetic of the replicates (:func:`_accumulate`)."""
    nb = perms.shape[0]
    I, C = np.empty((nb, F)), (np.empty((nb, F)) if want_geary else None)  # noqa: E741
    for (a, b), (cross, sq) in zip(chunks, eng.replicates(perms, want_geary)):
        I[:, a:b] = (n / s0) * cross
        if want_geary:
            C[:, a:b] = (n - 1) * (sq - 2.0 * cross) / (2.0 * s0)
    return I, C


def _accumulate(eng, acc, chunks, n, s0, EI, n_perm, B, want_geary, obs_I, obs_C) -> None:
    """Add every replicate batch's per-column counts, sums and sums of squares into ``acc``."""
    for p0 in range(0, n_perm, B):
        perms = eng.draw(min(B, n_perm - p0))
        for (a, b), (cross, sq) in zip(chunks, eng.replicates(perms, want_geary)):
            sim_I = (n / s0) * cross
            if "sim_I" in acc:
                acc["sim_I"][p0 : p0 + sim_I.shape[0], a:b] = sim_I
            d = sim_I - EI
            acc["nI"][a:b] += (sim_I >= obs_I[a:b]).sum(0)
            acc["sI"][a:b] += d.sum(0)
            acc["qI"][a:b] += (d * d).sum(0)
            if want_geary:
                sim_C = (n - 1) * (sq - 2.0 * cross) / (2.0 * s0)
                d = sim_C - 1.0
                acc["nC"][a:b] += (sim_C >= obs_C[a:b]).sum(0)
                acc["lC"][a:b] += (sim_C <= obs_C[a:b]).sum(0)
                acc["sC"][a:b] += d.sum(0)
                acc["qC"][a:b] += (d * d).sum(0)


def _sim_summary(obs, count, s, q, shift, n_perm, constant, count_one_sided):
    """esda's permutation summaries from ``count`` (#{sim >= obs}), plus the unfolded one-sided
    ``p_one_sided = (count_one_sided + 1) / (P + 1)``."""
    mean_d = s / n_perm
    se = np.sqrt(np.maximum(q / n_perm - mean_d**2, 0.0))
    e_sim = mean_d + shift
    larger = fold_counts(np.rint(count).astype(np.int64), n_perm)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_sim = (obs - e_sim) / se
    out = {
        "p_sim": (larger + 1.0) / (n_perm + 1.0),
        "E_sim": e_sim,
        "se_sim": se,
        "z_sim": z_sim,
        "p_z_sim": norm.sf(np.abs(z_sim)),
        "p_one_sided": (np.rint(count_one_sided) + 1.0) / (n_perm + 1.0),
    }
    return {k: np.where(constant, np.nan, v) for k, v in out.items()}


def global_autocorrelation(
    values,
    w: W,
    permutations: int = 999,
    seed: int = 0,
    two_tailed: bool = True,
    geary: bool = True,
    device=None,
    chunk_size: int | None = None,
    sim_dtype: torch.dtype = torch.float32,
    engine: str | None = None,
    num_threads: int | None = 1,
    batch_columns: int | None = None,
    keep_replicates: bool = False,
    blocks=None,
    arrangements: np.ndarray | None = None,
) -> dict:
    """Moran's I and (optionally) Geary's C for every column of ``values`` ``[n, F]``.

    ``w`` is used with its current transform (set ``w.transform`` beforehand; esda's
    ``transformation`` argument does the same). ``device``: torch device for the ``"torch"``
    engine (``None``: CUDA when available, else CPU; it also picks the default engine);
    ``sim_dtype`` of the replicates (float32 is ample for counting; the observed statistics are
    always float64). ``engine``: ``"fused"`` (CPU default: numba kernel, see
    :mod:`mechflow.spatial._perm_numba`), ``"numpy"`` (the reference) or ``"torch"`` (CUDA default;
    also runs on CPU). ``chunk_size``: columns per sparse product of the numpy/torch engines (memory
    ``~ n * chunk_size`` per replicate); the fused engine tiles columns itself. ``num_threads``:
    threads of the permutation test on CPU, for the fused engine (numba threads, capped at
    ``NUMBA_NUM_THREADS``; its results do not depend on the count) and the torch engine (intra-op
    threads; its products round differently for each count, hence the default 1); the numpy engine
    is single-threaded. None leaves numba's / torch's setting. ``batch_columns``: when ``values`` is a
    block of the columns of a wider set, that set's width: replicates are then drawn and summed in the
    batches the whole set would use, so every column's result equals the whole set's bit for bit (each
    column's statistics depend on that column alone; the fused engine is tested for it).
    ``keep_replicates``: also return every replicate's Moran's I, ``"replicates"`` ``[permutations, F]``
    float64 (NaN for constant columns; for the layer tests of :mod:`mechflow.spatial.layer_tests`), and
    ``"replicates_observed"`` ``[F]``: the observed I by the replicates' arithmetic (``sim_dtype``), the value every
    permutation count compares them with (see :func:`_permute`; within float32 rounding of ``I``).
    ``blocks``: labels ``[n]`` (e.g. admin-1 units); every replicate then permutes the places only within
    their block (restricted randomisation, :mod:`mechflow.spatial.blocks`: the null of features residualised
    on the blocks), from the same seeded stream.
    ``arrangements``: ``[R, n]`` permutations of the rows, each an arrangement of the values to test *as if
    observed* (row ``i`` takes row ``arrangements[r, i]``'s values; e.g. the inverse of a shuffle of the
    coordinates): ``"arrangements"`` then holds, per arrangement and column ``[R, F]``, Moran's ``I`` (by the
    replicates' arithmetic, as the counts need: within ``sim_dtype`` rounding of the float64 value), ``z_norm``,
    ``p_norm``, ``p_sim`` and ``p_greater`` against this call's replicates (the permutation ones NaN without
    permutations).

    Returns ``{"moran": {...}, "geary": {...} or None, "n_constant": int, "n": int}`` (+ ``"replicates"``,
    ``"replicates_observed"``, ``"arrangements"``); each inner dict maps statistic names (esda's attribute names) to float64 arrays ``[F]``.
    """
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    A = weights_csr(w)
    n = A.shape[0]
    if n < 4:
        raise ValueError(f"need at least 4 observations for the moments, got {n}")
    y = as_2d_values(values, n)
    z, z2ss, rc, constant, moran, gear = _observed(y, A, w, two_tailed)
    if arrangements is not None:
        arrangements = np.asarray(arrangements, dtype=np.int64)
        if arrangements.ndim != 2 or arrangements.shape[1] != n:
            raise ValueError(f"arrangements must be [R, {n}], got {arrangements.shape}")
        if not (np.sort(arrangements, axis=1) == np.arange(n)).all():
            raise ValueError("every row of arrangements must be a permutation of range(n)")
    acc = None
    if permutations or arrangements is not None:
        acc, EI = _permute(
            z, z2ss, rc, A, permutations, seed, device, chunk_size, sim_dtype, geary, constant, engine, num_threads,
            batch_columns, keep_replicates or arrangements is not None, None if blocks is None else block_codes(blocks),
            arrangements,
        )
    if permutations:
        sm = _sim_summary(moran["I"], acc["nI"], acc["sI"], acc["qI"], EI, permutations, constant, acc["nI"])
        moran.update(p_sim=sm["p_sim"], p_greater=sm["p_one_sided"], EI_sim=sm["E_sim"], seI_sim=sm["se_sim"],
                     VI_sim=sm["se_sim"] ** 2, z_sim=sm["z_sim"], p_z_sim=sm["p_z_sim"])
        if geary:
            sg = _sim_summary(gear["C"], acc["nC"], acc["sC"], acc["qC"], 1.0, permutations, constant, acc["lC"])
            gear.update(p_sim=sg["p_sim"], p_less=sg["p_one_sided"], EC_sim=sg["E_sim"], seC_sim=sg["se_sim"],
                        VC_sim=sg["se_sim"] ** 2, z_sim=sg["z_sim"], p_z_sim=sg["p_z_sim"])
    else:
        nan = np.full(y.shape[1], np.nan)
        for key in ("p_sim", "p_greater", "EI_sim", "seI_sim", "VI_sim", "z_sim", "p_z_sim"):
            moran[key] = nan.copy()
        for key in ("p_sim", "p_less", "EC_sim", "seC_sim", "VC_sim", "z_sim", "p_z_sim"):
            gear[key] = nan.copy()
    out = {"moran": moran, "geary": gear if geary else None, "n_constant": int(constant.sum()), "n": int(n)}
    if keep_replicates or arrangements is not None:
        sims = acc["sim_I"] if acc is not None else np.zeros((0, y.shape[1]))
        sims[:, constant] = np.nan
        if keep_replicates:
            out["replicates"] = sims
            out["replicates_observed"] = acc["obs_I"] if acc is not None else np.where(constant, np.nan, moran["I"])
        if arrangements is not None:
            out["arrangements"] = _arrangements(acc["arr_I"], constant, moran, sims, two_tailed)
    return out


def _arrangements(I: np.ndarray, constant, moran, sims, two_tailed) -> dict[str, np.ndarray]:
    """The per-unit test of each arrangement (its I ``[R, F]`` by the replicates' arithmetic) against the replicates
    ``sims [P, F]`` (see :func:`global_autocorrelation`)."""
    I = np.where(constant, np.nan, I)  # noqa: E741
    with np.errstate(divide="ignore", invalid="ignore"):
        z_norm = (I - moran["EI"]) / moran["seI_norm"]
    P = sims.shape[0]
    out = {"I": I, "z_norm": z_norm, "p_norm": (2.0 if two_tailed else 1.0) * norm.sf(np.abs(z_norm))}
    if P:
        count = count_at_least(sims, I)  # #{I_sim >= I_arrangement}
        out["p_greater"] = (count + 1.0) / (P + 1.0)
        with np.errstate(invalid="ignore"):
            out["p_sim"] = (fold_counts(count, P) + 1.0) / (P + 1.0)
    else:
        out["p_greater"] = out["p_sim"] = np.full(I.shape, np.nan)
    return out


def global_moran(values, w: W, permutations: int = 999, seed: int = 0, two_tailed: bool = True,
                 device=None, chunk_size: int | None = None, engine: str | None = None,
                 num_threads: int | None = 1) -> dict:
    """Global Moran's I of every column of ``values`` ``[n, F]`` (see module docstring).

    Returns a dict of float64 arrays ``[F]``: I, EI, VI_norm, seI_norm, z_norm, p_norm, VI_rand,
    seI_rand, z_rand, p_rand, p_sim, p_greater, EI_sim, seI_sim, VI_sim, z_sim, p_z_sim; plus ints
    ``n_constant`` and ``n``.
    """
    r = global_autocorrelation(values, w, permutations, seed, two_tailed, geary=False,
                               device=device, chunk_size=chunk_size, engine=engine, num_threads=num_threads)
    return {**r["moran"], "n_constant": r["n_constant"], "n": r["n"]}


def global_geary(values, w: W, permutations: int = 999, seed: int = 0, device=None,
                 chunk_size: int | None = None, engine: str | None = None, num_threads: int | None = 1) -> dict:
    """Global Geary's C of every column of ``values`` ``[n, F]`` (see module docstring).

    Returns a dict of float64 arrays ``[F]``: C, EC, VC_norm, seC_norm, z_norm, p_norm, VC_rand,
    seC_rand, z_rand, p_rand, p_sim, p_less, EC_sim, seC_sim, VC_sim, z_sim, p_z_sim; plus ints
    ``n_constant`` and ``n``.
    """
    r = global_autocorrelation(values, w, permutations, seed, geary=True, device=device,
                               chunk_size=chunk_size, engine=engine, num_threads=num_threads)
    return {**r["geary"], "n_constant": r["n_constant"], "n": r["n"]}
