"""ReLU SAE with an L1 penalty (Bricken et al. 2023, "Towards Monosemanticity"; decoder-norm-weighted
L1 as in Anthropic's April 2024 update)."""

from __future__ import annotations

from dataclasses import dataclass

from mechflow.runconfig import option
from mechflow.sae.archs.base import ARCH_DOC, LossOut, SAERunConfig, SparseAutoencoder, batch_fvu, warm


@dataclass(frozen=True, kw_only=True)
class ReLUConfig(SAERunConfig):
    """Options of a ReLU SAE: the L1 penalty and its warm-up."""

    arch: str = option("relu", ARCH_DOC)
    l1_coef: float = option(5.0, "weight of the L1 penalty (activations x decoder row norms, relative to the batch's "
                                 "RMS input norm)", minimum=0)
    l1_warmup: float = option(0.05, "fraction of steps over which the L1 weight ramps up linearly from 0", minimum=0,
                              maximum=1)


class ReLUSAE(SparseAutoencoder):
    """ReLU SAE with an L1 penalty weighted by decoder row norms and a linear L1 warm-up."""

    config_cls = ReLUConfig
    unit_norm_decoder = False

    def encode(self, x):
        return self.pre_acts(x).relu()

    def training_loss(self, x, step, total_steps, dead):
        acts = self.encode(x)
        recon = self.decode(acts)
        fvu = batch_fvu(x, recon)
        scale = (x - x.mean(0, keepdim=True)).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        l1 = (acts * self.W_dec.norm(dim=1)).sum(1).mean() / scale
        loss = fvu + warm(self.opts["l1_coef"], self.opts["l1_warmup"], step, total_steps) * l1
        active = acts > 0
        return LossOut(loss, float(fvu.detach()), float(active.sum(1).float().mean()), active.any(0))
