"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), with AuxK for dead latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mechflow.kernels import sparse_decode, topk_encode
from mechflow.runconfig import option
from mechflow.sae.archs.base import ARCH_DOC, LossOut, SAERunConfig, SparseAutoencoder, batch_fvu, counts_from_sparse
from mechflow.sae.defaults import RunContext


@dataclass(frozen=True, kw_only=True)
class TopKConfig(SAERunConfig):
    """Options of a TopK SAE: the AuxK loss on dead latents (Gao et al. 2024)."""

    NEEDS_K: ClassVar[bool] = True

    arch: str = option("topk", ARCH_DOC)
    #: auxk_coef when the run leaves it null
    AUXK_DEFAULT: ClassVar[float] = 1 / 32

    auxk_coef: float | None = option(None, "weight of the AuxK loss (dead latents reconstruct the residual; 0: off; "
                                           "null: 1/32 for topk as in Gao et al. 2024, 1/8 for batchtopk and "
                                           "matryoshka)", minimum=0)
    k_aux: int | None = option(None, "dead latents used by AuxK (null: d_in / 2)", minimum=1)

    def derive_options(self, ctx: RunContext) -> dict[str, Any]:
        return {} if self.auxk_coef is not None else {"auxk_coef": self.AUXK_DEFAULT}


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
