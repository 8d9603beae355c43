"""SAE architectures: one forward pass and one training loss each, sharing one training loop.

Shapes: ``x`` [batch, d_in]; ``W_enc`` [d_in, n_features]; ``b_enc`` [n_features];
``W_dec`` [n_features, d_in]; ``b_dec`` [d_in] (the SAELens convention). Every training loss is
built on the batch FVU (squared error over the batch's total variance), so it does not depend on
the scale of the activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mechflow.kernels import sparse_decode, topk_encode


@dataclass
class LossOut:
    """What one training step of an architecture reports.

    loss: scalar to minimise; fvu: batch fraction of variance unexplained (detached float);
    l0: mean active latents per sample; fired: [n_features] bool, latents active in this batch.
    """

    loss: torch.Tensor
    fvu: float
    l0: float
    fired: torch.Tensor


def batch_fvu(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over the batch's total variance (scalar, differentiable)."""
    total = (x - x.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return (recon - x).pow(2).sum() / total


def reconstruction_only(x: torch.Tensor, acts: torch.Tensor, recon: torch.Tensor) -> LossOut:
    """LossOut of an architecture trained on reconstruction alone (loss = FVU)."""
    fvu = batch_fvu(x, recon)
    active = acts > 0
    return LossOut(fvu, float(fvu.detach()), float(active.sum(1).float().mean()), active.any(0))


class SparseAutoencoder(nn.Module):
    """Base class. Subclasses implement :meth:`encode` (dense codes) and :meth:`training_loss`."""

    arch: ClassVar[str] = ""
    unit_norm_decoder: ClassVar[bool] = True
    needs_k: ClassVar[bool] = False
    #: architecture-specific keys of the run dict this class accepts, with their defaults
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__()
        if d_in < 1 or n_features < 1:
            raise ValueError(f"d_in and n_features must be positive, got d_in={d_in}, n_features={n_features}")
        if self.needs_k:
            if k is None or int(k) < 1:
                raise ValueError(f"arch {self.arch!r} needs k >= 1, got k={k}")
            if int(k) > n_features:
                raise ValueError(f"k={k} is larger than n_features={n_features}; expected 1 <= k <= n_features")
        unknown = set(opts) - set(self.options)
        if unknown:
            raise ValueError(f"arch {self.arch!r} does not take {sorted(unknown)}; it takes {sorted(self.options)}")
        self.d_in, self.n_features, self.k = int(d_in), int(n_features), None if k is None else int(k)
        self.opts = {**self.options, **opts}
        self.W_enc = nn.Parameter(torch.empty(d_in, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # samples seen since each latent last fired (dead-latent tracking, AuxK)
        self.register_buffer("since_fired", torch.zeros(n_features, dtype=torch.int64))

    # ---- initialisation -------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator, b_dec: torch.Tensor | None = None) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose, b_dec from the data if given."""
        w = torch.randn(self.n_features, self.d_in, generator=generator)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        if b_dec is not None:
            self.b_dec.copy_(b_dec)

    # ---- inference ------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [batch, n_features]."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations [batch, n_features] (inference semantics)."""
        raise NotImplementedError

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction [batch, d_in] from dense activations [batch, n_features]."""
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # ---- training -------------------------------------------------------------------------
    def training_loss(self, x: torch.Tensor, step: int, total_steps: int, dead: torch.Tensor) -> LossOut:
        """Loss of one minibatch ``x`` [batch, d_in]; ``dead`` [n_features] bool marks dead latents."""
        raise NotImplementedError

    @torch.no_grad()
    def after_backward(self) -> None:
        """Remove the gradient component parallel to each unit-norm decoder row."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            w, g = self.W_dec, self.W_dec.grad
            g -= (g * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Project decoder rows back onto the unit sphere (and any periodic adaptation)."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # ---- export ---------------------------------------------------------------------------
    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors in the SAELens naming: W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec."""
        return {"W_enc": self.W_enc.detach(), "b_enc": self.b_enc.detach(), "W_dec": self.W_dec.detach(), "b_dec": self.b_dec.detach()}

    def sae_lens_fields(self) -> dict[str, Any]:
        """architecture / activation_fn fields of a SAELens cfg.json for this SAE."""
        return {"architecture": "standard", "activation_fn_str": "relu", "activation_fn_kwargs": {}}

    @torch.no_grad()
    def fold_scaling(self, scale: float) -> None:
        """Fold an input scaling ``x -> scale * x`` into the weights so the SAE reads raw inputs."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # ---- helpers shared by the architectures -----------------------------------------------
    def _auxk(self, xc: torch.Tensor, err: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK loss (Gao et al. 2024): the top ``k_aux`` dead latents reconstruct the residual ``err``."""
        coef = float(self.opts.get("auxk_coef", 0.0))
        n_dead = int(dead.sum())
        if coef <= 0 or n_dead == 0:
            return xc.new_zeros(())
        k_aux = min(int(self.opts.get("k_aux") or self.d_in // 2), n_dead)
        dead_idx = dead.nonzero().squeeze(1)
        vals, idx = topk_encode(xc, self.W_enc[:, dead_idx], self.b_enc[dead_idx], k_aux)
        err_hat = sparse_decode(vals, dead_idx[idx], self.W_dec, torch.zeros_like(self.b_dec))
        err = err.detach()
        return coef * batch_fvu(err, err_hat)


def _fired_from_sparse(vals: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    fired = torch.zeros(n, dtype=torch.bool, device=vals.device)
    fired[idx[vals > 0]] = True
    return fired


class TopKSAE(SparseAutoencoder):
    """TopK SAE with AuxK for dead latents (Gao et al. 2024), via the fused sparse kernels."""

    arch = "topk"
    needs_k = True
    options = {"auxk_coef": 1 / 32, "k_aux": None}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        vals, idx = topk_encode(x - self.b_dec, self.W_enc, self.b_enc, self.k)
        return torch.zeros(x.shape[0], self.n_features, dtype=vals.dtype, device=vals.device).scatter_(1, idx, vals)

    def training_loss(self, x, step, total_steps, dead):
        xc = x - self.b_dec
        vals, idx = topk_encode(xc, self.W_enc, self.b_enc, self.k)
        recon = sparse_decode(vals, idx, self.W_dec, self.b_dec)
        fvu = batch_fvu(x, recon)
        loss = fvu + self._auxk(xc, x - recon, dead)
        return LossOut(loss, float(fvu.detach()), float((vals > 0).sum(1).float().mean()), _fired_from_sparse(vals, idx, self.n_features))

    def sae_lens_fields(self):
        return {"architecture": "topk", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": self.k}, "k": self.k}


class BatchTopKSAE(SparseAutoencoder):
    """BatchTopK (Bussmann et al. 2024): the ``k * batch`` largest activations of the batch are kept.

    Trained like TopK (same learning rate) with the AuxK loss of Gao et al. (2024) on dead latents.
    With one threshold for the whole batch, a latent whose activations stay below it gets no
    gradient at all (TopK instead fills every sample's k slots, so every latent keeps some): such
    dormant latents fire too seldom to learn yet are not dead until ``dead_after`` samples pass
    without a firing, so AuxK only revives them when that window is short, as in the reference
    implementation (5 batches). Raise ``auxk_coef`` (1/8 in the synthetic recovery table) when
    many latents are dormant.

    Inference uses a single threshold, an exponential moving average of the smallest kept
    activation per training batch, so it is a JumpReLU with one shared threshold.
    """

    arch = "batchtopk"
    needs_k = True
    options = {"auxk_coef": 1 / 32, "k_aux": None, "threshold_momentum": 0.99}

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        self.register_buffer("threshold", torch.full((n_features,), -1.0))

    def encode(self, x):
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold.clamp_min(0))

    def _batch_topk(self, pre: torch.Tensor) -> torch.Tensor:
        acts = pre.relu()
        flat = acts.flatten()
        vals, idx = flat.topk(min(self.k * acts.shape[0], flat.numel()), sorted=False)
        out = torch.zeros_like(flat).scatter(0, idx, vals).view_as(acts)
        with torch.no_grad():
            pos = vals[vals > 0]
            if pos.numel():
                m = float(self.opts["threshold_momentum"])
                new = pos.min()
                first = bool(self.threshold[0] < 0)
                self.threshold.copy_(new.expand_as(self.threshold) if first else m * self.threshold + (1 - m) * new)
        return out

    def training_loss(self, x, step, total_steps, dead):
        xc = x - self.b_dec
        acts = self._batch_topk(xc @ self.W_enc + self.b_enc)
        recon = self.decode(acts)
        fvu = batch_fvu(x, recon)
        loss = fvu + self._auxk(xc, x - recon, dead)
        active = acts > 0
        return LossOut(loss, float(fvu.detach()), float(active.sum(1).float().mean()), active.any(0))

    def export_tensors(self):
        return {**super().export_tensors(), "threshold": self.threshold.clamp_min(0).detach()}

    def sae_lens_fields(self):
        return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {}, "k": self.k, "trained_as": "batchtopk"}


class ReLUSAE(SparseAutoencoder):
    """ReLU SAE with an L1 penalty weighted by decoder row norms and a linear L1 warm-up."""

    arch = "relu"
    unit_norm_decoder = False
    options = {"l1_coef": 5.0, "l1_warmup": 0.05}

    def encode(self, x):
        return self.pre_acts(x).relu()

    def training_loss(self, x, step, total_steps, dead):
        acts = self.encode(x)
        recon = self.decode(acts)
        fvu = batch_fvu(x, recon)
        scale = (x - x.mean(0, keepdim=True)).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        l1 = (acts * self.W_dec.norm(dim=1)).sum(1).mean() / scale
        loss = fvu + _warm(self.opts["l1_coef"], self.opts["l1_warmup"], step, total_steps) * l1
        active = acts > 0
        return LossOut(loss, float(fvu.detach()), float(active.sum(1).float().mean()), active.any(0))


def _warm(coef: float, warmup: float, step: int, total_steps: int) -> float:
    """Coefficient ramped linearly over the first ``warmup`` fraction of training."""
    n = warmup * total_steps
    return float(coef) * (1.0 if n <= 0 else min(1.0, (step + 1) / n))


class _JumpReLUFn(torch.autograd.Function):
    """pre * H(pre - theta); d/dtheta by a straight-through rectangle kernel of width eps."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        rect = ((pre - theta).abs() < eps / 2).to(grad.dtype)
        g_pre = grad * (pre > theta)
        g_theta = (-(theta / eps) * rect * grad).sum(0)
        return g_pre, g_theta, None


class _StepFn(torch.autograd.Function):
    """H(pre - theta); d/dtheta by a straight-through rectangle kernel, no gradient to pre."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        rect = ((pre - theta).abs() < eps / 2).to(grad.dtype)
        return torch.zeros_like(pre), (-(1.0 / eps) * rect * grad).sum(0), None


class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU (Rajamanoharan et al. 2024): learned per-latent thresholds, L0 penalty, STE."""

    arch = "jumprelu"
    options = {"l0_coef": 1e-3, "l0_warmup": 0.05, "bandwidth": 0.05, "init_threshold": 0.05}

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        if float(self.opts["init_threshold"]) <= 0 or float(self.opts["bandwidth"]) <= 0:
            raise ValueError("JumpReLU needs init_threshold > 0 and bandwidth > 0")
        self.threshold = nn.Parameter(torch.full((n_features,), float(self.opts["init_threshold"])))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        self.threshold.clamp_(min=1e-6)

    def encode(self, x):
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def training_loss(self, x, step, total_steps, dead):
        pre = self.pre_acts(x)
        theta, eps = self.threshold, float(self.opts["bandwidth"])
        acts = _JumpReLUFn.apply(pre, theta, eps)
        recon = self.decode(acts)
        fvu = batch_fvu(x, recon)
        l0 = _StepFn.apply(pre, theta, eps).sum(1).mean()
        loss = fvu + _warm(self.opts["l0_coef"], self.opts["l0_warmup"], step, total_steps) * l0
        active = acts > 0
        return LossOut(loss, float(fvu.detach()), float(active.sum(1).float().mean()), active.any(0))

    def export_tensors(self):
        return {**super().export_tensors(), "threshold": self.threshold.detach()}

    def sae_lens_fields(self):
        return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {}}


class GBASAE(SparseAutoencoder):
    """Group Bias Adaptation (Chen et al. 2025, "Taming Polysemanticity in LLMs", arXiv:2506.14002).

    A tied SAE ``x_hat = sum_m a_m w_m JumpReLU(w_m . (x - b_dec); -b_m) + b_dec`` trained on the
    reconstruction loss alone: ``W_dec`` rows ``w_m`` are unit vectors (spherical gradient steps) that
    also serve as the encoder, ``out_scale`` ``a_m >= 0`` is trained, and the biases ``b_m <= 0`` are
    not trained by gradient. Latent m fires when ``w_m . (x - b_dec) + b_m > 0`` and then outputs
    ``a_m w_m . (x - b_dec)``, so the bias gates without shrinking the output (the paper's JumpReLU).

    The latents are split into ``gba_groups`` equal groups whose target activation frequencies
    ``p_k`` are spaced geometrically from ``gba_freq_max`` down to ``gba_freq_min``. Every
    ``gba_interval`` steps, from the pre-activations of those steps, each latent's firing frequency
    ``p_m`` and peak pre-activation ``r_m`` update its bias (rate ``gamma = gba_rate``):
    ``b_m <- max(b_m - gamma r_m, -R)`` if ``p_m > p_k``, and ``b_m <- min(b_m + gamma rbar_k, 0)``
    if ``p_m <= gba_eps`` (``rbar_k``: mean positive peak of the group). The paper clamps biases to
    [-1, 0] for inputs of norm ~1; here ``R`` is the RMS norm of ``x - b_dec`` in the window, the
    same for such inputs and independent of the input scale. Defaults are the paper's (10 groups,
    0.5 to 1e-3, gamma 0.01 every 50 steps), set for runs of ~10^5 steps; short runs need a larger
    ``gba_rate`` or a smaller ``gba_interval`` for the biases to settle.

    Inference is SAELens JumpReLU: ``W_enc = W_dec.T * a``, ``b_enc = 0``, ``threshold = -a * b``.
    """

    arch = "gba"
    options = {
        "gba_groups": 10,
        "gba_freq_max": 0.5,
        "gba_freq_min": 1e-3,
        "gba_interval": 50,
        "gba_rate": 0.01,
        "gba_eps": 0.0,
    }

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        o = self.opts
        if not (0 < o["gba_freq_min"] <= o["gba_freq_max"] <= 1):
            raise ValueError(f"GBA needs 0 < gba_freq_min <= gba_freq_max <= 1, got {o['gba_freq_min']}, {o['gba_freq_max']}")
        if not (0 < o["gba_rate"] <= 1) or int(o["gba_interval"]) < 1:
            raise ValueError(f"GBA needs 0 < gba_rate <= 1 and gba_interval >= 1, got {o['gba_rate']}, {o['gba_interval']}")
        self.n_groups = max(1, min(int(o["gba_groups"]), n_features))
        group = torch.arange(n_features) * self.n_groups // n_features
        ratio = (o["gba_freq_min"] / o["gba_freq_max"]) ** (group.double() / max(self.n_groups - 1, 1))
        self.register_buffer("group", group)
        self.register_buffer("target_freq", (o["gba_freq_max"] * ratio).float())
        self.out_scale = nn.Parameter(torch.ones(n_features))
        self.register_buffer("bias", torch.zeros(n_features))
        self.register_buffer("threshold", torch.zeros(n_features))
        # statistics of the current adaptation window: samples, firings, peak pre-activation, sum ||x - b_dec||^2
        self.register_buffer("win_n", torch.zeros((), dtype=torch.int64))
        self.register_buffer("win_fired", torch.zeros(n_features))
        self.register_buffer("win_peak", torch.zeros(n_features))
        self.register_buffer("win_sq", torch.zeros((), dtype=torch.float64))
        self.W_enc.requires_grad_(False)
        self.b_enc.requires_grad_(False)

    def encode(self, x):
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def training_loss(self, x, step, total_steps, dead):
        xc = x - self.b_dec
        u = xc @ self.W_dec.T  # tied: the decoder rows are the encoder
        pre = u.detach() + self.bias
        fire = pre > 0
        with torch.no_grad():
            self.win_n += x.shape[0]
            self.win_fired += fire.sum(0)
            torch.maximum(self.win_peak, pre.max(0).values, out=self.win_peak)
            self.win_sq += xc.double().pow(2).sum()
        acts = u * fire * self.out_scale
        return reconstruction_only(x, acts, self.decode(acts))

    @torch.no_grad()
    def _adapt(self) -> None:
        """The paper's bias update from the window statistics, then a fresh window."""
        n = float(self.win_n)
        p = self.win_fired / n
        peak = self.win_peak.clamp_min(0)
        pos = peak > 0
        total = torch.zeros(self.n_groups, device=peak.device).index_add_(0, self.group, peak)
        count = torch.zeros(self.n_groups, device=peak.device).index_add_(0, self.group, pos.float())
        # mean positive peak of the group (of all latents if none of the group fired)
        overall = peak.sum() / pos.sum().clamp_min(1)
        rbar = torch.where(count > 0, total / count.clamp_min(1), overall)[self.group]
        gamma, bound = float(self.opts["gba_rate"]), (float(self.win_sq) / n) ** 0.5
        b = self.bias
        b.copy_(torch.where(p > self.target_freq, (b - gamma * peak).clamp_min(-bound), b))
        b.copy_(torch.where(p <= float(self.opts["gba_eps"]), (b + gamma * rbar).clamp_max(0), b))
        for t in (self.win_n, self.win_fired, self.win_peak, self.win_sq):
            t.zero_()

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        self.out_scale.clamp_(min=0)
        if (step + 1) % int(self.opts["gba_interval"]) == 0:
            self._adapt()
        self.W_enc.copy_(self.W_dec.T * self.out_scale)
        self.threshold.copy_(-self.bias * self.out_scale)

    def export_tensors(self):
        return {**super().export_tensors(), "threshold": self.threshold.detach()}

    def sae_lens_fields(self):
        return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {}, "trained_as": "gba"}


class MPSAE(SparseAutoencoder):
    """Matching-pursuit SAE (Costa et al. 2025): the encoder is ``mp_steps`` unrolled greedy steps.

    Each step picks the decoder atom with the largest inner product with the residual, adds that
    (non-negative) coefficient to the atom's activation and subtracts its contribution from the
    residual. ``W_enc`` is exported as ``W_dec.T`` (the encoder uses the decoder atoms).
    """

    arch = "mp"
    needs_k = True
    options = {"mp_steps": None}

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        self.steps = int(self.opts["mp_steps"] or self.k)
        if self.steps < 1:
            raise ValueError(f"mp_steps must be >= 1, got {self.steps}")
        self.W_enc.requires_grad_(False)
        self.b_enc.requires_grad_(False)

    def _pursuit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        resid = x - self.b_dec
        acts = x.new_zeros(x.shape[0], self.n_features)
        for _ in range(self.steps):
            coef, j = (resid @ self.W_dec.T).max(1)
            coef = coef.relu()
            resid = resid - coef[:, None] * self.W_dec[j]
            acts = acts.scatter_add(1, j[:, None], coef[:, None])
        return acts, x - resid

    def encode(self, x):
        return self._pursuit(x)[0]

    def training_loss(self, x, step, total_steps, dead):
        acts, recon = self._pursuit(x)
        return reconstruction_only(x, acts, recon)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        self.W_enc.copy_(self.W_dec.T)

    @torch.no_grad()
    def fold_scaling(self, scale: float) -> None:
        """Pursuit on ``x / scale`` picks the same atoms with coefficients / scale: only b_dec moves."""
        self.b_dec.div_(scale)

    def sae_lens_fields(self):
        return {"architecture": "mp", "activation_fn_str": "matching_pursuit", "activation_fn_kwargs": {"k": self.steps}, "k": self.steps}


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka SAE (Bussmann et al. 2025): nested dictionary prefixes each reconstruct the input.

    Activations come from BatchTopK; the loss is the mean FVU of the prefixes ``W_dec[:m]`` for
    ``m`` in ``matryoshka_prefixes`` (fractions of n_features; the full dictionary is always
    included), plus AuxK. The paper sums the prefix losses: with Adam that only changes the weight
    of AuxK, which here is relative to the mean.
    """

    arch = "matryoshka"
    options = {**BatchTopKSAE.options, "matryoshka_prefixes": (0.0625, 0.125, 0.25, 0.5)}

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        fr = [float(f) for f in self.opts["matryoshka_prefixes"]]
        if any(not (0 < f <= 1) for f in fr):
            raise ValueError(f"matryoshka_prefixes must be fractions in (0, 1], got {fr}")
        self.prefixes = sorted({max(1, round(f * n_features)) for f in fr} | {n_features})

    def training_loss(self, x, step, total_steps, dead):
        xc = x - self.b_dec
        acts = self._batch_topk(xc @ self.W_enc + self.b_enc)
        recon = self.b_dec.expand_as(x)
        loss = x.new_zeros(())
        start = 0
        for m in self.prefixes:  # a handful of nested groups, not a loop over features
            recon = recon + acts[:, start:m] @ self.W_dec[start:m]
            loss = loss + batch_fvu(x, recon)
            start = m
        fvu = batch_fvu(x, recon)
        loss = loss / len(self.prefixes) + self._auxk(xc, x - recon, dead)
        active = acts > 0
        return LossOut(loss, float(fvu.detach()), float(active.sum(1).float().mean()), active.any(0))

    def sae_lens_fields(self):
        return {**super().sae_lens_fields(), "trained_as": "matryoshka_batchtopk", "matryoshka_prefixes": self.prefixes}


ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    cls.arch: cls for cls in (TopKSAE, BatchTopKSAE, ReLUSAE, JumpReLUSAE, GBASAE, MPSAE, MatryoshkaSAE)
}


def build_sae(arch: str, d_in: int, n_features: int, k: int | None = None, **opts: Any) -> SparseAutoencoder:
    """Instantiate an architecture by name (see :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown SAE arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](d_in, n_features, k, **opts)
