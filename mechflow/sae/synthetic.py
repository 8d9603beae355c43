"""Synthetic data with a known dictionary, and the rows of the feature-recovery table.

``make_synthetic`` draws data from a known dictionary (frequency and magnitude laws to choose);
:data:`GENERATORS` names the data sets of the benchmark and :data:`FAMILIES` a second set that differs from
them in dimension, dictionary size (and SAE width over it), frequency law and magnitude law; ``recovery_row`` trains one architecture at
its defaults and measures MMCS / FVU / L0 / dead fraction; ``markdown`` formats the table. The table
is measured by ``python benchmarks/sae_recovery.py`` (written to docs/sae_results.md).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from mechflow.sae.metrics import evaluate, mmcs
from mechflow.sae.train import train

FREQ_LAWS = ("power", "exponential", "uniform")
MAG_LAWS = ("uniform", "exponential", "lognormal", "halfnormal", "constant")


def feature_frequencies(n_true: int, mean_active: float, freq_law: str = "power", alpha: float = 0.5) -> torch.Tensor:
    """Firing probability of each ground-truth feature [n_true], summing to ``mean_active`` (before clipping at 1).

    ``power``: p_i ~ (i + 1)^-alpha (Zipf-like); ``exponential``: p_i ~ exp(-alpha i / n_true) (alpha is the
    log-ratio of the first to the last frequency); ``uniform``: every feature equally often (alpha unused).
    """
    i = torch.arange(n_true, dtype=torch.float64)
    if freq_law == "power":
        p = (i + 1) ** -alpha
    elif freq_law == "exponential":
        p = torch.exp(-alpha * i / n_true)
    elif freq_law == "uniform":
        p = torch.ones(n_true, dtype=torch.float64)
    else:
        raise ValueError(f"unknown freq_law {freq_law!r}; expected one of {FREQ_LAWS}")
    return (p * mean_active / p.sum()).clamp(max=1.0).float()


def _magnitudes(m: int, n_true: int, mag_law: str, g: torch.Generator) -> torch.Tensor:
    """[m, n_true] positive magnitudes of mean about 1."""
    if mag_law == "uniform":
        return 0.5 + torch.rand(m, n_true, generator=g)
    if mag_law == "exponential":
        return -torch.log1p(-torch.rand(m, n_true, generator=g))  # Exp(1)
    if mag_law == "lognormal":
        return torch.exp(0.5 * torch.randn(m, n_true, generator=g) - 0.125)  # mean 1
    if mag_law == "halfnormal":
        return torch.randn(m, n_true, generator=g).abs() * (torch.pi / 2) ** 0.5  # mean 1
    if mag_law == "constant":
        return torch.ones(m, n_true)
    raise ValueError(f"unknown mag_law {mag_law!r}; expected one of {MAG_LAWS}")


def make_synthetic(
    n: int,
    d: int = 64,
    n_true: int = 512,
    mean_active: float = 8.0,
    alpha: float = 0.5,
    noise: float = 0.01,
    seed: int = 0,
    true: torch.Tensor | None = None,
    freq_law: str = "power",
    mag_law: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples [n, d] that are sparse positive sums of ``n_true`` unit ground-truth features [n_true, d].

    Feature i fires independently with probability p_i (:func:`feature_frequencies`: by default a power
    law p_i ~ (i + 1)^-alpha), scaled so that on average ``mean_active`` features fire per sample;
    magnitudes follow ``mag_law`` (default uniform in [0.5, 1.5]; exponential, lognormal, halfnormal:
    mean 1; constant: 1); isotropic Gaussian noise of std ``noise`` per dimension is added. Pass ``true`` to draw
    fresh samples (e.g. a held-out set) from an existing dictionary.
    """
    if n_true < 1 or d < 1 or n < 1:
        raise ValueError(f"make_synthetic needs n, d, n_true >= 1, got {n}, {d}, {n_true}")
    g = torch.Generator().manual_seed(seed)
    if true is None:
        true = torch.randn(n_true, d, generator=g)
        true /= true.norm(dim=1, keepdim=True)
    elif true.shape != (n_true, d):
        raise ValueError(f"true must be [n_true, d] = [{n_true}, {d}], got {tuple(true.shape)}")
    p = feature_frequencies(n_true, mean_active, freq_law, alpha)
    if mag_law not in MAG_LAWS:
        raise ValueError(f"unknown mag_law {mag_law!r}; expected one of {MAG_LAWS}")
    x = torch.empty(n, d)
    chunk = 16384
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        on = torch.rand(m, n_true, generator=g) < p
        mag = _magnitudes(m, n_true, mag_law, g)
        x[i : i + m] = (on * mag) @ true + noise * torch.randn(m, d, generator=g)
    return x, true


#: the generators of the recovery benchmark: different dimension, dictionary size, sparsity, frequency
#: and magnitude laws and data set size (``n``: training samples). Each SAE gets n_features = n_true and
#: k = round(mean_active), nothing else.
GENERATORS: dict[str, dict[str, Any]] = {
    "power-d64": {"d": 64, "n_true": 512, "mean_active": 8, "freq_law": "power", "alpha": 0.5, "mag_law": "uniform",
                  "n": 200_000},
    "zipf-d96": {"d": 96, "n_true": 384, "mean_active": 5, "freq_law": "power", "alpha": 1.0, "mag_law": "exponential",
                 "n": 100_000},
    "exp-d128": {"d": 128, "n_true": 256, "mean_active": 12, "freq_law": "exponential", "alpha": 3.0,
                 "mag_law": "lognormal", "n": 50_000},
    "uniform-d192": {"d": 192, "n_true": 256, "mean_active": 4, "freq_law": "uniform", "alpha": 0.0,
                     "mag_law": "halfnormal", "n": 100_000},
}


#: generator families that differ from :data:`GENERATORS` in dimension (48 to 512), dictionary size (256 to 1,024
#: true features), SAE width over it (``n_features``: 1x, 1.5x, 2x n_true), frequency law (Zipf exponents 0.3 to
#: 1.2, exponential, uniform) and magnitude law (constant among them). Measured at 6,000 steps.
FAMILIES: dict[str, dict[str, Any]] = {
    "lognormal-d256": {"d": 256, "n_true": 1024, "n_features": 1024, "mean_active": 16, "freq_law": "power",
                       "alpha": 0.8, "mag_law": "lognormal", "n": 100_000},
    "zipf-d64-x2": {"d": 64, "n_true": 256, "n_features": 512, "mean_active": 4, "freq_law": "power", "alpha": 1.2,
                    "mag_law": "exponential", "n": 100_000},
    "const-d512": {"d": 512, "n_true": 768, "n_features": 768, "mean_active": 10, "freq_law": "uniform", "alpha": 0.0,
                   "mag_law": "constant", "n": 50_000},
    "exp-d48": {"d": 48, "n_true": 384, "n_features": 384, "mean_active": 3, "freq_law": "exponential", "alpha": 4.0,
                "mag_law": "uniform", "n": 100_000},
    "dense-d384-x1.5": {"d": 384, "n_true": 512, "n_features": 768, "mean_active": 24, "freq_law": "power",
                        "alpha": 0.3, "mag_law": "halfnormal", "n": 50_000},
    "zipf-d128-const": {"d": 128, "n_true": 640, "n_features": 640, "mean_active": 6, "freq_law": "power",
                        "alpha": 1.0, "mag_law": "constant", "n": 100_000},
}

#: every named generator
ALL_GENERATORS: dict[str, dict[str, Any]] = {**GENERATORS, **FAMILIES}


def generator_spec(name: str) -> dict[str, Any]:
    """The entry of :data:`GENERATORS` or :data:`FAMILIES` called ``name``."""
    if name not in ALL_GENERATORS:
        raise ValueError(f"unknown generator {name!r}; expected one of {list(ALL_GENERATORS)}")
    return ALL_GENERATORS[name]


def sae_width(name: str) -> int:
    """Dictionary size of the SAEs trained on generator ``name``: its ``n_features``, else ``n_true``."""
    spec = generator_spec(name)
    return int(spec.get("n_features", spec["n_true"]))


def generator_data(name: str, seed: int = 0, n_test: int = 20_000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train [n, d], true dictionary [n_true, d], held-out [n_test, d]) of a :data:`GENERATORS` or
    :data:`FAMILIES` entry."""
    spec = dict(generator_spec(name))
    n = spec.pop("n")
    spec.pop("n_features", None)
    x, true = make_synthetic(n, seed=seed, **spec)
    x_test, _ = make_synthetic(n_test, seed=seed + 1000, true=true, **spec)
    return x, true, x_test


def recovery_row(arch: str, x: torch.Tensor, true: torch.Tensor, x_test: torch.Tensor, steps: int, k: int,
                 seed: int = 0, **extra: Any) -> dict[str, Any]:
    """Train one architecture at its defaults (only n_features (default n_true), k, steps, seed; ``extra``
    overrides) and measure MMCS vs ``true`` and inference FVU, L0, dead and dense fractions on ``x_test``."""
    t0 = time.perf_counter()
    extra.setdefault("n_features", true.shape[0])
    model = train(x, arch=arch, k=k, steps=steps, seed=seed, **extra)
    extra = {key: v for key, v in extra.items() if key != "n_features" or v != true.shape[0]}
    seconds = time.perf_counter() - t0
    ev = evaluate(model, x_test)
    derived = {key: model.resolved[key] for key in model.resolved if model.run.get(key) is None and key in model.resolved
               and model.resolved[key] is not None}
    return {"arch": arch, "mmcs": mmcs(model.W_dec.detach(), true), "fvu": ev["fvu"], "l0": ev["l0"],
            "dead_fraction": ev["dead_fraction"], "dense_fraction": ev["dense_fraction"], "steps": steps, "k": k,
            "n_features": model.n_features,
            "seconds": seconds, "settings": dict(extra), "derived": derived}


def recovery_table(archs: list[str], steps: int, generator: str = "power-d64", seed: int = 0,
                   **kw: Any) -> list[dict[str, Any]]:
    """Rows of :func:`recovery_row` for each architecture on one :data:`GENERATORS` or :data:`FAMILIES` data set
    (k = round(mean_active), n_features = :func:`sae_width`)."""
    x, true, x_test = generator_data(generator, seed=seed)
    k = round(generator_spec(generator)["mean_active"])
    kw.setdefault("n_features", sae_width(generator))
    return [{"generator": generator, **recovery_row(a, x, true, x_test, steps, k, seed=seed, **dict(kw))} for a in archs]


def describe_generator(name: str) -> str:
    """One line describing a :data:`GENERATORS` or :data:`FAMILIES` entry."""
    g = generator_spec(name)
    law = {"power": f"p_i ~ (i+1)^-{g['alpha']:g}", "exponential": f"p_i ~ exp(-{g['alpha']:g} i / n)",
           "uniform": "uniform"}[g["freq_law"]]
    width = "" if sae_width(name) == g["n_true"] else f" (SAE width {sae_width(name)})"
    return (f"`{name}`: d={g['d']}, {g['n_true']} features{width}, ~{g['mean_active']:g} active per sample, frequencies "
            f"{law}, {g['mag_law']} magnitudes, {g['n']:,} training samples")


def mmcs_table(rows: list[dict[str, Any]]) -> str:
    """MMCS only, one row per architecture and one column per (generator, run length); bold where the target is met."""
    gens = list(dict.fromkeys(r["generator"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    cols = [(g, s) for s in steps for g in gens if any(r["generator"] == g and r["steps"] == s for r in rows)]
    at = {(r["arch"], r["generator"], r["steps"]): r["mmcs"] for r in rows}
    lines = ["| arch | " + " | ".join(f"{g}, {s // 1000}k" for g, s in cols) + " |", "|---|" + "---:|" * len(cols)]
    for a in dict.fromkeys(r["arch"] for r in rows):
        cells = [("–" if (v := at.get((a, g, s))) is None else
                  f"**{v:.3f}**" if v >= (0.85 if a == "relu" else 0.9) else f"{v:.3f}") for g, s in cols]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table as markdown: MMCS of each architecture (rows) per generator and run length (columns)."""
    gens = list(dict.fromkeys(r["generator"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    cols = [(g, s) for s in steps for g in gens if any(r["generator"] == g and r["steps"] == s for r in rows)]
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    at = {(r["arch"], r["generator"], r["steps"]): r for r in rows}
    lines = [
        "# SAE feature recovery on synthetic data, at the defaults",
        "",
        "Every architecture is trained with `mechflow.sae.train(x, arch=..., n_features=n_true, k=round(mean_active), "
        "steps=..., seed=0)` (n_features: the SAE width where a generator gives one) and nothing else: every other "
        "setting is its default, derived from the run where the default is null (`mechflow.sae.defaults`). Data "
        "(`mechflow.sae.synthetic.GENERATORS`, `FAMILIES`): sparse positive sums of unit ground-truth features plus "
        "Gaussian noise (std 0.01):",
        "",
        *[f"- {describe_generator(g)}" for g in gens],
        "",
        "MMCS: mean over ground-truth features of the best cosine similarity with a learned decoder row (target: >= 0.9; "
        ">= 0.85 for relu; bold: reached). In brackets: held-out FVU / L0 / dead fraction (latents active on none of the 20,000 "
        "held-out samples), inference semantics.",
        "",
        "| arch | " + " | ".join(f"{g}, {s:,} steps" for g, s in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for a in archs:
        cells = []
        for g, s in cols:
            r = at.get((a, g, s))
            if r is None:
                cells.append("–")
                continue
            ok = r["mmcs"] >= (0.85 if a == "relu" else 0.9)
            value = f"**{r['mmcs']:.3f}**" if ok else f"{r['mmcs']:.3f} (below)"
            cells.append(f"{value} ({r['fvu']:.3f} / {r['l0']:.1f} / {100 * r['dead_fraction']:.0f}%)")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    total = sum(r["seconds"] for r in rows)
    lines += ["", f"Measured by `python benchmarks/sae_recovery.py` on {meta['machine']} (torch {meta['torch']}, one "
              f"thread per run, {meta['jobs']} runs at a time on a shared CPU: {total / 60:.0f} CPU-minutes of "
              f"training), {meta['date']}.", ""]
    return "\n".join(lines)
