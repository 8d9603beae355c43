"""The run config every SAE run takes, and the base class of every architecture.

Shapes: ``x`` [batch, d_in]; ``W_enc`` [d_in, n_features]; ``b_enc`` [n_features];
``W_dec`` [n_features, d_in]; ``b_dec`` [d_in] (the SAELens convention). Every training loss is
built on the batch FVU (squared error over the batch's total variance), so it does not depend on
the scale of the activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from mechflow.kernels import sparse_decode, topk_encode
from mechflow.runconfig import Check, RunConfig, config_fields, option

ARCH_DOC = "architecture (each has its own options below)"


@dataclass(frozen=True, kw_only=True)
class SAERunConfig(RunConfig):
    """The keys every SAE run takes (config ``sae.runs.<name>``); each architecture's config adds its own.

    ``NEEDS_K``: the architecture uses ``k`` (then ``k <= n_features`` is checked).
    """

    LABEL: ClassVar[str] = "sae run"
    NEEDS_K: ClassVar[bool] = False
    CHECKS: ClassVar[tuple[Check, ...]] = (
        Check("k", "k <= n_features (architectures that use k)", lambda c: c.k <= c.n_features,
              "k={k} is larger than n_features={n_features}; expected 1 <= k <= n_features",
              applies=lambda cls: cls.NEEDS_K),
        Check("warmup", "warmup + decay <= 1", lambda c: c.warmup + c.decay <= 1,
              "warmup + decay must be <= 1, got {warmup} + {decay}"),
        Check("shuffle_window", "shuffle_block <= shuffle_window", lambda c: c.shuffle_block <= c.shuffle_window,
              "shuffle_window ({shuffle_window}) must be >= shuffle_block ({shuffle_block})"),
    )

    arch: str = option("topk", ARCH_DOC)
    n_features: int = option(4096, "dictionary size (d_sae)", minimum=1)
    k: int = option(32, "active latents per sample (topk, batchtopk, matryoshka; batch average for the last two) or "
                        "pursuit steps (mp), at most n_features; other architectures ignore it", minimum=1)
    steps: int = option(2000, "optimiser steps", minimum=1)
    batch_size: int = option(256, "samples per minibatch", minimum=1)
    lr: float = option(1e-3, "Adam peak learning rate", exclusive_minimum=0)
    seed: int = option(0, "seed of the initialisation and of the (seed, step) -> minibatch schedule", minimum=0)
    checkpoint_every: int = option(500, "steps between checkpoints (0: none); a killed run resumes from the last one",
                                   minimum=0)
    keep_checkpoints: bool = option(False, "keep the checkpoints of a finished run (by default they are removed once "
                                           "its outputs are written); a checkpoint is resumed only by a run with the "
                                           "same settings, input data and code")
    warmup: float = option(0.05, "fraction of steps with a linear learning-rate warm-up from 0", minimum=0,
                           exclusive_maximum=1)
    decay: float = option(0.2, "fraction of final steps with a linear learning-rate decay to 0", minimum=0,
                          exclusive_maximum=1)
    grad_clip: float = option(1.0, "max global gradient norm (0: no clipping)", minimum=0)
    adam_betas: tuple[float, float] = option((0.9, 0.999), "Adam (beta1, beta2)", minimum=0, exclusive_maximum=1)
    log_every: int = option(10, "steps between rows of training.nc (metrics averaged over the interval)", minimum=1)
    normalize_activations: Literal["none", "expected_average_only_in"] = option(
        "expected_average_only_in", "expected_average_only_in scales inputs so E||x||^2 = d_in during training "
        "(folded into the saved weights); none leaves them as they are")
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = option(
        "geometric_median", "initial decoder bias: geometric median, mean or zeros of a data sample")
    dead_after: int = option(100_000, "a latent that has not fired for this many samples counts as dead (AuxK, "
                                      "dead_fraction)", minimum=1)
    shuffle_window: int = option(65_536, "rows held in memory at once while shuffling (bounds memory for files "
                                         "larger than RAM)", minimum=1)
    shuffle_block: int = option(256, "contiguous rows read together (match the file's chunking)", minimum=1)
    device: str = option("auto", "auto (cuda when present), cpu, cuda or cuda:<i>",
                         pattern="^(auto|cpu|cuda(:[0-9]+)?)$")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The architecture's own keys (those beyond :class:`SAERunConfig`)."""
        common = {f.name for f in config_fields(SAERunConfig)}
        return tuple(f.name for f in config_fields(cls) if f.name not in common)

    def options(self) -> dict[str, Any]:
        """The architecture's own keys with their values (plain data)."""
        full = self.to_dict()
        return {name: full[name] for name in self.option_names()}


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


def warm(coef: float, warmup: float, step: int, total_steps: int) -> float:
    """Coefficient ramped linearly over the first ``warmup`` fraction of training."""
    n = warmup * total_steps
    return float(coef) * (1.0 if n <= 0 else min(1.0, (step + 1) / n))


def fired_from_sparse(vals: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """[n] bool: latents with a positive value among the sparse codes ``vals`` / ``idx`` [batch, k]."""
    fired = torch.zeros(n, dtype=torch.bool, device=vals.device)
    fired[idx[vals > 0]] = True
    return fired


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
        return {"W_enc": self.W_enc.detach(), "b_enc": self.b_enc.detach(), "W_dec": self.W_dec.detach(),
                "b_dec": self.b_dec.detach()}

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
