"""Synthetic data with a known dictionary, and the rows of the feature-recovery table.

``make_synthetic`` draws data from a known dictionary; ``recovery_row`` trains one architecture
on it and measures MMCS / FVU / L0; ``markdown`` formats the table. The table of every
architecture is measured by ``python benchmarks/sae_recovery.py`` (written to docs/sae_results.md).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from mechflow.sae.metrics import evaluate, mmcs
from mechflow.sae.train import train


def make_synthetic(
    n: int,
    d: int = 64,
    n_true: int = 512,
    mean_active: float = 8.0,
    alpha: float = 0.5,
    noise: float = 0.01,
    seed: int = 0,
    true: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples [n, d] that are sparse positive sums of ``n_true`` unit ground-truth features [n_true, d].

    Feature i fires independently with probability p_i proportional to (i + 1)^-alpha (a power
    law), scaled so that on average ``mean_active`` features fire per sample; magnitudes are
    uniform in [0.5, 1.5]; isotropic Gaussian noise of std ``noise`` per dimension is added.
    Pass ``true`` to draw fresh samples (e.g. a held-out set) from an existing dictionary.
    """
    if n_true < 1 or d < 1 or n < 1:
        raise ValueError(f"make_synthetic needs n, d, n_true >= 1, got {n}, {d}, {n_true}")
    g = torch.Generator().manual_seed(seed)
    if true is None:
        true = torch.randn(n_true, d, generator=g)
        true /= true.norm(dim=1, keepdim=True)
    elif true.shape != (n_true, d):
        raise ValueError(f"true must be [n_true, d] = [{n_true}, {d}], got {tuple(true.shape)}")
    p = (torch.arange(n_true, dtype=torch.float64) + 1) ** -alpha
    p = (p * mean_active / p.sum()).clamp(max=1.0).float()
    x = torch.empty(n, d)
    chunk = 16384
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        on = torch.rand(m, n_true, generator=g) < p
        mag = 0.5 + torch.rand(m, n_true, generator=g)
        x[i : i + m] = (on * mag) @ true + noise * torch.randn(m, d, generator=g)
    return x, true


#: per-architecture settings of the recovery table (shared: n_features=512, same data, same steps); an
#: ``lr`` here replaces the shared Adam learning rate for that architecture
TABLE_SETTINGS: dict[str, dict[str, Any]] = {
    "topk": {"k": 8},
    "batchtopk": {"k": 8, "auxk_coef": 1 / 8},
    "gba": {"gba_freq_max": 0.08, "gba_freq_min": 5e-3, "gba_interval": 5, "gba_rate": 0.05},
    "mp": {"k": 8},
    "relu": {"l1_coef": 0.3},
    "jumprelu": {"l0_coef": 0.02},
    "matryoshka": {"k": 8, "matryoshka_prefixes": [0.25, 0.5]},
}

#: dead-latent window of the table runs, in samples: 5 batches of 256, as in the BatchTopK reference
#: implementation (the run default, 100,000, is a tenth of these 1M-sample runs)
TABLE_DEAD_AFTER = 1280


def recovery_row(arch: str, x: torch.Tensor, true: torch.Tensor, x_test: torch.Tensor, steps: int, seed: int = 0,
                 batch_size: int = 256, lr: float = 1e-2, dead_after: int = TABLE_DEAD_AFTER, **extra: Any) -> dict[str, Any]:
    """Train one architecture and measure MMCS vs ``true``, inference FVU and L0 on ``x_test``.

    ``lr`` is the shared learning rate; an ``lr`` in :data:`TABLE_SETTINGS` or ``extra`` overrides it.
    """
    opts = {**TABLE_SETTINGS.get(arch, {}), **extra}
    k = opts.pop("k", None)
    lr = float(opts.pop("lr", lr))
    t0 = time.perf_counter()
    model = train(x, arch=arch, n_features=true.shape[0], k=k, steps=steps, seed=seed, batch_size=batch_size, lr=lr,
                  b_dec_init="zeros", dead_after=dead_after, **opts)
    seconds = time.perf_counter() - t0
    ev = evaluate(model, x_test)
    return {"arch": arch, "mmcs": mmcs(model.W_dec.detach(), true), "fvu": ev["fvu"], "l0": ev["l0"],
            "steps": steps, "seconds": seconds, "lr": lr, "settings": {"k": k, **opts}}


def recovery_table(archs: list[str], steps: int, n: int = 200_000, seed: int = 0, **kw: Any) -> list[dict[str, Any]]:
    """Rows of :func:`recovery_row` for each architecture, on one shared synthetic data set."""
    x, true = make_synthetic(n, seed=seed)
    x_test, _ = make_synthetic(20_000, seed=seed + 1000, true=true)
    return [recovery_row(a, x, true, x_test, steps, seed=seed, **kw) for a in archs]


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table as markdown."""
    lines = [
        "# SAE feature recovery on synthetic data",
        "",
        f"Data: d={meta['d']}, {meta['n_true']} ground-truth unit features, each sample a sum of ~{meta['mean_active']} "
        f"features (power-law frequencies p_i ~ (i+1)^-0.5, magnitudes U[0.5, 1.5]) plus Gaussian noise (std 0.01); "
        f"{meta['n']:,} training samples, 20,000 held-out samples. Every SAE: n_features={meta['n_true']}, "
        f"{meta['steps']} steps, batch 256, Adam with the lr of its row, seed {meta['seed']}, a latent counts as "
        f"dead (AuxK) after {meta['dead_after']:,} samples without firing.",
        "",
        "MMCS: mean over ground-truth features of the best cosine similarity with a learned decoder row. "
        "FVU and L0 are measured on the held-out samples with inference semantics.",
        "",
        "| arch | MMCS | FVU | L0 | lr | settings | train time (s) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in r["settings"].items() if v is not None) or "defaults"
        lines.append(f"| {r['arch']} | {r['mmcs']:.3f} | {r['fvu']:.4f} | {r['l0']:.1f} | {r['lr']:g} | {settings} "
                     f"| {r['seconds']:.0f} |")
    lines += ["", f"Measured by `python benchmarks/sae_recovery.py` on {meta['machine']} "
              f"(torch {meta['torch']}, {meta['threads']} threads), {meta['date']}.", ""]
    return "\n".join(lines)
