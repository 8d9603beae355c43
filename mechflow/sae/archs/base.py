"""The base class of every architecture (their run configs: :mod:`mechflow.sae.configs`).

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
from mechflow.sae.configs.base import SAERunConfig


@dataclass
class LossOut:
    """What one training step of an architecture reports.

    loss: scalar to minimise; fvu: batch fraction of variance unexplained (detached float);
    l0: mean active latents per sample; fired: [n_features] bool, latents active in this batch;
    counts: [n_features] samples of the batch each latent is active on (None: ``fired`` as 0/1).
    """

    loss: torch.Tensor
    fvu: float
    l0: float
    fired: torch.Tensor
    counts: torch.Tensor | None = None


def batch_fvu(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over the batch's total variance (scalar, differentiable)."""
    total = (x - x.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return (recon - x).pow(2).sum() / total


def reconstruction_only(x: torch.Tensor, acts: torch.Tensor, recon: torch.Tensor) -> LossOut:
    """LossOut of an architecture trained on reconstruction alone (loss = FVU)."""
    fvu = batch_fvu(x, recon)
    return dense_loss_out(fvu, fvu, acts)


def dense_loss_out(loss: torch.Tensor, fvu: torch.Tensor, acts: torch.Tensor) -> LossOut:
    """LossOut of a step with dense activations ``acts`` [batch, n_features]."""
    active = acts > 0
    counts = active.sum(0)
    return LossOut(loss, float(fvu.detach()), float(active.sum(1).float().mean()), counts > 0, counts)


def warm(coef: float, warmup: float, step: int, total_steps: int) -> float:
    """Coefficient ramped linearly over the first ``warmup`` fraction of training."""
    n = warmup * total_steps
    return float(coef) * (1.0 if n <= 0 else min(1.0, (step + 1) / n))


class SparsityController(nn.Module):
    """A sparsity coefficient adapted so the batch L0 reaches a target ``k`` (ReLU / JumpReLU with a null coefficient).

    ``log c`` (a buffer, so checkpoints carry it) moves by ``rate * clamp(log(L0 / k), -1, 1)`` each
    step: up while L0 is above ``k``, down while below. ``rate``:
    :func:`mechflow.sae.defaults.controller_rate`.
    """

    def __init__(self, init: float, target: float, rate: float = 0.0):
        super().__init__()
        self.target, self.rate = float(target), float(rate)
        self.register_buffer("log_coef", torch.tensor(math.log(init), dtype=torch.float64))

    @property
    def coef(self) -> float:
        return float(self.log_coef.exp())

    @torch.no_grad()
    def update(self, l0: float, rate: float | None = None) -> None:
        """One step of the controller from the batch L0 (``rate``: this step's, default the one given at init)."""
        err = math.log(max(l0, 1e-3) / self.target)
        self.log_coef += (self.rate if rate is None else rate) * min(max(err, -1.0), 1.0)


def fired_from_sparse(vals: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """[n] bool: latents with a positive value among the sparse codes ``vals`` / ``idx`` [batch, k]."""
    fired = torch.zeros(n, dtype=torch.bool, device=vals.device)
    fired[idx[vals > 0]] = True
    return fired


def counts_from_sparse(vals: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """[n] int64: samples on which each latent has a positive value among the sparse codes ``vals`` / ``idx``."""
    return torch.bincount(idx[vals > 0], minlength=n)


class SparseAutoencoder(nn.Module):
    """Base class. Subclasses set ``config_cls`` and implement :meth:`encode` and :meth:`training_loss`.

    ``arch`` and ``needs_k`` come from ``config_cls``; ``self.config`` is the validated config of
    the model (its architecture options as declared there, with their defaults), ``self.opts`` the
    options as a dict.
    """

    config_cls: ClassVar[type[SAERunConfig]] = SAERunConfig
    arch: ClassVar[str] = ""
    needs_k: ClassVar[bool] = False
    unit_norm_decoder: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.arch = cls.config_cls.__dataclass_fields__["arch"].default
        cls.needs_k = cls.config_cls.NEEDS_K

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__()
        if d_in < 1:
            raise ValueError(f"d_in must be positive, got d_in={d_in}")
        takes = self.config_cls.option_names()
        unknown = set(opts) - set(takes)
        if unknown:
            raise ValueError(f"arch {self.arch!r} does not take {sorted(unknown)}; it takes {sorted(takes)}")
        if self.needs_k and k is None:
            raise ValueError(f"arch {self.arch!r} needs k >= 1, got k=None")
        spec = {"arch": self.arch, "n_features": n_features, **opts, **({} if k is None else {"k": k})}
        self.config = self.config_cls.from_dict(spec, label=f"sae arch {self.arch!r}")
        self.opts = self.config.options()
        self.d_in, self.n_features, self.k = int(d_in), self.config.n_features, None if k is None else self.config.k
        self.W_enc = nn.Parameter(torch.empty(d_in, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(n_features, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # samples seen since each latent last fired (dead-latent tracking, AuxK)
        self.register_buffer("since_fired", torch.zeros(n_features, dtype=torch.int64))
        # samples each latent fired on since the last row of the training history (dense_fraction)
        self.register_buffer("fire_count", torch.zeros(n_features, dtype=torch.int64))

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

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor) -> None:
        """Data-dependent initialisation after :meth:`init_weights` (``sample``: [n, d_in] rows as trained on)."""

    @torch.no_grad()
    def target_l0(self) -> int:
        """``min(k, n_features)``: the L0 the derived sparsity settings aim at."""
        return min(self.config.k, self.n_features)

    @torch.no_grad()
    def firing_quantile(self, sample: torch.Tensor) -> torch.Tensor:
        """[n_features]: each latent's (1 - k / n_features) quantile of its initial pre-activations (less b_enc) on
        ``sample``, so that a threshold there lets each latent fire on a fraction k / n_features of the rows."""
        pre = (sample - self.b_dec) @ self.W_enc
        q = 1.0 - self.target_l0() / self.n_features
        return torch.quantile(pre.double(), q, dim=0).float()

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
    def param_groups(self) -> list[dict[str, Any]]:
        """Adam parameter groups; a group's ``lr_scale`` multiplies the run's learning rate for it."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

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
        return {"W_enc": self.W_enc.detach(), "b_enc": self.b_enc.detach(), "W_dec": self.W_dec.detach(),
                "b_dec": self.b_dec.detach()}

    @torch.no_grad()
    def load_export(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the weights from tensors of :meth:`export_tensors` (names and shapes already checked)."""
        for name, value in tensors.items():
            getattr(self, name).copy_(value)

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
    def _topk_step(self, x: torch.Tensor, k: int, dead: torch.Tensor) -> tuple[LossOut, torch.Tensor]:
        """One TopK training step (Gao et al. 2024, with AuxK) on ``x`` [batch, d_in]: its :class:`LossOut` and the
        batch's top-``k`` values [batch, k] (TopK SAEs, and the TopK phases of JumpReLU and GBA)."""
        xc = x - self.b_dec
        vals, idx = topk_encode(xc, self.W_enc, self.b_enc, k)
        recon = sparse_decode(vals, idx, self.W_dec, self.b_dec)
        fvu = batch_fvu(x, recon)
        loss = fvu + self._auxk(xc, x - recon, dead)
        counts = counts_from_sparse(vals, idx, self.n_features)
        return LossOut(loss, float(fvu.detach()), float((vals > 0).sum(1).float().mean()), counts > 0, counts), vals

    def _auxk(self, xc: torch.Tensor, err: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK loss (Gao et al. 2024): the top ``k_aux`` dead latents reconstruct the residual ``err``."""
        coef = float(self.opts.get("auxk_coef") or 0.0)
        n_dead = int(dead.sum())
        if coef <= 0 or n_dead == 0:
            return xc.new_zeros(())
        k_aux = min(int(self.opts.get("k_aux") or self.d_in // 2), n_dead)
        dead_idx = dead.nonzero().squeeze(1)
        vals, idx = topk_encode(xc, self.W_enc[:, dead_idx], self.b_enc[dead_idx], k_aux)
        err_hat = sparse_decode(vals, dead_idx[idx], self.W_dec, torch.zeros_like(self.b_dec))
        err = err.detach()
        return coef * batch_fvu(err, err_hat)
