"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), with AuxK for dead latents."""

from __future__ import annotations

import torch

from mechflow.kernels import sparse_decode, topk_encode
from mechflow.sae.archs.base import LossOut, SparseAutoencoder, batch_fvu, counts_from_sparse
from mechflow.sae.configs.topk import TopKConfig


class TopKSAE(SparseAutoencoder):
    """TopK SAE with AuxK for dead latents (Gao et al. 2024), via the fused sparse kernels."""

    config_cls = TopKConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        vals, idx = topk_encode(x - self.b_dec, self.W_enc, self.b_enc, self.k)
        return torch.zeros(x.shape[0], self.n_features, dtype=vals.dtype, device=vals.device).scatter_(1, idx, vals)

    def training_loss(self, x, step, total_steps, dead):
        xc = x - self.b_dec
        vals, idx = topk_encode(xc, self.W_enc, self.b_enc, self.k)
        recon = sparse_decode(vals, idx, self.W_dec, self.b_dec)
        fvu = batch_fvu(x, recon)
        loss = fvu + self._auxk(xc, x - recon, dead)
        l0 = float((vals > 0).sum(1).float().mean())
        counts = counts_from_sparse(vals, idx, self.n_features)
        return LossOut(loss, float(fvu.detach()), l0, counts > 0, counts)

    def sae_lens_fields(self):
        return {"architecture": "topk", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": self.k}, "k": self.k,
                "rescale_acts_by_decoder_norm": False}
