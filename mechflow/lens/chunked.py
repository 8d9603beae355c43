"""Softmax statistics over a large vocabulary, computed in vocabulary chunks.

For normed residuals ``x`` ``[..., d]`` (every layer and prompt at once), an unembedding ``W``
``[V, d]`` (bias ``b`` ``[V]``) and per-row target token sets, :func:`read_vocab` makes one pass
over chunks of ``C`` vocabulary rows and keeps running statistics of ``z = x W^T + b``:

- the log-sum-exp ``lse = m + log sum_v exp(z_v - m)`` with a running max ``m`` (the online softmax
  of Milakov & Gimelshein 2018: sums are rescaled by ``exp(m_old - m_new)`` when the max grows);
- the entropy ``H = lse - E_p[z]`` (nats), from the running ``sum_v exp(z_v - m) z_v``;
- the top-1 token and its log-probability;
- each target set's rank: the number of tokens whose logit is strictly larger than the set's best
  token's (0 = top-1), counted chunk by chunk.

Target logits are computed directly from the gathered rows ``W[targets]``, so their log-probability
is ``log sum_{k in set} exp(z_k) - lse``. Only one chunk's logits ``[..., C]`` (and a boolean
``[..., T*K, C]`` for the ranks) exist at a time; ``C`` follows from a byte budget, so memory is
bounded whatever the vocabulary (49,152 for SmolLM2). Accumulators are float64.

:func:`logsumexp` is the same log-sum-exp as a differentiable function (its backward pass streams
the chunks again: ``d lse / d x = E_p[W]``), used to train the tuned lens on the full vocabulary.
:func:`softmax_moments` gives ``E_p[W]``, ``E_p[b]`` and ``E_p[z]`` of fixed distributions (the
final layer's, the tuned lens's target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mechflow.lens.unembed import LensError

__all__ = ["DEFAULT_CHUNK_BYTES", "VocabReadout", "chunk_rows", "read_vocab", "logsumexp", "softmax_moments"]

#: memory of one vocabulary chunk's working set (logits, exponentials, rank comparisons)
DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class VocabReadout:
    """Statistics of ``softmax(z)`` per row ``[...]`` (the leading dims of ``x``), float32 unless noted.

    logsumexp ``[...]``; entropy ``[...]`` (nats); top1 ``[...]`` int64 token id; top1_logprob ``[...]``;
    target_logprob ``[..., T]`` (log of the summed probability of each target's token set; ``-inf``
    for an empty set); target_rank ``[..., T]`` int64 (tokens with a strictly larger logit than the
    set's best token, 0 = top-1; -1 for an empty set).
    """

    logsumexp: torch.Tensor
    entropy: torch.Tensor
    top1: torch.Tensor
    top1_logprob: torch.Tensor
    target_logprob: torch.Tensor
    target_rank: torch.Tensor


def chunk_rows(rows: int, vocab: int, n_targets: int = 0, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Vocabulary rows per chunk so that ``rows`` x chunk fits the byte budget (at least 256, at most ``vocab``).

    Per logit: 4 bytes each for the logits, their exponentials and a product, plus 2 booleans per
    target token (the rank comparison and its self-mask).
    """
    per_element = 12 + 2 * max(int(n_targets), 0)
    return int(min(vocab, max(256, budget_bytes // max(1, rows * per_element))))


def _chunk_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None,
                  c0: int, c1: int) -> torch.Tensor:
    z = x @ weight[c0:c1].T
    if bias is not None:
        z = z + bias[c0:c1]
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return z


def _target_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None,
                   targets: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., T*K]`` of the target tokens (``-inf`` at padding ids < 0); ``targets`` ``[..t, T, K]``
    broadcast against ``x``'s leading dims."""
    flat = targets.reshape(*targets.shape[:-2], -1)  # [..t, TK]
    rows = weight[flat.clamp(min=0)]  # [..t, TK, d]
    z = torch.matmul(rows, x.unsqueeze(-1)).squeeze(-1)  # broadcast [..., TK]
    if bias is not None:
        z = z + bias[flat.clamp(min=0)]
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return torch.where(flat >= 0, z, torch.full_like(z, float("-inf")))


@torch.no_grad()
def read_vocab(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> VocabReadout:
    """Softmax statistics of ``z = x W^T (+ b)`` over the whole vocabulary, one chunk at a time.

    x: ``[..., d]`` normed residuals (e.g. ``[layer, prompt, d]``: every layer in one call);
    weight: ``[V, d]``; targets: int64 ``[..t, T, K]`` token-id sets (``-1`` pads a set to K tokens),
    ``..t`` broadcastable to ``x``'s leading dims (``[prompt, T, K]`` serves every layer); None: no
    targets. Returns a :class:`VocabReadout`.
    """
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise LensError(f"hidden states [..., {x.shape[-1] if x.ndim else '?'}] do not fit the unembedding [V, {weight.shape[1]}]")
    lead, V = x.shape[:-1], weight.shape[0]
    if targets is None:
        targets = torch.full((1, 0, 1), -1, dtype=torch.int64, device=x.device)
    if targets.ndim < 2:
        raise LensError(f"targets must be [..., T, K] token ids, got shape {tuple(targets.shape)}")
    targets = targets.to(device=x.device, dtype=torch.int64)
    if targets.numel() and int(targets.max()) >= V:
        raise LensError(f"target token id {int(targets.max())} is outside the vocabulary ({V})")
    T, K = targets.shape[-2:]
    t_logit = _target_logits(x, weight, bias, softcap, targets)  # [..., TK]
    t_ids = targets.reshape(*targets.shape[:-2], T * K)
    rows = math.prod(lead)
    C = chunk_rows(rows, V, T * K, chunk_bytes)

    m = torch.full(lead, float("-inf"), dtype=x.dtype, device=x.device)
    s = torch.zeros(lead, dtype=torch.float64, device=x.device)
    t = torch.zeros(lead, dtype=torch.float64, device=x.device)
    top = torch.zeros(lead, dtype=torch.int64, device=x.device)
    above = torch.zeros((*lead, T * K), dtype=torch.int64, device=x.device)
    for c0 in range(0, V, C):
        c1 = min(V, c0 + C)
        z = _chunk_logits(x, weight, bias, softcap, c0, c1)  # [..., C]
        cmax, cidx = z.max(-1)
        top = torch.where(cmax > m, cidx + c0, top)
        m_new = torch.maximum(m, cmax)
        scale = torch.exp((m - m_new).double())
        e = torch.exp(z - m_new.unsqueeze(-1))
        s = s * scale + e.sum(-1, dtype=torch.float64)
        t = t * scale + (e * z).sum(-1, dtype=torch.float64)
        m = m_new
        if T * K:
            ids = torch.arange(c0, c1, device=x.device)
            larger = z.unsqueeze(-2) > t_logit.unsqueeze(-1)  # [..., TK, C]
            larger &= t_ids.unsqueeze(-1) != ids  # never count a target token against itself
            above += larger.sum(-1)
        del z, e
    lse = m.double() + torch.log(s)
    entropy = lse - t / s
    top_lp = _gather_logit(x, weight, bias, softcap, top).double() - lse
    t_logit = t_logit.reshape(*t_logit.shape[:-1], T, K)
    valid = t_ids.reshape(*t_ids.shape[:-1], T, K) >= 0
    set_logit = torch.logsumexp(t_logit.double(), -1)  # [..., T]; -inf for an empty set
    target_lp = set_logit - lse.unsqueeze(-1)
    big = torch.iinfo(torch.int64).max
    rank = torch.where(valid, above.reshape(*above.shape[:-1], T, K), big).amin(-1)
    rank = torch.where(rank == big, torch.full_like(rank, -1), rank)
    return VocabReadout(logsumexp=lse.float(), entropy=entropy.float(), top1=top, top1_logprob=top_lp.float(),
                        target_logprob=target_lp.float(), target_rank=rank)


def _gather_logit(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None,
                  ids: torch.Tensor) -> torch.Tensor:
    """Logit of one token per row: ``x`` ``[..., d]``, ``ids`` ``[...]`` -> ``[...]``."""
    z = (weight[ids] * x).sum(-1)
    if bias is not None:
        z = z + bias[ids]
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return z


def _lse_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk_bytes: int) -> torch.Tensor:
    """Log-sum-exp ``[N]`` of ``x W^T + b`` for ``x`` ``[N, d]`` (float64 accumulation, no autograd)."""
    N, V = x.shape[0], weight.shape[0]
    C = chunk_rows(N, V, 0, chunk_bytes)
    m = torch.full((N,), float("-inf"), dtype=x.dtype, device=x.device)
    s = torch.zeros(N, dtype=torch.float64, device=x.device)
    for c0 in range(0, V, C):
        z = _chunk_logits(x, weight, bias, None, c0, min(V, c0 + C))
        m_new = torch.maximum(m, z.amax(-1))
        s = s * torch.exp((m - m_new).double()) + torch.exp(z - m_new.unsqueeze(-1)).sum(-1, dtype=torch.float64)
        m = m_new
    return m.double() + torch.log(s)


class _ChunkedLogSumExp(torch.autograd.Function):
    """``lse(x W^T + b)`` with a streaming backward: ``d lse / d x = softmax(z) @ W`` chunk by chunk."""

    @staticmethod
    def forward(ctx, x, weight, bias, chunk_bytes):  # noqa: D102 (autograd protocol)
        lse = _lse_rows(x.detach(), weight, bias, chunk_bytes)
        ctx.save_for_backward(x, lse)
        ctx.weight, ctx.bias, ctx.chunk_bytes = weight, bias, chunk_bytes
        return lse.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, lse = ctx.saved_tensors
        weight, bias = ctx.weight, ctx.bias
        N, V = x.shape[0], weight.shape[0]
        C = chunk_rows(N, V, 0, ctx.chunk_bytes)
        out = torch.zeros_like(x)
        with torch.no_grad():
            for c0 in range(0, V, C):
                c1 = min(V, c0 + C)
                p = torch.exp(_chunk_logits(x, weight, bias, None, c0, c1) - lse.to(x.dtype).unsqueeze(-1))
                out += p @ weight[c0:c1]
        return out * grad.unsqueeze(-1), None, None, None


def logsumexp(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Differentiable ``log sum_v exp(x W^T + b)_v`` ``[..., d]`` -> ``[...]``, never materialising ``[..., V]``.

    Gradients flow to ``x`` only (``W`` and ``b`` are treated as constants).
    """
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    return _ChunkedLogSumExp.apply(flat, weight.detach(), None if bias is None else bias.detach(), chunk_bytes).reshape(lead)


@torch.no_grad()
def softmax_moments(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moments of ``p = softmax(x W^T + b)`` for ``x`` ``[N, d]``: ``(lse [N], E_p[W] [N, d], E_p[b] [N], E_p[z] [N])``.

    Two streaming passes (the log-sum-exp, then the expectations). With them the KL divergence from
    ``p`` to any ``q = softmax(W x' + b)`` is ``E_p[z] - lse - (E_p[W] . x' + E_p[b]) + lse(x')``.
    """
    N, V = x.shape[0], weight.shape[0]
    lse = _lse_rows(x, weight, bias, chunk_bytes)
    C = chunk_rows(N, V, 0, chunk_bytes)
    ew = torch.zeros_like(x, dtype=torch.float64)
    eb = torch.zeros(N, dtype=torch.float64, device=x.device)
    ez = torch.zeros(N, dtype=torch.float64, device=x.device)
    for c0 in range(0, V, C):
        c1 = min(V, c0 + C)
        z = _chunk_logits(x, weight, bias, None, c0, c1)
        p = torch.exp(z - lse.to(z.dtype).unsqueeze(-1))
        ew += (p @ weight[c0:c1]).double()
        ez += (p * z).sum(-1, dtype=torch.float64)
        if bias is not None:
            eb += (p @ bias[c0:c1]).double()
    return lse, ew.to(x.dtype), eb.to(x.dtype), ez.to(x.dtype)
