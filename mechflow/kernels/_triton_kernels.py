"""Triton kernels and their launchers (imported lazily: importing this module imports ``triton``).

Only Triton APIs present since 3.0 are used (``tl.dot(..., input_precision=)``, reshape, min/max with
``keep_dims``, bitcasts); the sorting network is our own (``tl.sort`` is very slow under the interpreter).

Top-k keys: each pre-activation (fp32) and its feature index are packed into one int64 whose order is
(value, then lower index first), so a sort carries the index with the value and ties break
deterministically towards the lowest feature index.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mechflow.kernels._dispatch import interpreter_active

_SENTINEL = -9223372036854775807  # below every packed key of a non-NaN value


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    """tl.dot precision for fp32 inputs: follows ``torch.backends.cuda.matmul.allow_tf32`` on CUDA."""
    if dtype == torch.float32 and not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


# ------------------------------------------------------------------------------------- block sizes
# What each launcher chooses from the problem's sizes (and nothing else): mechflow.kernels.aot compiles
# every kernel at every choice these functions can make.
def topk_blocks(k: int) -> dict[str, int]:
    """Stage 1 of the top-k encode for ``k``: KP (padded k), BM x BN tile, BK, LOGBN, num_warps, num_stages."""
    KP = max(16, _next_pow2(k))
    BN = max(64, KP)
    BM = 32 if BN >= 256 else 64
    return dict(KP=KP, BM=BM, BN=BN, LOGBN=BN.bit_length() - 1, BK=32,
                num_warps=8 if BM * BN >= 8192 else 4, num_stages=2)


def topk_select_blocks(k: int) -> dict[str, int]:
    """Stage 2 of the top-k encode for ``k``: KP, LOGKP, BM rows per program, num_warps."""
    KP = max(16, _next_pow2(k))
    return dict(KP=KP, LOGKP=KP.bit_length() - 1, BM=16, num_warps=4)


def gather_sum_blocks(D: int) -> dict[str, int]:
    """Gather-sum over ``D`` output columns: BM rows x BD columns per program."""
    return dict(BM=16, BD=min(128, max(16, _next_pow2(D))), num_warps=4)


def gather_dot_blocks(K: int, D: int) -> dict[str, int]:
    """Gather-dot of ``K`` indices per row over ``D`` columns: BJ indices x BD columns per step."""
    return dict(BJ=min(64, max(16, _next_pow2(K))), BD=min(128, max(16, _next_pow2(D))), num_warps=4)


def segment_sum_blocks(D: int) -> dict[str, int]:
    """Segment sum over ``D`` columns: BO entries x BD columns per step."""
    return dict(BO=16, BD=min(256, max(16, _next_pow2(D))), num_warps=4)


def snmf_blocks(K: int) -> dict[str, int]:
    """Semi-NMF G update with ``K`` factors: BM x BN output tile, BK reduction step."""
    return dict(BM=64, BN=min(64, max(16, _next_pow2(K))), BK=min(32, max(16, _next_pow2(K))), num_warps=4)


def _n_programs_target(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


# ----------------------------------------------------------------------------------------------- keys
@triton.jit
def _pack_keys(pre, feat):
    """pre fp32 [BM, BN], feat int [BN] -> int64 keys ordered by (value, -index)."""
    bits = pre.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    low = 2147483647 - feat.to(tl.int64)  # int32-sized literals only (2**32 - 1 would be uint32)
    return (ordered.to(tl.int64) << 32) | low[None, :]


@triton.jit
def _unpack_keys(keys):
    """int64 keys -> (value fp32, index int64)."""
    hi = (keys >> 32).to(tl.int32)
    bits = tl.where(hi >= 0, hi, hi ^ 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), 2147483647 - (keys & 2147483647)


# ------------------------------------------------------------------------------------ bitonic network
# Built from reshapes and size-2 min/max reductions only (fast under the interpreter, unlike tl.sort).
@triton.jit
def _cas(x, cols, i: tl.constexpr, s: tl.constexpr, DESC: tl.constexpr, R: tl.constexpr, N: tl.constexpr):
    """Compare-and-swap at distance 2**i along rows of x [R, N]; blocks of 2**s alternate direction."""
    inner: tl.constexpr = 1 << i
    outer: tl.constexpr = (R * N) // (2 * inner)
    y = tl.reshape(x, (outer, 2, inner))
    c = tl.reshape(cols, (outer, 2, inner))
    lo = tl.min(y, axis=1, keep_dims=True)
    hi = tl.max(y, axis=1, keep_dims=True)
    is_right = tl.arange(0, 2)[None, :, None]
    flip = ((c >> s) & 1) ^ DESC
    take_hi = (is_right ^ flip) != 0
    return tl.reshape(tl.where(take_hi, hi, lo), (R, N))


@triton.jit
def _bitonic_sort(x, DESC: tl.constexpr, R: tl.constexpr, N: tl.constexpr, LOGN: tl.constexpr):
    """Sort each row of x [R, N] (N = 2**LOGN), ascending or descending."""
    cols = tl.zeros((R, N), dtype=tl.int32) + tl.arange(0, N)[None, :]
    for s in tl.static_range(1, LOGN + 1):
        for t in tl.static_range(0, s):
            x = _cas(x, cols, s - 1 - t, s, DESC, R, N)
    return x


@triton.jit
def _bitonic_merge(x, DESC: tl.constexpr, R: tl.constexpr, N: tl.constexpr, LOGN: tl.constexpr):
    """Sort each row of x [R, N] that is already bitonic (log2(N) compare-and-swap rounds)."""
    cols = tl.zeros((R, N), dtype=tl.int32) + tl.arange(0, N)[None, :]
    for t in tl.static_range(0, LOGN):
        x = _cas(x, cols, LOGN - 1 - t, LOGN, DESC, R, N)
    return x


# ------------------------------------------------------------------------------------- top-k encode
@triton.jit
def _topk_candidates_kernel(
    x_ptr, w_ptr, b_ptr, mask_ptr, cand_ptr,
    B, D, F, tiles_per_chunk,
    sxb, sxd, swd, swf, sbf,
    SENTINEL: tl.constexpr, KP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, LOGBN: tl.constexpr,
    BK: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
):
    """Stage 1: per (row block, feature chunk), a running top-KP of x @ W + b over the chunk's tiles.

    Writes keys [B, n_chunks * KP] (each chunk's KP best, sorted descending); the dense
    pre-activation tile lives only in registers.
    """
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    rows = pid_m * BM + tl.arange(0, BM)
    row_ok = rows < B
    rows = rows.to(tl.int64)
    cols = tl.arange(0, BN)
    ks = tl.arange(0, BK)
    best = tl.full([BM, BN], SENTINEL, tl.int64)
    t_start = pid_c * tiles_per_chunk
    t_end = tl.minimum(t_start + tiles_per_chunk, tl.cdiv(F, BN))
    for t in range(t_start, t_end):
        feat = t * BN + cols
        feat_ok = feat < F
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for d0 in range(0, D, BK):
            dd = d0 + ks
            d_ok = dd < D
            xt = tl.load(x_ptr + rows[:, None] * sxb + dd[None, :] * sxd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            w_off = dd[:, None].to(tl.int64) * swd + feat[None, :].to(tl.int64) * swf
            wt = tl.load(w_ptr + w_off, mask=d_ok[:, None] & feat_ok[None, :], other=0.0)
            acc = tl.dot(xt, wt, acc, input_precision=PRECISION)
        bias = tl.load(b_ptr + feat * sbf, mask=feat_ok, other=0.0).to(tl.float32)
        pre = acc + bias[None, :]
        valid = feat_ok
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + feat, mask=feat_ok, other=0) != 0)
        keys = tl.where(valid[None, :], _pack_keys(pre, feat), SENTINEL)
        # merge only when some row of the tile beats that row's current worst kept key
        worst = tl.min(best, axis=1)
        n_better = tl.sum(tl.sum((keys > worst[:, None]).to(tl.int32), axis=1), axis=0)
        if n_better > 0:
            # bitonic half-cleaner: max(descending, ascending) holds the BN best of both; then re-sort
            asc = _bitonic_sort(keys, 0, BM, BN, LOGBN)
            best = _bitonic_merge(tl.maximum(best, asc), 1, BM, BN, LOGBN)
    out = cand_ptr + rows[:, None] * (n_chunks * KP) + pid_c * KP + cols[None, :]
    tl.store(out, best, mask=row_ok[:, None] & (cols[None, :] < KP))


@triton.jit
def _topk_select_kernel(
    cand_ptr, val_ptr, idx_ptr,
    B, n_chunks, k,
    svb, svk, sib, sik,
    SENTINEL: tl.constexpr, KP: tl.constexpr, LOGKP: tl.constexpr, BM: tl.constexpr,
):
    """Stage 2: merge the n_chunks sorted candidate lists of each row, write the top k (ReLU'd values)."""
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    row_ok = rows < B
    cols = tl.arange(0, KP)
    rev = KP - 1 - cols  # stored descending: read reversed -> ascending
    best = tl.full([BM, KP], SENTINEL, tl.int64)
    for c in range(0, n_chunks):
        keys = tl.load(cand_ptr + rows[:, None] * (n_chunks * KP) + c * KP + rev[None, :], mask=row_ok[:, None], other=SENTINEL)
        best = _bitonic_merge(tl.maximum(best, keys), 1, BM, KP, LOGKP)
    vals, idx = _unpack_keys(best)
    vals = tl.maximum(vals, 0.0)
    ok = row_ok[:, None] & (cols[None, :] < k)
    tl.store(val_ptr + rows[:, None] * svb + cols[None, :] * svk, vals.to(val_ptr.dtype.element_ty), mask=ok)
    tl.store(idx_ptr + rows[:, None] * sib + cols[None, :] * sik, idx, mask=ok)


def topk_encode_fwd(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
    mask: torch.Tensor | None = None, n_chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused top-k encode. x [B, d], W_enc [d, F], b_enc [F], mask [F] bool or None -> values, indices [B, k]."""
    B, D = x.shape
    F = W_enc.shape[1]
    blocks = topk_blocks(k)
    KP, BM, BN = blocks["KP"], blocks["BM"], blocks["BN"]
    n_tiles = triton.cdiv(F, BN)
    m_blocks = triton.cdiv(B, BM)
    if n_chunks is None:
        n_chunks = triton.cdiv(_n_programs_target(x.device), m_blocks)
    n_chunks = max(1, min(int(n_chunks), n_tiles))
    tiles_per_chunk = triton.cdiv(n_tiles, n_chunks)
    n_chunks = triton.cdiv(n_tiles, tiles_per_chunk)
    cand = torch.empty((B, n_chunks * KP), dtype=torch.int64, device=x.device)
    mask_arg = mask.to(torch.int8).contiguous() if mask is not None else cand
    _topk_candidates_kernel[(m_blocks, n_chunks)](
        x, W_enc, b_enc, mask_arg, cand,
        B, D, F, tiles_per_chunk,
        x.stride(0), x.stride(1), W_enc.stride(0), W_enc.stride(1), b_enc.stride(0),
        SENTINEL=_SENTINEL, HAS_MASK=mask is not None, PRECISION=_precision(x.dtype, x.device), **blocks,
    )
    values = torch.empty((B, k), dtype=x.dtype, device=x.device)
    indices = torch.empty((B, k), dtype=torch.int64, device=x.device)
    select = topk_select_blocks(k)
    _topk_select_kernel[(triton.cdiv(B, select["BM"]),)](
        cand, values, indices, B, n_chunks, k,
        values.stride(0), values.stride(1), indices.stride(0), indices.stride(1),
        SENTINEL=_SENTINEL, **select,
    )
    return values, indices


# ------------------------------------------------------------------------------ gather-sum (decode)
@triton.jit
def _gather_sum_kernel(
    coef_ptr, idx_ptr, w_ptr, bias_ptr, out_ptr,
    B, K, D,
    scb, sck, sib, sik, swf, swd, sob, sod,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
):
    """out[b, :] = sum_j coef[b, j] * W[idx[b, j], :] (+ bias): O(B * K * D)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    dd = tl.program_id(1) * BD + tl.arange(0, BD)
    row_ok = rows < B
    d_ok = dd < D
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    for j in range(0, K):
        c = tl.load(coef_ptr + rows * scb + j * sck, mask=row_ok, other=0.0).to(tl.float32)
        i = tl.load(idx_ptr + rows * sib + j * sik, mask=row_ok, other=0)
        w = tl.load(w_ptr + i[:, None] * swf + dd[None, :] * swd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        acc += c[:, None] * w.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + dd, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * sob + dd[None, :] * sod, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def gather_sum(coef: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """[B, D] = sum_j coef[:, j, None] * W[idx[:, j]] (+ bias [D]); W [n_rows, D]."""
    B, K = coef.shape
    D = W.shape[1]
    out = torch.empty((B, D), dtype=out_dtype, device=coef.device)
    blocks = gather_sum_blocks(D)
    bias_arg = bias.contiguous() if bias is not None else out
    _gather_sum_kernel[(triton.cdiv(B, blocks["BM"]), triton.cdiv(D, blocks["BD"]))](
        coef, idx, W, bias_arg, out, B, K, D,
        coef.stride(0), coef.stride(1), idx.stride(0), idx.stride(1), W.stride(0), W.stride(1),
        out.stride(0), out.stride(1), HAS_BIAS=bias is not None, **blocks,
    )
    return out


# ---------------------------------------------------------------------------- gather-dot (grad codes)
@triton.jit
def _gather_dot_kernel(
    g_ptr, idx_ptr, w_ptr, out_ptr,
    K, D,
    sgb, sgd, sib, sik, swf, swd, sob, sok,
    BJ: tl.constexpr, BD: tl.constexpr,
):
    """out[b, j] = g[b, :] . W[idx[b, j], :]."""
    b = tl.program_id(0)
    jj = tl.program_id(1) * BJ + tl.arange(0, BJ)
    j_ok = jj < K
    i = tl.load(idx_ptr + b * sib + jj * sik, mask=j_ok, other=0)
    acc = tl.zeros([BJ], dtype=tl.float32)
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        d_ok = dd < D
        g = tl.load(g_ptr + b * sgb + dd * sgd, mask=d_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + i[:, None] * swf + dd[None, :] * swd, mask=j_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * g[None, :], axis=1)
    tl.store(out_ptr + b * sob + jj * sok, acc.to(out_ptr.dtype.element_ty), mask=j_ok)


def gather_dot(g: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """[B, K] = (g[:, None, :] * W[idx]).sum(-1); g [B, D], W [n_rows, D]."""
    B, K = idx.shape
    D = W.shape[1]
    out = torch.empty((B, K), dtype=out_dtype, device=g.device)
    blocks = gather_dot_blocks(K, D)
    _gather_dot_kernel[(B, triton.cdiv(K, blocks["BJ"]))](
        g, idx, W, out, K, D,
        g.stride(0), g.stride(1), idx.stride(0), idx.stride(1), W.stride(0), W.stride(1),
        out.stride(0), out.stride(1), **blocks,
    )
    return out


# ----------------------------------------------------------------- segment sum (grads of weight rows)
@triton.jit
def _segment_sum_kernel(
    order_ptr, offsets_ptr, coef_ptr, src_ptr, out_ptr, bias_out_ptr,
    K, D,
    scb, sck, ssb, ssd, sof, sod,
    HAS_BIAS: tl.constexpr, BO: tl.constexpr, BD: tl.constexpr,
):
    """out[f, :] = sum over (b, j) with idx[b, j] == f of coef[b, j] * src[b, :] (CSR over f, no atomics)."""
    f = tl.program_id(0)
    pid_d = tl.program_id(1)
    dd = pid_d * BD + tl.arange(0, BD)
    d_ok = dd < D
    start = tl.load(offsets_ptr + f)
    end = tl.load(offsets_ptr + f + 1)
    acc = tl.zeros([BD], dtype=tl.float32)
    cacc = tl.zeros([BO], dtype=tl.float32)
    for s in range(start, end, BO):
        o = s + tl.arange(0, BO)
        o_ok = o < end
        flat = tl.load(order_ptr + o, mask=o_ok, other=0)
        b = flat // K
        j = flat - b * K
        c = tl.load(coef_ptr + b * scb + j * sck, mask=o_ok, other=0.0).to(tl.float32)
        x = tl.load(src_ptr + b[:, None] * ssb + dd[None, :] * ssd, mask=o_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(c[:, None] * x.to(tl.float32), axis=0)
        cacc += c
    tl.store(out_ptr + f.to(tl.int64) * sof + dd * sod, acc.to(out_ptr.dtype.element_ty), mask=d_ok)
    if HAS_BIAS:
        if pid_d == 0:
            tl.store(bias_out_ptr + f, tl.sum(cacc, axis=0).to(bias_out_ptr.dtype.element_ty))


def csr_of(idx: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, offsets): flat positions of ``idx`` [B, K] sorted by value (stable), and CSR offsets [n_rows + 1]."""
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_rows)
    offsets = torch.zeros(n_rows + 1, dtype=torch.int64, device=idx.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return order, offsets


def segment_sum(
    csr: tuple[torch.Tensor, torch.Tensor], coef: torch.Tensor, src: torch.Tensor, n_rows: int,
    out_dtype: torch.dtype, with_bias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out [n_rows, D] with out[f] = sum_{idx[b,j]==f} coef[b,j] * src[b]; optionally bias [n_rows] = sum coef."""
    order, offsets = csr
    K = coef.shape[1]
    D = src.shape[1]
    out = torch.empty((n_rows, D), dtype=out_dtype, device=src.device)
    bias = torch.empty((n_rows,), dtype=out_dtype, device=src.device) if with_bias else None
    blocks = segment_sum_blocks(D)
    _segment_sum_kernel[(n_rows, triton.cdiv(D, blocks["BD"]))](
        order, offsets, coef, src, out, bias if bias is not None else out, K, D,
        coef.stride(0), coef.stride(1), src.stride(0), src.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=with_bias, **blocks,
    )
    return out, bias


# ----------------------------------------------------------------------------------- semi-NMF update
@triton.jit
def _snmf_update_kernel(
    p_ptr, q_ptr, g_ptr, out_ptr,
    N, K, eps,
    spn, spk, sqa, sqb, sgn, sgk, son, sok,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    """out = G * sqrt((P+ + G Q-) / (P- + G Q+ + eps)); G Q+ and G Q- accumulate together in registers."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    row_ok = rows < N
    col_ok = cols < K
    acc_pos = tl.zeros([BM, BN], dtype=tl.float32)
    acc_neg = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        k_ok = kk < K
        g = tl.load(g_ptr + rows[:, None] * sgn + kk[None, :] * sgk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        q = tl.load(q_ptr + kk[:, None] * sqa + cols[None, :] * sqb, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc_pos = tl.dot(g, tl.maximum(q, 0.0).to(g.dtype), acc_pos, input_precision=PRECISION)
        acc_neg = tl.dot(g, tl.maximum(-q, 0.0).to(g.dtype), acc_neg, input_precision=PRECISION)
    ok = row_ok[:, None] & col_ok[None, :]
    p = tl.load(p_ptr + rows[:, None] * spn + cols[None, :] * spk, mask=ok, other=0.0).to(tl.float32)
    g0 = tl.load(g_ptr + rows[:, None] * sgn + cols[None, :] * sgk, mask=ok, other=0.0).to(tl.float32)
    num = tl.maximum(p, 0.0) + acc_neg
    den = tl.maximum(-p, 0.0) + acc_pos + eps
    out = g0 * tl.sqrt(num / den)
    tl.store(out_ptr + rows[:, None] * son + cols[None, :] * sok, out.to(out_ptr.dtype.element_ty), mask=ok)


def snmf_update(P: torch.Tensor, Q: torch.Tensor, G: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused semi-NMF G update. P [n, K], Q [K, K], G [n, K] -> new G [n, K]."""
    N, K = G.shape
    out = torch.empty_like(G)
    blocks = snmf_blocks(K)
    _snmf_update_kernel[(triton.cdiv(N, blocks["BM"]), triton.cdiv(K, blocks["BN"]))](
        P, Q, G, out, N, K, float(eps),
        P.stride(0), P.stride(1), Q.stride(0), Q.stride(1), G.stride(0), G.stride(1), out.stride(0), out.stride(1),
        PRECISION=_precision(G.dtype, G.device), **blocks,
    )
    return out


__all__ = ["topk_encode_fwd", "gather_sum", "gather_dot", "csr_of", "segment_sum", "snmf_update", "interpreter_active"]
