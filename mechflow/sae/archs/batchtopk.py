"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders")."""

from __future__ import annotations

from typing import Any

import torch

from mechflow.sae.archs.base import SparseAutoencoder, batch_fvu, dense_loss_out
from mechflow.sae.configs.batchtopk import BatchTopKConfig


class BatchTopKSAE(SparseAutoencoder):
    """BatchTopK (Bussmann et al. 2024): the ``k * batch`` largest activations of the batch are kept.

    Trained like TopK (same learning rate) with the AuxK loss of Gao et al. (2024) on dead latents.
    With one threshold for the whole batch, a latent whose activations stay below it gets no
    gradient at all (TopK instead fills every sample's k slots, so every latent keeps some): such
    dormant latents fire too seldom to learn, and the rare, weak features are the ones lost
    (docs/sae_results.md). So the first ``topk_warmup`` fraction of the steps (default 9/10) keeps
    the k largest activations of every sample (a TopK SAE), and the rest keeps the ``k * batch``
    largest of the batch, which sets the inference threshold; ``topk_warmup=0`` is the paper's
    BatchTopK from the first step. AuxK weight: 1/8 by default (``auxk_coef`` null).

    Inference uses a single threshold, an exponential moving average of the smallest kept
    activation per training batch, so it is a JumpReLU with one shared threshold.
    """

    config_cls = BatchTopKConfig

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        self.register_buffer("threshold", torch.full((n_features,), -1.0))

    def encode(self, x):
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold.clamp_min(0))

    def per_sample_phase(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` is in the per-sample TopK phase (the first ``topk_warmup`` fraction of the steps)."""
        return step < int(float(self.opts["topk_warmup"]) * total_steps)

    def _batch_topk(self, pre: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        if per_sample:  # TopK phase: k per sample; the inference threshold is not tracked yet
            vals, idx = pre.topk(min(self.k, pre.shape[1]), dim=1)
            return torch.zeros_like(pre).scatter(1, idx, vals.relu())
        acts = pre.relu()
        flat = acts.flatten()
        vals, idx = flat.topk(min(self.k * acts.shape[0], flat.numel()), sorted=False)
        out = torch.zeros_like(flat).scatter(0, idx, vals).view_as(acts)
        with torch.no_grad():
            pos = vals[vals > 0]
            if pos.numel():
                m = float(self.opts["threshold_momentum"])
                new = pos.min()
                first = bool(self.threshold[0] < 0)
                self.threshold.copy_(new.expand_as(self.threshold) if first else m * self.threshold + (1 - m) * new)
        return out

    def training_loss(self, x, step, total_steps, dead):
        xc = x - self.b_dec
        acts = self._batch_topk(xc @ self.W_enc + self.b_enc, self.per_sample_phase(step, total_steps))
        recon = self.decode(acts)
        fvu = batch_fvu(x, recon)
        loss = fvu + self._auxk(xc, x - recon, dead)
        return dense_loss_out(loss, fvu, acts)

    def export_tensors(self):
        return {**super().export_tensors(), "threshold": self.threshold.clamp_min(0).detach()}

    def sae_lens_fields(self):
        return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {}, "k": self.k,
                "trained_as": "batchtopk"}
