"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders"): learned per-latent thresholds, L0 penalty, straight-through estimators;
log-parametrised thresholds and a pre-activation loss on dead latents as in Anthropic's January 2025
circuits update (Conerly et al., "Dictionary learning optimization techniques")."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mechflow.sae.archs.base import SparseAutoencoder, batch_fvu, dense_loss_out, warm
from mechflow.sae.configs.jumprelu import JumpReLUConfig
from mechflow.sae.defaults import controller_rate

#: initial coefficient of the L0 controller (a null l0_coef)
L0_INIT = 0.01
#: the L0 multiplier moves by at most MULTIPLIER_RATE * L0_INIT * controller_rate(steps) per step
MULTIPLIER_RATE = 10.0
#: initial threshold of a model built without data and a null init_threshold
INIT_THRESHOLD = 0.05


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
    """JumpReLU (Rajamanoharan et al. 2024): learned per-latent thresholds, L0 penalty, STE.

    Three things keep latents alive and the L0 where it is asked for:

    * the threshold is trained as ``log_threshold`` (``theta = exp(t)``, Conerly et al. 2025), so it stays
      positive and Adam moves it by a fraction of itself per step (no clamp at a floor where it sticks);
    * a latent silent for ``dead_after`` samples gets no gradient from the reconstruction or the STE (all
      its pre-activations lie below its threshold); the pre-activation loss ``preact_coef * mean_batch
      sum_dead relu(theta - pre) ||W_dec||`` / RMS input norm (Conerly et al. apply it to every latent with
      a small weight; here only to dead ones) raises its pre-activations until it fires and learns again;
    * a null ``l0_coef`` is adapted every step so the batch L0 reaches ``k``
      (:class:`~mechflow.sae.archs.base.SparsityController`), instead of a coefficient whose L0 depends on
      the data.

    Inference: ``pre * (pre > threshold)`` with ``threshold = exp(log_threshold)`` (a buffer, exported).
    """

    config_cls = JumpReLUConfig

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        init = float(self.opts["init_threshold"] or INIT_THRESHOLD)
        self.log_threshold = nn.Parameter(torch.full((n_features,), math.log(init)))
        self.register_buffer("threshold", torch.full((n_features,), init))
        # the L0 multiplier of a null l0_coef; the TopK phase's mean k-th value; 0: TopK phase, 1: JumpReLU phase
        self.register_buffer("multiplier", torch.tensor(L0_INIT, dtype=torch.float64))
        self.register_buffer("kth_value", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("phase", torch.zeros((), dtype=torch.int64))

    def param_groups(self):
        rest = [p for name, p in self.named_parameters() if p.requires_grad and name != "log_threshold"]
        return [{"params": rest, "lr_scale": 1.0},
                {"params": [self.log_threshold], "lr_scale": float(self.opts["threshold_lr_scale"])}]

    @torch.no_grad()
    def after_backward(self) -> None:
        """As every unit-norm decoder; in the JumpReLU phase after a TopK phase the decoder is kept (no update, no
        Adam momentum) unless ``jump_decoder``."""
        if int(self.phase) == 1 and not self.opts["jump_decoder"]:
            self.W_dec.grad = None
        super().after_backward()

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        self.threshold.copy_(self.log_threshold.exp())

    @torch.no_grad()
    def load_export(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_export(tensors)
        self.log_threshold.copy_(self.threshold.log())

    @torch.no_grad()
    def init_from_data(self, sample):
        """With a null init_threshold: each latent's threshold at its (1 - k / n_features) pre-activation quantile."""
        if self.opts["init_threshold"] is None:
            floor = float(self.opts["bandwidth"]) / 2
            self.log_threshold.copy_(self.firing_quantile(sample).clamp_min(floor).log())
            self.threshold.copy_(self.log_threshold.exp())

    def encode(self, x):
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def _topk_phase(self, x, dead):
        """A step of the TopK phase (Gao et al. 2024, with AuxK); tracks the mean k-th largest pre-activation."""
        out, vals = self._topk_step(x, self.target_l0(), dead)
        with torch.no_grad():
            kth = vals.detach().min(1).values.clamp_min(0).mean().double()
            m = 0.99
            self.kth_value.copy_(kth if self.kth_value < 0 else m * self.kth_value + (1 - m) * kth)
        return out

    @torch.no_grad()
    def _start_jump_phase(self) -> None:
        """Every threshold at the TopK phase's mean k-th largest pre-activation (BatchTopK's shared threshold)."""
        floor = float(self.opts["bandwidth"]) / 2
        theta = max(float(self.kth_value), floor)
        self.log_threshold.fill_(math.log(theta))
        self.threshold.fill_(theta)
        self.phase.fill_(1)

    def training_loss(self, x, step, total_steps, dead):
        switch = int(float(self.opts["topk_warmup"]) * total_steps)
        if step < switch:
            return self._topk_phase(x, dead)
        if switch > 0 and int(self.phase) == 0:
            self._start_jump_phase()
        pre = self.pre_acts(x)
        theta, eps = self.log_threshold.exp(), float(self.opts["bandwidth"])
        acts = _JumpReLUFn.apply(pre, theta, eps)
        recon = self.decode(acts)
        fvu = batch_fvu(x, recon)
        l0 = _StepFn.apply(pre, theta, eps).sum(1).mean()
        if self.opts["l0_coef"] is None:
            coef = float(self.multiplier)
        else:
            coef = warm(self.opts["l0_coef"], self.opts["l0_warmup"], step - switch, total_steps - switch)
        loss = fvu + coef * l0
        pc = float(self.opts["preact_coef"])
        if pc > 0 and bool(dead.any()):
            scale = (x - x.mean(0, keepdim=True)).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
            gap = (theta.detach()[dead] - pre[:, dead]).relu() * self.W_dec[dead].norm(dim=1)
            loss = loss + pc * gap.sum(1).mean() / scale
        out = dense_loss_out(loss, fvu, acts)
        if self.opts["l0_coef"] is None:
            with torch.no_grad():  # dual ascent on the constraint L0 = k (the multiplier may go negative)
                err = min(max(out.l0 / self.target_l0() - 1.0, -1.0), 1.0)
                self.multiplier += MULTIPLIER_RATE * L0_INIT * controller_rate(total_steps) * err
        return out

    def export_tensors(self):
        return {**super().export_tensors(), "threshold": self.threshold.detach()}

    def sae_lens_fields(self):
        return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {}}
