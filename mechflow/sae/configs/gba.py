"""Run config of a Group Bias Adaptation SAE (Chen et al. 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mechflow.runconfig import Check, option
from mechflow.sae.configs.base import ARCH_DOC, SAERunConfig
from mechflow.sae.defaults import RunContext, default_lr, gba_frequencies, gba_interval, gba_rate


@dataclass(frozen=True, kw_only=True)
class GBAConfig(SAERunConfig):
    """Options of a GBA SAE: the groups' target firing frequencies, the bias rule and the TopK warm start. Null values
    are derived from the run (steps, batch_size, k / n_features: :mod:`mechflow.sae.defaults`); the paper's constants
    (0.5 to 1e-3, interval 50, rate 0.01) are set for runs of ~10^5 steps."""

    USES_K: ClassVar[bool] = True
    LR_BASE: ClassVar[float] = 1.6e-2
    CHECKS: ClassVar[tuple[Check, ...]] = SAERunConfig.CHECKS + (
        Check("gba_freq_min", "gba_freq_min <= gba_freq_max",
              lambda c: c.gba_freq_min is None or c.gba_freq_max is None or c.gba_freq_min <= c.gba_freq_max,
              "gba_freq_min ({gba_freq_min}) must be <= gba_freq_max ({gba_freq_max})"),
    )

    arch: str = option("gba", ARCH_DOC)
    gba_groups: int = option(10, "groups of latents with geometrically spaced target frequencies (at most "
                                 "n_features are used)", minimum=1)
    gba_freq_max: float | None = option(None, "target firing frequency of the first group (null: min(0.5, 4 k / "
                                              "n_features))", exclusive_minimum=0, maximum=1)
    gba_freq_min: float | None = option(None, "target firing frequency of the last group (null: max(k / (8 n_features), "
                                              "4 / samples per bias update), at most gba_freq_max)", exclusive_minimum=0,
                                        maximum=1)
    gba_interval: int | None = option(None, "steps between bias updates (null: max(ceil(1280 / batch_size), "
                                            "round(steps / 2000)))", minimum=1)
    gba_rate: float | None = option(None, "bias update rate gamma (null: clamp(20 / bias updates, 0.01, 0.1), the "
                                          "paper's 0.01 x 2000 updates)", exclusive_minimum=0, maximum=1)
    gba_eps: float = option(0.0, "a latent firing at most this often counts as silent (its bias rises)", minimum=0,
                            maximum=1)
    gba_topk_warmup: float = option(0.9, "fraction of steps trained as an untied TopK SAE (k, with AuxK, at TopK's "
                                         "lr_base 8e-3 when lr is null) before the bias rule: the dictionary is that "
                                         "phase's and is kept, the groups are ranked by the latents' TopK firing "
                                         "frequencies, the biases start at minus the mean k-th largest tied "
                                         "pre-activation and the GBA phase fits them and the output scales (0: the "
                                         "paper's GBA from the start, lr_base 1.6e-2)", minimum=0,
                                    exclusive_maximum=1)
    auxk_coef: float = option(1 / 32, "weight of the AuxK loss of Gao et al. 2024 in the TopK phase (0: off)", minimum=0)

    def derive_options(self, ctx: RunContext) -> dict[str, Any]:
        interval = self.gba_interval if self.gba_interval is not None else gba_interval(ctx)
        f_max, f_min = gba_frequencies(ctx, interval)
        if self.gba_freq_max is not None:
            f_max = self.gba_freq_max
            f_min = min(f_min, f_max)
        if self.gba_freq_min is not None:
            f_min = self.gba_freq_min
            f_max = max(f_max, f_min)
        out: dict[str, Any] = {}
        if self.lr is None and self.gba_topk_warmup > 0:  # the TopK phase trains at TopK's lr_base
            out["lr"] = default_lr(SAERunConfig.LR_BASE, ctx.d_in)
        return {**out, "gba_interval": interval, "gba_rate": self.gba_rate if self.gba_rate is not None else gba_rate(ctx, interval),
                "gba_freq_max": f_max, "gba_freq_min": f_min}
