"""ReLU SAE with an L1 penalty (Bricken et al. 2023, "Towards Monosemanticity"; decoder-norm-weighted
L1 as in Anthropic's April 2024 update)."""

from __future__ import annotations

from typing import Any

import torch

from mechflow.sae.archs.base import SparseAutoencoder, SparsityController, batch_fvu, dense_loss_out, warm
from mechflow.sae.configs.relu import ReLUConfig
from mechflow.sae.defaults import controller_rate

#: initial coefficient of the L1 controller (a null l1_coef)
L1_INIT = 0.1


class ReLUSAE(SparseAutoencoder):
    """ReLU SAE with an L1 penalty weighted by decoder row norms.

    A fixed ``l1_coef`` ramps up linearly over ``l1_warmup``; a null one is adapted during training by
    a :class:`~mechflow.sae.archs.base.SparsityController` so the batch L0 settles at ``k``.
    """

    config_cls = ReLUConfig
    unit_norm_decoder = False

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        self.controller = SparsityController(L1_INIT, self.target_l0(), 0.0) if self.opts["l1_coef"] is None else None

    @torch.no_grad()
    def init_from_data(self, sample):
        """With a null l1_coef: ``b_enc`` so that each latent starts firing on a fraction k / n_features of the rows."""
        if self.controller is not None:
            self.b_enc.copy_(-self.firing_quantile(sample))

    def encode(self, x):
        return self.pre_acts(x).relu()

    def training_loss(self, x, step, total_steps, dead):
        acts = self.encode(x)
        recon = self.decode(acts)
        fvu = batch_fvu(x, recon)
        scale = (x - x.mean(0, keepdim=True)).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        l1 = (acts * self.W_dec.norm(dim=1)).sum(1).mean() / scale
        if self.controller is None:
            coef = warm(self.opts["l1_coef"], self.opts["l1_warmup"], step, total_steps)
        else:
            coef = self.controller.coef
        loss = fvu + coef * l1
        out = dense_loss_out(loss, fvu, acts)
        if self.controller is not None:
            self.controller.update(out.l0, controller_rate(total_steps))
        return out
