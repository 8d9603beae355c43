"""The run config every SAE run takes (no torch: a study's runs are validated without loading it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from mechflow.devices import DEVICE_PATTERN
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
                                    "architecture's lr_base: 8e-3, 4e-3 for relu, 1.6e-2 for gba without its TopK warm "
                                    "start; see mechflow.sae.defaults)",
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
