"""The tuned lens (Belrose et al. 2023): one affine translator per layer before the model's own read-out.

Layer ``l``'s residual ``h`` ``[..., d]`` is decoded as ``W_U norm(h + h A_l^T + b_l)``; the
translators (``weight`` ``[layer, d, d]``, ``bias`` ``[layer, d]``) are fitted to minimise
``KL(p_final || q_l)``, the divergence from the model's own next-token distribution (the last
layer read through the plain unembedding) to the lens's, averaged over token positions. Every
layer is translated in one batched matmul and trained jointly (their losses are independent).

The KL over the whole vocabulary never materialises ``[tokens, V]``: with the final distribution's
moments ``E_p[W]``, ``E_p[b]``, ``E_p[z]`` (:func:`mechflow.lens.chunked.softmax_moments`),
``KL = E_p[z] - lse_p - (E_p[W] . x + E_p[b]) + lse(x)`` for ``x = norm(translated h)``, and
``lse(x)`` is the chunked, differentiable log-sum-exp.

Initialisation: ``identity`` (``A = 0, b = 0``: the logit lens, as Belrose et al.), or
``regression``: per layer, the ridge regression of the last layer's residual on this layer's
(closed form, one ``[d+1, d+1]`` solve per layer), a warm start that makes a short KL fit on a
CPU worthwhile. The last layer's optimum is the identity (the logit lens is exact there): both
initialisations start there. Saved as safetensors: ``weight`` ``[layer, d, d]`` (``nn.Linear`` convention:
``h + h @ weight[l].T + bias[l]``), ``bias`` ``[layer, d]``, and string metadata.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import xarray as xr
from torch import nn

from mechflow.lens.chunked import DEFAULT_CHUNK_BYTES, logsumexp, softmax_moments
from mechflow.lens.unembed import LensError, Unembedding

__all__ = ["TunedLens", "TunedLensFit", "FinalTargets", "final_targets", "kl_by_layer", "fit_tuned_lens",
           "FitSplit", "fit_split", "fit_prompts_dataset", "training_dataset", "POSITIONS_PER_PROMPT", "ROLES"]

log = logging.getLogger(__name__)

Init = Literal["identity", "regression"]
#: token positions drawn from one prompt for the tuned lens (prompts share templates: spread over many)
POSITIONS_PER_PROMPT = 16
#: what a position is for in the fit (whole prompts each)
ROLES = ("train", "validation", "test")


class TunedLens(nn.Module):
    """Affine translators of every layer: ``h -> h + h @ weight[l].T + bias[l]``; identity at initialisation."""

    def __init__(self, n_layers: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = nn.Parameter(torch.zeros(n_layers, d_model))

    @property
    def n_layers(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Translate ``h`` ``[layer, ..., d]`` (every layer at once) -> ``[layer, ..., d]``."""
        if h.shape[0] != self.n_layers or h.shape[-1] != self.weight.shape[-1]:
            raise LensError(f"tuned lens of {self.n_layers} layers x d={self.weight.shape[-1]} cannot translate "
                            f"residuals of shape {tuple(h.shape)}")
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        out = flat + torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))
        return out.reshape(h.shape)

    def save(self, path: str | Path, metadata: dict[str, object] | None = None) -> None:
        """Write ``weight`` and ``bias`` (float32) as safetensors, atomically; metadata values stored as JSON text."""
        from safetensors.torch import save_file

        from mechflow.io import atomic_path

        meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}
        meta.setdefault("format", "mechflow-tuned-lens")
        with atomic_path(path) as tmp:
            save_file({"weight": self.weight.detach().float().contiguous(), "bias": self.bias.detach().float().contiguous()},
                      str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> tuple[TunedLens, dict[str, str]]:
        """(lens, metadata) from a file written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        if weight.ndim != 3 or bias.shape != weight.shape[:2]:
            raise LensError(f"{path}: not a tuned lens (weight {tuple(weight.shape)}, bias {tuple(bias.shape)})")
        lens = cls(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            lens.weight.copy_(weight)
            lens.bias.copy_(bias)
        return lens, meta


@dataclass(frozen=True)
class FinalTargets:
    """The final layer's next-token distribution ``p`` at N positions, by its moments (all float32):
    ``ew`` ``[N, d]`` = E_p[W]; ``eb`` ``[N]`` = E_p[b]; ``neg_entropy`` ``[N]`` = sum_v p log p."""

    ew: torch.Tensor
    eb: torch.Tensor
    neg_entropy: torch.Tensor

    def subset(self, idx: torch.Tensor) -> FinalTargets:
        return FinalTargets(self.ew[idx], self.eb[idx], self.neg_entropy[idx])


def final_targets(h_last: torch.Tensor, unembed: Unembedding, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FinalTargets:
    """Moments of the model's own distribution from the last block's residuals ``[N, d]``."""
    if unembed.softcap:
        raise LensError("the tuned lens's streamed KL needs logits linear in the normed residual; this model soft-caps "
                        "its logits (final_logit_softcapping): use lens.lenses: [logit]")
    with torch.no_grad():
        x = unembed.normed(h_last)
        lse, ew, eb, ez = softmax_moments(x, unembed.weight, unembed.bias, chunk_bytes)
    return FinalTargets(ew=ew, eb=eb, neg_entropy=(ez.double() - lse).float())


def _kl(x: torch.Tensor, target: FinalTargets, unembed: Unembedding, chunk_bytes: int) -> torch.Tensor:
    """KL(p || q) ``[layer, N]`` for normed ``x`` ``[layer, N, d]`` (differentiable in ``x``)."""
    lse = logsumexp(x, unembed.weight, unembed.bias, chunk_bytes)  # [layer, N]
    linear = (x * target.ew).sum(-1) + target.eb
    return target.neg_entropy + lse - linear


def kl_by_layer(h: torch.Tensor, target: FinalTargets, unembed: Unembedding, lens: TunedLens | None = None,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES, batch: int = 64) -> np.ndarray:
    """Mean KL(p_final || q_layer) in nats ``[layer]`` over positions ``h`` ``[layer, N, d]``: the logit lens
    (``lens=None``) or the tuned lens."""
    total = torch.zeros(h.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, h.shape[1], batch):
            hb = h[:, s : s + batch]
            x = unembed.normed(lens(hb) if lens is not None else hb)
            total += _kl(x, target.subset(torch.arange(s, s + hb.shape[1])), unembed, chunk_bytes).double().sum(1)
    return (total / h.shape[1]).numpy()


@dataclass
class TunedLensFit:
    """A fitted lens and its diagnostics: ``loss`` ``[step]`` (mean KL of each step's batch, nats),
    held-out mean KL ``[layer]`` of the logit lens, of the initialisation and of the fitted lens."""

    lens: TunedLens
    loss: np.ndarray
    kl_logit: np.ndarray
    kl_init: np.ndarray
    kl_tuned: np.ndarray
    n_train: int
    n_holdout: int
    seconds: float
    info: dict[str, object] = field(default_factory=dict)


def regression_init(lens: TunedLens, h: torch.Tensor, ridge: float = 1e-2) -> None:
    """Set each layer's translator to the ridge regression of the last layer's residual on this layer's.

    ``h`` ``[layer, N, d]``. Solves ``min ||[h_l, 1] B - (h_last - h_l)||^2 + ridge * tr(X'X)/d ||B_w||^2`` for all
    layers at once (``[layer, d+1, d+1]`` systems); the intercept is not penalised.
    """
    L, N, d = h.shape
    X = torch.cat([h.double(), torch.ones(L, N, 1, dtype=torch.float64)], -1)  # [L, N, d+1]
    Y = (h[-1:].double() - h.double())  # [L, N, d]
    G = X.transpose(1, 2) @ X  # [L, d+1, d+1]
    scale = torch.diagonal(G[:, :d, :d], dim1=1, dim2=2).mean(-1)  # [L]
    pen = torch.zeros(L, d + 1, d + 1, dtype=torch.float64)
    pen[:, torch.arange(d), torch.arange(d)] = (ridge * scale).unsqueeze(-1)
    # Cholesky, not torch.linalg.solve: batched LU solves with many right-hand sides hang in some MKL builds
    chol, info = torch.linalg.cholesky_ex(G + pen)
    if int(info.max()) > 0:
        raise LensError("the regression start is singular (fewer positions than dimensions?): use lens.tuned.ridge > 0")
    B = torch.cholesky_solve(X.transpose(1, 2) @ Y, chol)  # [L, d+1, d]
    with torch.no_grad():
        lens.weight.copy_(B[:, :d].transpose(1, 2).float())
        lens.bias.copy_(B[:, d].float())


def fit_tuned_lens(
    h: torch.Tensor,
    unembed: Unembedding,
    *,
    init: Init = "regression",
    steps: int = 100,
    batch_tokens: int = 64,
    split: Sequence[str] | np.ndarray,
    lr: float = 3e-4,
    ridge: float = 1e-2,
    seed: int = 0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    eval_every: int = 10,
    log_every: int = 10,
    start: TunedLens | None = None,
) -> TunedLensFit:
    """Fit translators to residuals ``h`` ``[layer, N, d]`` (float32, N token positions).

    ``split`` ``[N]`` says what each position is for: ``train``, ``validation`` or ``test`` (from
    :func:`fit_split`: whole prompts, so no held-out position comes from a prompt that gave a training
    position). Adam runs ``steps`` steps of ``batch_tokens`` training positions each (every layer of each
    position); every ``eval_every`` steps (and at the start and end) each layer's validation KL is measured
    and each layer keeps its best translator so far (per-layer early stopping: a noisy short fit never
    leaves a layer worse than its start). The KL diagnostics are over the test positions only.
    ``start``: translators to continue from instead of ``init`` (modified in place).
    """
    L, N, d = h.shape
    split = np.asarray(split, dtype=str)
    if split.shape != (N,):
        raise LensError(f"split has shape {split.shape}, the residuals {N} positions")
    unknown = sorted(set(split.tolist()) - set(ROLES))
    if unknown:
        raise LensError(f"unknown position role(s) {unknown} ({', '.join(ROLES)})")
    train, val, test = (torch.from_numpy(np.flatnonzero(split == r)) for r in ROLES)
    if not (len(train) and len(val) and len(test)):
        raise LensError(f"the tuned lens needs training, validation and test positions, got {len(train)}, {len(val)}, "
                        f"{len(test)}")
    if init not in ("identity", "regression"):
        raise LensError(f"unknown tuned-lens init {init!r} (identity, regression)")
    t0 = time.perf_counter()
    for p in unembed.norm.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    target = final_targets(h[-1], unembed, chunk_bytes)
    lens = start if start is not None else TunedLens(L, d)
    kl_logit = kl_by_layer(h[:, test], target.subset(test), unembed, None, chunk_bytes)
    if init == "regression" and start is None:
        regression_init(lens, h[:, train], ridge)
    kl_init = kl_by_layer(h[:, test], target.subset(test), unembed, lens, chunk_bytes)
    best = _Best(lens, kl_by_layer(h[:, val], target.subset(val), unembed, lens, chunk_bytes))
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    losses = []
    for step in range(1, steps + 1):
        idx = train[torch.randint(len(train), (min(batch_tokens, len(train)),), generator=gen)]
        x = unembed.normed(lens(h[:, idx]))
        loss = _kl(x, target.subset(idx), unembed, chunk_bytes).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % max(1, eval_every) == 0 or step == steps:
            best.update(lens, kl_by_layer(h[:, val], target.subset(val), unembed, lens, chunk_bytes), step)
        if log_every and (step % log_every == 1 or step == steps):
            log.info("tuned lens step %d/%d: mean KL %.4f nats (batch)", step, steps, losses[-1])
    best.restore(lens)
    kl_tuned = kl_by_layer(h[:, test], target.subset(test), unembed, lens, chunk_bytes)
    return TunedLensFit(lens=lens, loss=np.asarray(losses, dtype=np.float64), kl_logit=kl_logit, kl_init=kl_init,
                        kl_tuned=kl_tuned, n_train=int(len(train)), n_holdout=int(len(test)),
                        seconds=time.perf_counter() - t0, info={"best_step": best.step.copy(), "n_validation": int(len(val))})


class _Best:
    """Each layer's translator with the lowest validation KL seen so far, and the step it came from."""

    def __init__(self, lens: TunedLens, kl: np.ndarray) -> None:
        self.kl = kl.copy()
        self.step = np.zeros(len(kl), dtype=np.int64)
        self.weight = lens.weight.detach().clone()
        self.bias = lens.bias.detach().clone()

    def update(self, lens: TunedLens, kl: np.ndarray, step: int) -> None:
        better = torch.from_numpy(kl < self.kl)
        self.kl = np.where(better.numpy(), kl, self.kl)
        self.step[better.numpy()] = step
        self.weight[better] = lens.weight.detach()[better]
        self.bias[better] = lens.bias.detach()[better]

    def restore(self, lens: TunedLens) -> None:
        with torch.no_grad():
            lens.weight.copy_(self.weight)
            lens.bias.copy_(self.bias)


@dataclass(frozen=True)
class FitSplit:
    """Where the tuned lens is fitted and tested, by prompt: ``positions`` ``[P][k]`` (sorted token positions,
    empty for prompts not drawn), ``role`` ``[P]`` (``train``, ``validation``, ``test``; ``""`` = not drawn) and
    ``dropped``: held-out positions left out because their token prefix is a training position's (the same
    residual: a shared few-shot prefix would be a training example in the test)."""

    positions: list[list[int]]
    role: np.ndarray
    dropped: int

    def position_roles(self) -> np.ndarray:
        """Role of every position ``[N]``, in prompt order then position order (as :func:`position_residuals`)."""
        return np.asarray([r for pos, r in zip(self.positions, self.role) for _ in pos], dtype=str)

    def position_prompts(self) -> np.ndarray:
        """Prompt index of every position ``[N]`` (same order)."""
        return np.asarray([p for p, pos in enumerate(self.positions) for _ in pos], dtype=np.int64)


def fit_split(ids: Sequence[Sequence[int]], max_tokens: int, holdout: float = 0.1, seed: int = 0,
              per_prompt: int = POSITIONS_PER_PROMPT) -> FitSplit:
    """Token positions to fit and test the tuned lens on, split by prompt.

    Prompts (token ids ``[P][len]``) are drawn in a seeded order; each gives up to ``per_prompt`` distinct
    positions other than its first (the attention sink, whose residual is 10-100x larger in SmolLM2) until
    ``max_tokens``. The drawn prompts are then split (seeded): ``holdout`` of them (at least two) held out,
    half for validation and half for test, the rest for training. A held-out position whose prefix
    ``ids[:pos + 1]`` is a training position's is dropped (its residual is a training residual).
    """
    rng = np.random.default_rng(seed)
    positions: list[list[int]] = [[] for _ in ids]
    drawn, total = [], 0
    for p in rng.permutation(len(ids)):
        if total >= max_tokens:
            break
        candidates = np.arange(1, len(ids[p]))
        k = min(per_prompt, candidates.size, max_tokens - total)
        if k > 0:
            positions[p] = sorted(rng.choice(candidates, k, replace=False).tolist())
            drawn.append(int(p))
            total += k
    if len(drawn) < 3:
        raise LensError(f"the tuned lens's fit pool gives token positions in {len(drawn)} prompt(s); it needs at least 3 "
                        "(training, validation, test: split by prompt)")
    n_hold = min(len(drawn) - 1, max(2, int(round(holdout * len(drawn)))))
    order = rng.permutation(drawn)
    role = np.full(len(ids), "", dtype=object)
    role[order[: n_hold // 2]], role[order[n_hold // 2 : n_hold]], role[order[n_hold:]] = ROLES[1], ROLES[2], ROLES[0]
    seen = {tuple(ids[p][: k + 1]) for p in order[n_hold:] for k in positions[p]}
    dropped = 0
    for p in order[:n_hold]:
        keep = [k for k in positions[p] if tuple(ids[p][: k + 1]) not in seen]
        dropped += len(positions[p]) - len(keep)
        positions[p] = keep
    role = np.asarray(role.tolist(), dtype=str)
    for r in ROLES[1:]:
        if not any(positions[p] for p in np.flatnonzero(role == r)):
            raise LensError(f"every {r} position of the tuned lens shares its prefix with a training position; "
                            "the fit pool's prompts are too alike (more prompts: lens.tuned.max_tokens, or a larger pool)")
    return FitSplit(positions=positions, role=role, dropped=dropped)


def fit_prompts_dataset(split: FitSplit, sets: Sequence[str], prompt_ids: Sequence[int]) -> xr.Dataset:
    """Which prompts and positions the tuned lens used: on dim ``fit_prompt`` (drawn prompts) ``fit_dataset``,
    ``fit_prompt_id`` (the prompt's id in its ``prompts.nc``), ``fit_role``, ``fit_positions``; on dim
    ``position`` (every position of ``h``, in its order) ``position_prompt`` (index on ``fit_prompt``),
    ``position_token`` and ``position_role``."""
    drawn = [p for p, pos in enumerate(split.positions) if pos or split.role[p]]
    index = {p: i for i, p in enumerate(drawn)}
    prompts = split.position_prompts()
    ds = xr.Dataset({
        "fit_dataset": ("fit_prompt", np.asarray([sets[p] for p in drawn], dtype=str)),
        "fit_prompt_id": ("fit_prompt", np.asarray([prompt_ids[p] for p in drawn], dtype=np.int64)),
        "fit_role": ("fit_prompt", np.asarray([split.role[p] for p in drawn], dtype=str)),
        "fit_positions": ("fit_prompt", np.asarray([len(split.positions[p]) for p in drawn], dtype=np.int64)),
        "position_prompt": ("position", np.asarray([index[p] for p in prompts], dtype=np.int64)),
        "position_token": ("position", np.asarray([k for pos in split.positions for k in pos], dtype=np.int64)),
        "position_role": ("position", split.position_roles()),
    })
    ds["fit_role"].attrs["description"] = "train, validation or test: whole prompts (split by prompt, seeded)"
    ds["fit_positions"].attrs["description"] = ("token positions the prompt gave (held-out positions sharing a training "
                                               "position's prefix dropped)")
    ds["position_token"].attrs["description"] = "token index in the prompt (0 = first token, never used: the sink)"
    counts = {f"n_{r}_prompts": int((ds["fit_role"].values == r).sum()) for r in ROLES}
    return ds.assign_attrs(**counts, dropped_shared_prefix=split.dropped)


def training_dataset(fit: TunedLensFit) -> xr.Dataset:
    """The ``training.nc`` of a tuned lens: ``loss`` ``[step]``; ``kl_logit``, ``kl_init``, ``kl_tuned`` ``[layer]``
    (mean held-out KL from the final distribution, nats)."""
    L = fit.kl_logit.shape[0]
    ds = xr.Dataset({
        "loss": ("step", fit.loss.astype(np.float32)),
        "kl_logit": ("layer", fit.kl_logit.astype(np.float32)),
        "kl_init": ("layer", fit.kl_init.astype(np.float32)),
        "kl_tuned": ("layer", fit.kl_tuned.astype(np.float32)),
    }, coords={"step": np.arange(1, fit.loss.size + 1, dtype=np.int64), "layer": np.arange(L, dtype=np.int64)})
    if "best_step" in fit.info:
        ds["best_step"] = ("layer", np.asarray(fit.info["best_step"], dtype=np.int64))
        ds["best_step"].attrs["description"] = "step whose translator each layer kept (lowest validation KL; 0 = the start)"
    for v in ("kl_logit", "kl_init", "kl_tuned"):
        ds[v].attrs.update(units="nats", description=f"mean KL(final || {v[3:]} lens) over the {fit.n_holdout} test "
                           "positions (prompts that gave no training position)")
    ds["loss"].attrs.update(units="nats", description="mean KL over every layer of the step's positions")
    return ds.assign_attrs(n_train=fit.n_train, n_holdout=fit.n_holdout, fit_seconds=round(fit.seconds, 2))
