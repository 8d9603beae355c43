"""Matryoshka SAE (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka Sparse Autoencoders")."""

from __future__ import annotations

from typing import Any

from mechflow.sae.archs.base import batch_fvu, dense_loss_out
from mechflow.sae.archs.batchtopk import BatchTopKSAE
from mechflow.sae.configs.matryoshka import MatryoshkaConfig


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka SAE (Bussmann et al. 2025): nested dictionary prefixes each reconstruct the input.

    Activations come from BatchTopK; the loss is ``w FVU(full) + (1 - w) mean_m FVU(W_dec[:m])`` over
    the nested prefixes ``m`` in ``matryoshka_prefixes`` (fractions of n_features), plus AuxK, with
    ``w = matryoshka_full_weight``. The paper sums the prefix losses with the full one (``w`` = 1 /
    (prefixes + 1)); at that weight the small prefixes pull their latents towards mixtures of
    co-occurring features on data without hierarchy (MMCS 0.85 on zipf-d96 at 2,000 steps), at
    ``w`` = 0.75 the full dictionary's reconstruction leads and the prefixes still order the latents
    (0.93; docs/sae_results.md).
    """

    config_cls = MatryoshkaConfig

    def __init__(self, d_in: int, n_features: int, k: int | None = None, **opts: Any):
        super().__init__(d_in, n_features, k, **opts)
        fr = [float(f) for f in self.opts["matryoshka_prefixes"]]
        self.prefixes = sorted({max(1, round(f * n_features)) for f in fr} | {n_features})

    def training_loss(self, x, step, total_steps, dead):
        xc = x - self.b_dec
        acts = self._batch_topk(xc @ self.W_enc + self.b_enc, self.per_sample_phase(step, total_steps))
        recon = self.b_dec.expand_as(x)
        nested = x.new_zeros(())
        start = 0
        for m in self.prefixes[:-1]:  # a handful of nested groups, not a loop over features
            recon = recon + acts[:, start:m] @ self.W_dec[start:m]
            nested = nested + batch_fvu(x, recon)
            start = m
        recon = recon + acts[:, start:] @ self.W_dec[start:]
        fvu = batch_fvu(x, recon)
        w = float(self.opts["matryoshka_full_weight"]) if len(self.prefixes) > 1 else 1.0
        loss = w * fvu + (1 - w) * nested / max(len(self.prefixes) - 1, 1) + self._auxk(xc, x - recon, dead)
        return dense_loss_out(loss, fvu, acts)

    def sae_lens_fields(self):
        return {**super().sae_lens_fields(), "trained_as": "matryoshka_batchtopk", "matryoshka_prefixes": self.prefixes}
