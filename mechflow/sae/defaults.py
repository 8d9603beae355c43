"""Defaults that adapt to the run: the values of the run keys left ``null``.

A run key whose default is ``null`` and whose doc says *derived* gets its value here, from the run
(``steps``, ``batch_size``, ``n_features``, ``k``) and the data (``n_rows``, ``d_in``), when training
starts (:meth:`mechflow.sae.configs.base.SAERunConfig.resolve`). A value given in the run is used as it
is. The trained model records both: ``model.run`` (the run as given) and ``model.resolved`` (every
value used); cfg.json carries both too. The formulas, with ``S = steps * batch_size`` the samples seen:

* ``lr = lr_base * sqrt(64 / d_in)``. Adam moves every weight by about ``lr`` per step, so a unit-norm
  row of ``d_in`` weights turns by about ``lr * sqrt(d_in)`` radians: the same turn per step at any
  width. ``lr_base`` is the architecture's: 8e-3; 4e-3 for ReLU (its decoder norms are free);
  1.6e-2 for GBA without its TopK warm start (see below).
* ``dead_after = clamp(S / 400, 4 * batch_size, min(10M, n_rows))`` samples: a latent silent for
  1/400 of the run counts as dead (AuxK, JumpReLU's pre-activation loss). Never under 4 batches
  (the BatchTopK reference uses 5), never over one pass over the data (a latent silent on every row
  is dead) nor Gao et al.'s 10M tokens.
* ``auxk_coef`` (TopK family) ``= 1/32`` (Gao et al. 2024) for TopK; 1/8 for BatchTopK and
  Matryoshka, whose shared batch threshold leaves more latents dormant.
* sparsity controller (ReLU ``l1_coef``, JumpReLU ``l0_coef`` null): the coefficient is adapted every
  step, ``log c += rate * clamp(log(L0 / k), -1, 1)`` with ``rate = clamp(20 / steps, 1e-4, 1e-2)``,
  so the batch L0 settles at ``k`` within the first few percent of any run length.
* JumpReLU after its TopK phase (``topk_warmup`` 0.9, ``jump_decoder`` false): the dictionary is the TopK
  phase's; the JumpReLU phase fits the encoder, biases and thresholds to it. A threshold gate has no
  competition between latents, so a latent also fires where another feature's interference lifts its
  pre-activation above its threshold; a decoder trained on those codes turns towards the features it
  wrongly fires on, and the rarer features are lost first. Measured at 6,000 steps (the generator
  families of :mod:`mechflow.sae.synthetic`): with a 3/4 TopK phase and the decoder trained, MMCS fell
  from 0.929 at the switch to 0.777 on ``exp-d48`` (rarest quarter 0.77 -> 0.44), 0.848 on
  ``zipf-d64-x2``, against TopK's 0.950 / 0.975; per-latent switch thresholds (each latent's TopK firing
  frequency) did not help (0.728 / 0.817), nor a multiplier kept >= 0 (0.775); the decoder kept from the
  switch held 0.920; a 9/10 TopK phase with the decoder kept gives 0.943 / 0.970.
* GBA (Chen et al. 2025): the bias rule runs every ``gba_interval = max(ceil(1280 / batch_size),
  round(steps / 2000))`` steps (>= 1,280 samples per window to measure a firing frequency, at most
  2,000 updates as in the paper's 1e5-step runs at interval 50), at rate ``gba_rate = clamp(20 /
  updates, 0.01, 0.1)`` (the paper's 0.01 x 2,000 updates: the same total bias movement). The group
  targets span ``gba_freq_max = min(0.5, 4 k / n_features)`` down to ``gba_freq_min =
  max(k / (8 n_features), 4 / window)`` (``window``: samples per interval, so the lowest target is
  still measurable), around the mean latent frequency ``k / n_features`` of an L0 of ``k``: the
  paper's 0.5 leaves most groups far above every feature's frequency, and their latents fire for
  several features at once (MMCS 0.61 / 0.42 against 0.88 / 0.91 on two of the benchmark's
  generators at 2,000 steps). GBA's ``lr_base`` is 1.6e-2 with ``gba_topk_warmup`` 0: only its decoder
  and output scales learn, and at 8e-3 a 2,000-step run ends before they settle (0.82 / 0.86 on the
  same two). By default (``gba_topk_warmup`` 0.9) the first 9/10 of the steps train an untied TopK SAE
  (AuxK, TopK's lr_base 8e-3) whose dictionary is kept; the bias rule then fits the gates and output
  scales to it, with the groups ranked by the TopK phase's firing frequencies and the biases starting at
  minus the mean k-th largest tied pre-activation. From the start, the rule keeps every latent at about
  its group's target whatever its feature's frequency, and the rarest features (the last groups'
  targets are above their frequencies, the first groups' capped latents split the frequent ones) were
  missed: 6,000 steps on the generator families gave 0.887 / 0.754 / 0.901 on ``exp-d48`` /
  ``zipf-d128-const`` / ``zipf-d64-x2`` (rarest quarter 0.63 on ``exp-d48``); with the warm start
  0.943 / 0.959 / 0.970 (rarest quarter 0.80 / 0.89 / 0.94), with the held-out FVU of the tied
  encoder at 0.31 / 0.35 / 0.59 (0.31 / 0.29 / 0.32 before: a wide TopK dictionary read through its
  decoder rows counts split features twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RunContext:
    """What the derived defaults depend on: the run's length and sizes and the data's."""

    steps: int
    batch_size: int
    n_rows: int
    d_in: int
    n_features: int
    k: int

    @property
    def samples(self) -> int:
        """Samples seen over the run."""
        return self.steps * self.batch_size


#: the reference width of ``lr_base``
LR_REF_WIDTH = 64
#: a latent silent for this fraction of the run's samples counts as dead
DEAD_FRACTION = 1 / 400
#: dead window bounds: at least this many batches, at most this many samples (Gao et al.'s 10M tokens)
DEAD_MIN_BATCHES = 4
DEAD_MAX_SAMPLES = 10_000_000
#: GBA: samples per bias-update window at least; bias updates per run at most; the paper's rate x updates
GBA_MIN_WINDOW = 1280
GBA_MAX_UPDATES = 2000
GBA_TOTAL_RATE = 20.0


def default_lr(lr_base: float, d_in: int) -> float:
    """``lr_base * sqrt(64 / d_in)``: the same turn of a unit-norm row per Adam step at any width."""
    return float(lr_base) * math.sqrt(LR_REF_WIDTH / max(int(d_in), 1))


def dead_window(ctx: RunContext) -> int:
    """Samples without a firing after which a latent counts as dead: ``clamp(S / 400, 4 B, min(10M, n_rows))``."""
    lo = DEAD_MIN_BATCHES * ctx.batch_size
    hi = max(lo, min(DEAD_MAX_SAMPLES, ctx.n_rows))
    return int(min(max(round(ctx.samples * DEAD_FRACTION), lo), hi))


def controller_rate(steps: int) -> float:
    """Step size of the log-coefficient controller of ReLU / JumpReLU: ``clamp(20 / steps, 1e-4, 1e-2)``."""
    return float(min(max(20.0 / max(steps, 1), 1e-4), 1e-2))


def gba_interval(ctx: RunContext) -> int:
    """Steps between GBA bias updates: ``max(ceil(1280 / B), round(steps / 2000))``."""
    return int(max(math.ceil(GBA_MIN_WINDOW / ctx.batch_size), round(ctx.steps / GBA_MAX_UPDATES), 1))


def gba_rate(ctx: RunContext, interval: int) -> float:
    """GBA bias update rate: ``clamp(20 / updates, 0.01, 0.1)`` with ``updates = steps / interval``."""
    updates = max(ctx.steps / interval, 1.0)
    return float(min(max(GBA_TOTAL_RATE / updates, 0.01), 0.1))


def gba_frequencies(ctx: RunContext, interval: int) -> tuple[float, float]:
    """GBA group targets (max, min): ``min(0.5, 4 k / n)`` and ``max(k / (8 n), 4 / window)``, min <= max."""
    mean = ctx.k / ctx.n_features
    f_max = min(0.5, 4 * mean)
    f_min = max(mean / 8, 4.0 / (interval * ctx.batch_size))
    return float(f_max), float(min(f_min, f_max))


__all__ = ["RunContext", "controller_rate", "dead_window", "default_lr", "gba_frequencies", "gba_interval", "gba_rate"]
