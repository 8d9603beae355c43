"""Matching-pursuit SAE (Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse
Representations with Matching Pursuit")."""

from __future__ import annotations

from typing import Any

import torch

from mechflow.sae.archs.base import SparseAutoencoder, reconstruction_only
from mechflow.sae.configs.mp import MPConfig


class MPSAE(SparseAutoencoder):
    """Matching-pursuit SAE (Costa et al. 2025): the encoder is ``mp_steps`` unrolled greedy steps.

    Each step picks the decoder atom with the largest inner product with the residual, adds that
    (non-negative) coefficient to the atom's activation and subtracts its contribution from the
    residual. The encoder uses the decoder atoms (``W_enc`` is kept equal to ``W_dec.T``); only the
    decoder is exported, as SAELens's decoder-only ``matching_pursuit`` architecture.
    """

    config_cls = MPConfig

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        self.steps = int(self.opts["mp_steps"] or self.k)
        self.W_enc.requires_grad_(False)
        self.b_enc.requires_grad_(False)

    def _pursuit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        resid = x - self.b_dec
        acts = x.new_zeros(x.shape[0], self.n_features)
        for _ in range(self.steps):
            coef, j = (resid @ self.W_dec.T).max(1)
            coef = coef.relu()
            # embedding, not W_dec[j]: its backward adds in a fixed order (index_put_ uses atomic adds)
            resid = resid - coef[:, None] * torch.nn.functional.embedding(j, self.W_dec)
            acts = acts.scatter_add(1, j[:, None], coef[:, None])
        return acts, x - resid

    def encode(self, x):
        return self._pursuit(x)[0]

    def training_loss(self, x, step, total_steps, dead):
        acts, recon = self._pursuit(x)
        return reconstruction_only(x, acts, recon)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        self.W_enc.copy_(self.W_dec.T)

    @torch.no_grad()
    def fold_scaling(self, scale: float) -> None:
        """Pursuit on ``x / scale`` picks the same atoms with coefficients / scale: only b_dec moves."""
        self.b_dec.div_(scale)

    def export_tensors(self):
        """Decoder only, as SAELens's ``matching_pursuit`` architecture stores it (the encoder is ``W_dec.T``)."""
        return {"W_dec": self.W_dec.detach(), "b_dec": self.b_dec.detach()}

    @torch.no_grad()
    def load_export(self, tensors):
        super().load_export(tensors)
        self.W_enc.copy_(self.W_dec.T)

    def sae_lens_fields(self):
        """SAELens ``matching_pursuit``: exactly ``mp_steps`` greedy steps (no residual threshold, no early stop)."""
        return {"architecture": "matching_pursuit", "max_iterations": self.steps, "residual_threshold": 0.0,
                "stop_on_duplicate_support": False, "k": self.steps, "activation_fn_str": "matching_pursuit",
                "activation_fn_kwargs": {"k": self.steps}}
