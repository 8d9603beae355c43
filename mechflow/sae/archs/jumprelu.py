"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders"): learned per-latent thresholds, L0 penalty, straight-through estimators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mechflow.runconfig import option
from mechflow.sae.archs.base import ARCH_DOC, LossOut, SAERunConfig, SparseAutoencoder, batch_fvu, warm


@dataclass(frozen=True, kw_only=True)
class JumpReLUConfig(SAERunConfig):
    """Options of a JumpReLU SAE: the L0 penalty, its warm-up, the STE bandwidth, the initial threshold."""

    arch: str = option("jumprelu", ARCH_DOC)
    l0_coef: float = option(1e-3, "weight of the L0 penalty (expected active latents per sample)", minimum=0)
    l0_warmup: float = option(0.05, "fraction of steps over which the L0 weight ramps up linearly from 0", minimum=0,
                              maximum=1)
    bandwidth: float = option(0.05, "width of the rectangle kernel of the straight-through threshold gradient",
                              exclusive_minimum=0)
    init_threshold: float = option(0.05, "initial threshold of every latent", exclusive_minimum=0)


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

    config_cls = JumpReLUConfig

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
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
        loss = fvu + warm(self.opts["l0_coef"], self.opts["l0_warmup"], step, total_steps) * l0
        active = acts > 0
        return LossOut(loss, float(fvu.detach()), float(active.sum(1).float().mean()), active.any(0))

    def export_tensors(self):
        return {**super().export_tensors(), "threshold": self.threshold.detach()}

    def sae_lens_fields(self):
        return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {}}
