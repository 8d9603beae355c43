"""Run config of a JumpReLU SAE (Rajamanoharan et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mechflow.runconfig import option
from mechflow.sae.configs.base import ARCH_DOC, SAERunConfig


@dataclass(frozen=True, kw_only=True)
class JumpReLUConfig(SAERunConfig):
    """Options of a JumpReLU SAE: the L0 penalty (fixed, or adapted to an L0 of ``k``), its warm-up, the STE
    bandwidth, the initial threshold, the pre-activation loss on dead latents."""

    USES_K: ClassVar[bool] = True

    arch: str = option("jumprelu", ARCH_DOC)
    l0_coef: float | None = option(None, "weight of the L0 penalty (expected active latents per sample); null: adapted "
                                         "every step so the batch L0 reaches k (starting at 0.01; see "
                                         "mechflow.sae.defaults)", minimum=0)
    l0_warmup: float = option(0.05, "fraction of steps over which a fixed L0 weight ramps up linearly from 0", minimum=0,
                              maximum=1)
    bandwidth: float = option(0.05, "width of the rectangle kernel of the straight-through threshold gradient",
                              exclusive_minimum=0)
    init_threshold: float | None = option(None, "initial threshold of every latent (null: each latent's (1 - k / "
                                                "n_features) quantile of its initial pre-activations on a data "
                                                "sample, so the run starts at an L0 of about k)", exclusive_minimum=0)
    topk_warmup: float = option(0.9, "fraction of steps trained as a TopK SAE (k, with AuxK) before the JumpReLU "
                                    "phase, whose thresholds start at the TopK phase's mean k-th largest "
                                    "pre-activation (0: JumpReLU from the start)", minimum=0, exclusive_maximum=1)
    jump_decoder: bool = option(False, "train the decoder in the JumpReLU phase after a TopK phase (false: the TopK "
                                       "phase's dictionary is kept and the phase fits encoder, biases and thresholds "
                                       "to it; a decoder trained on threshold codes, which fire on other features' "
                                       "interference, loses the rarer features: see mechflow.sae.defaults)")
    auxk_coef: float = option(1 / 32, "weight of the AuxK loss of Gao et al. 2024 in the TopK phase (the top k_aux "
                                      "dead latents' pre-activations reconstruct the residual; 0: off)", minimum=0)
    k_aux: int | None = option(None, "dead latents used by AuxK (null: d_in / 2)", minimum=1)
    threshold_lr_scale: float = option(0.1, "learning rate of log_threshold relative to lr: Adam moves each log "
                                            "threshold by about lr x this per step", exclusive_minimum=0)
    preact_coef: float = option(0.01, "weight of the pre-activation loss on dead latents, mean over the batch of "
                                     "sum_dead relu(threshold - pre) x decoder norm / RMS input norm: it raises a dead "
                                     "latent's pre-activations until it fires again (0: off)", minimum=0)
