"""The run config every SAE run takes, and the base class of every architecture.

Shapes: ``x`` [batch, d_in]; ``W_enc`` [d_in, n_features]; ``b_enc`` [n_features];
``W_dec`` [n_features, d_in]; ``b_dec`` [d_in] (the SAELens convention). Every training loss is
built on the batch FVU (squared error over the batch's total variance), so it does not depend on
the scale of the activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from mechflow.devices import DEVICE_PATTERN
from mechflow.kernels import sparse_decode, topk_encode
from mechflow.runconfig import Check, RunConfig, config_fields, option
from mechflow.sae.defaults import RunContext, dead_window, default_lr

ARCH_DOC = "architecture (each has its own options below)"


@dataclass(frozen=True, kw_only=True)
class SAERunConfig(RunConfig):
    """The keys every SAE run takes (config ``sae.runs.<name>``); each architecture's config adds its own.

    ``NEEDS_K``: the model needs ``k`` (topk, batchtopk, mp, matryoshka; ``k <= n_features`` is checked);
    ``USES_K``: the architecture uses ``min(k, n_features)`` as the target of its derived sparsity
    settings (relu, jumprelu, gba), so the default k also serves small dictionaries.
    """

    LABEL: ClassVar[str] = "sae run"
    NEEDS_K: ClassVar[bool] = False
    USES_K: ClassVar[bool] = False
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
    k: int = option(32, "active latents per sample: exact (topk), batch average (batchtopk, matryoshka), pursuit steps "
                        "(mp), at most n_features for these; the L0 the sparsity coefficient is adapted to (relu, "
                        "jumprelu, when l1_coef / l0_coef is null), the mean firing frequency k / n_features the "
                        "group targets are set around (gba, when gba_freq_max / gba_freq_min are null), with k "
                        "capped at n_features for these", minimum=1)
    steps: int = option(2000, "optimiser steps", minimum=1)
    batch_size: int = option(256, "samples per minibatch", minimum=1)
    lr: float | None = option(None, "Adam peak learning rate (null: derived, lr_base * sqrt(64 / d_in) with the "
                                    "architecture's lr_base: 8e-3, 4e-3 for relu, 1.6e-2 for gba; see "
                                    "mechflow.sae.defaults)",
                              exclusive_minimum=0)
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
    val_fraction: float = option(0.0, "fraction of the rows held out for validation (whole shuffle_block blocks drawn "
                                      "by seed; 0: none): FVU, L0, dead and dense fractions on them and on training "
                                      "rows are recorded every val_every steps and at the end", minimum=0,
                                 exclusive_maximum=1)
    val_every: int | None = option(None, "steps between validation evaluations (null: the multiple of log_every "
                                         "nearest steps / 20); the last step is always evaluated", minimum=1)
    normalize_activations: Literal["none", "expected_average_only_in"] = option(
        "expected_average_only_in", "expected_average_only_in scales inputs so E||x||^2 = d_in during training "
        "(folded into the saved weights); none leaves them as they are")
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = option(
        "geometric_median", "initial decoder bias: geometric median, mean or zeros of a data sample")
    dead_after: int | None = option(None, "a latent that has not fired for this many samples counts as dead (AuxK, "
                                          "JumpReLU's pre-activation loss, dead_fraction); null: derived from the run, "
                                          "steps * batch_size / 400 clamped to [4 * batch_size, min(10M, n_rows)] "
                                          "(see mechflow.sae.defaults)", minimum=1)
    shuffle_window: int = option(65_536, "rows held in memory at once while shuffling (bounds memory for files "
                                         "larger than RAM)", minimum=1)
    shuffle_block: int = option(256, "contiguous rows read together (match the file's chunking)", minimum=1)
    device: str = option("auto", "auto (cuda when present), cpu, cuda or cuda:<i>",
                         pattern=DEVICE_PATTERN)

    #: ``lr`` when the run leaves it null: ``LR_BASE * sqrt(64 / d_in)`` (:func:`mechflow.sae.defaults.default_lr`)
    LR_BASE: ClassVar[float] = 8e-3

    def resolve(self, n_rows: int, d_in: int) -> dict[str, Any]:
        """The complete run with every derived (null) key replaced by its value for data of ``n_rows`` x ``d_in``
        (formulas: :mod:`mechflow.sae.defaults`); keys the run sets are kept as they are."""
        run = self.to_dict()
        ctx = RunContext(steps=self.steps, batch_size=self.batch_size, n_rows=int(n_rows), d_in=int(d_in),
                         n_features=self.n_features, k=min(self.k, self.n_features))
        if run["lr"] is None:
            run["lr"] = default_lr(self.LR_BASE, d_in)
        if run["dead_after"] is None:
            run["dead_after"] = dead_window(ctx)
        run.update(self.derive_options(ctx))
        return run

    def derive_options(self, ctx: RunContext) -> dict[str, Any]:
        """Values of this architecture's null (derived) options for ``ctx``; only keys left null."""
        return {}

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
