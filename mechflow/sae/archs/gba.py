"""Group Bias Adaptation SAE (Chen et al. 2025, "Taming Polysemanticity in LLMs", arXiv:2506.14002)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mechflow.sae.archs.base import SparseAutoencoder, reconstruction_only
from mechflow.sae.configs.gba import GBAConfig

#: the paper's constants (Chen et al. 2025), used by a model built without a run for the options left null
PAPER = {"gba_freq_max": 0.5, "gba_freq_min": 1e-3, "gba_interval": 50, "gba_rate": 0.01}


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
    same for such inputs and independent of the input scale. The paper's constants (0.5 to 1e-3,
    gamma 0.01 every 50 steps) are set for runs of ~10^5 steps; the null defaults scale the interval
    and rate with the run and set the targets around ``k / n_features``
    (:func:`mechflow.sae.defaults.gba_interval`, ``gba_rate``, ``gba_frequencies``).

    With ``gba_topk_warmup`` > 0 the first steps train an untied TopK SAE (k, AuxK) at TopK's learning rate;
    at the switch the dictionary is kept (no decoder updates afterwards), the groups are re-ranked so the
    latents that fired most often in the second half of the TopK phase get the highest targets, every bias
    starts at minus the mean k-th largest tied pre-activation of the batch, ``b_enc`` is zeroed and the GBA
    phase runs the bias rule and trains ``out_scale`` and ``b_dec``.

    Inference is SAELens JumpReLU: ``W_enc = W_dec.T * a``, ``b_enc = 0``, ``threshold = -a * b`` (in the
    TopK phase ``encode`` is a ReLU of the untied encoder: only validation during training sees it).
    """

    config_cls = GBAConfig

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        o = {**self.opts, **{key: v for key, v in PAPER.items() if self.opts[key] is None}}
        self._interval, self._rate = int(o["gba_interval"]), float(o["gba_rate"])
        self.n_groups = max(1, min(int(o["gba_groups"]), n_features))
        group = torch.arange(n_features) * self.n_groups // n_features
        #: target frequency of each group, spaced geometrically from gba_freq_max down to gba_freq_min
        ratio = (o["gba_freq_min"] / o["gba_freq_max"]) ** (torch.arange(self.n_groups).double() / max(self.n_groups - 1, 1))
        self._group_freq = (o["gba_freq_max"] * ratio).float()
        self.register_buffer("group", group)
        self.register_buffer("target_freq", self._group_freq[group])
        # 0: TopK phase (gba_topk_warmup > 0), 1: GBA phase; firings in the second half of the TopK phase
        self.register_buffer("phase", torch.zeros((), dtype=torch.int64))
        self.register_buffer("warm_fired", torch.zeros(n_features))
        self.out_scale = nn.Parameter(torch.ones(n_features))
        self.register_buffer("bias", torch.zeros(n_features))
        self.register_buffer("threshold", torch.zeros(n_features))
        # statistics of the current adaptation window: samples, firings, peak pre-activation, sum ||x - b_dec||^2
        self.register_buffer("win_n", torch.zeros((), dtype=torch.int64))
        self.register_buffer("win_fired", torch.zeros(n_features))
        self.register_buffer("win_peak", torch.zeros(n_features))
        self.register_buffer("win_sq", torch.zeros((), dtype=torch.float64))
        if float(self.opts["gba_topk_warmup"]) <= 0:
            self.W_enc.requires_grad_(False)
            self.b_enc.requires_grad_(False)

    def encode(self, x):
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def _topk_phase(self, x, step, switch, dead):
        """A step of the untied TopK phase (Gao et al. 2024, with AuxK); counts firings in its second half."""
        out, _ = self._topk_step(x, self.target_l0(), dead)
        if 2 * step >= switch:
            self.warm_fired += out.counts
        return out

    @torch.no_grad()
    def _start_gba_phase(self, x) -> None:
        """Groups re-ranked by TopK firing frequency, biases at minus the mean k-th largest tied pre-activation of
        ``x``, tied encoder."""
        order = torch.argsort(self.warm_fired, descending=True, stable=True)
        group = torch.empty_like(self.group)
        group[order] = torch.arange(self.n_features, device=group.device) * self.n_groups // self.n_features
        self.group.copy_(group)
        self.target_freq.copy_(self._group_freq.to(self.target_freq.device)[group])
        xc = x - self.b_dec
        u = xc @ self.W_dec.T
        kth = u.topk(self.target_l0(), dim=1).values[:, -1].clamp_min(0).mean()
        bound = float(xc.pow(2).sum(1).mean().sqrt())
        self.bias.fill_(-min(float(kth), bound))
        self.b_enc.zero_()
        self.W_enc.copy_(self.W_dec.T * self.out_scale)
        self.threshold.copy_(-self.bias * self.out_scale)
        for t in (self.win_n, self.win_fired, self.win_peak, self.win_sq):
            t.zero_()
        self.phase.fill_(1)

    def training_loss(self, x, step, total_steps, dead):
        switch = int(float(self.opts["gba_topk_warmup"]) * total_steps)
        if step < switch:
            return self._topk_phase(x, step, switch, dead)
        if int(self.phase) == 0:
            if switch > 0:
                self._start_gba_phase(x)
            else:
                self.phase.fill_(1)
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
        gamma, bound = self._rate, (float(self.win_sq) / n) ** 0.5
        b = self.bias
        b.copy_(torch.where(p > self.target_freq, (b - gamma * peak).clamp_min(-bound), b))
        b.copy_(torch.where(p <= float(self.opts["gba_eps"]), (b + gamma * rbar).clamp_max(0), b))
        for t in (self.win_n, self.win_fired, self.win_peak, self.win_sq):
            t.zero_()

    @torch.no_grad()
    def after_backward(self) -> None:
        """As every unit-norm decoder; after a TopK phase the GBA phase keeps its dictionary (no decoder update)."""
        if int(self.phase) == 1 and float(self.opts["gba_topk_warmup"]) > 0:
            self.W_dec.grad = None
        super().after_backward()

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        if int(self.phase) == 0:
            return
        self.out_scale.clamp_(min=0)
        if (step + 1) % self._interval == 0:
            self._adapt()
        self.W_enc.copy_(self.W_dec.T * self.out_scale)
        self.threshold.copy_(-self.bias * self.out_scale)

    def export_tensors(self):
        return {**super().export_tensors(), "threshold": self.threshold.detach()}

    def sae_lens_fields(self):
        return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {}, "trained_as": "gba"}
