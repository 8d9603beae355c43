"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), with AuxK for dead latents."""

from __future__ import annotations

import torch

from mechflow.kernels import topk_encode
from mechflow.sae.archs.base import SparseAutoencoder
from mechflow.sae.configs.topk import TopKConfig


class TopKSAE(SparseAutoencoder):
    """TopK SAE with AuxK for dead latents (Gao et al. 2024), via the fused sparse kernels."""

    config_cls = TopKConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        vals, idx = topk_encode(x - self.b_dec, self.W_enc, self.b_enc, self.k)
        return torch.zeros(x.shape[0], self.n_features, dtype=vals.dtype, device=vals.device).scatter_(1, idx, vals)

    def training_loss(self, x, step, total_steps, dead):
        return self._topk_step(x, self.k, dead)[0]

    def sae_lens_fields(self):
        return {"architecture": "topk", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": self.k}, "k": self.k,
                "rescale_acts_by_decoder_norm": False}
