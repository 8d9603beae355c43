"""The run dict of one SAE training run (config ``sae.runs.{name}``): defaults, docs, validation."""

from __future__ import annotations

from typing import Any

from mechflow.sae.architectures import ARCHITECTURES

NORMALIZE_CHOICES = ("none", "expected_average_only_in")
B_DEC_INIT_CHOICES = ("geometric_median", "mean", "zeros")

#: keys every run takes, with their defaults
DEFAULT_RUN: dict[str, Any] = {
    "arch": "topk",
    "n_features": 4096,
    "k": 32,
    "steps": 2000,
    "batch_size": 256,
    "lr": 1e-3,
    "seed": 0,
    "checkpoint_every": 500,
    "warmup": 0.05,
    "decay": 0.2,
    "grad_clip": 1.0,
    "adam_betas": [0.9, 0.999],
    "log_every": 10,
    "normalize_activations": "expected_average_only_in",
    "b_dec_init": "geometric_median",
    "dead_after": 100_000,
    "shuffle_window": 65_536,
    "shuffle_block": 256,
    "device": "auto",
}

#: what each common key means (for the config schema and docs)
RUN_DOCS: dict[str, str] = {
    "arch": f"architecture, one of {sorted(ARCHITECTURES)}",
    "n_features": "dictionary size (d_sae), >= 1",
    "k": "active latents per sample for topk / batchtopk / matryoshka, pursuit steps for mp; 1 <= k <= n_features (ignored by relu, jumprelu, gba)",
    "steps": "optimiser steps, >= 1",
    "batch_size": "samples per minibatch, >= 1",
    "lr": "Adam peak learning rate, > 0",
    "seed": "seed of the initialisation and of the (seed, step) -> minibatch schedule",
    "checkpoint_every": "steps between checkpoints (0: none); a killed run resumes from the last one",
    "warmup": "fraction of steps with a linear learning-rate warm-up from 0, in [0, 1)",
    "decay": "fraction of final steps with a linear learning-rate decay to 0, in [0, 1)",
    "grad_clip": "max global gradient norm (0: no clipping)",
    "adam_betas": "Adam (beta1, beta2)",
    "log_every": "steps between rows of training.nc (metrics averaged over the interval)",
    "normalize_activations": "'expected_average_only_in': scale inputs so E||x||^2 = d_in during training (folded into the saved weights), or 'none'",
    "b_dec_init": "initial decoder bias: 'geometric_median', 'mean' or 'zeros' of a data sample",
    "dead_after": "a latent that has not fired for this many samples counts as dead (AuxK, dead_fraction)",
    "shuffle_window": "rows held in memory at once while shuffling (bounds memory for files larger than RAM)",
    "shuffle_block": "contiguous rows read together (match the file's chunking)",
    "device": "'auto' (cuda when present), 'cpu' or 'cuda'",
}

#: architecture-specific keys with their defaults
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(cls.options) for name, cls in ARCHITECTURES.items()}


def run_defaults(arch: str | None = None) -> dict[str, Any]:
    """Common defaults, plus those of ``arch`` when given."""
    out = dict(DEFAULT_RUN)
    if arch is not None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown SAE arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
        out["arch"] = arch
        out.update(ARCH_DEFAULTS[arch])
    return out


def _int(run: dict, key: str, lo: int) -> None:
    v = run[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"sae run key {key!r} must be an integer >= {lo}, got {v!r}")


def _float(run: dict, key: str, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
    v = run[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v > lo if lo_open else v >= lo) and (hi is None or v < hi)
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo}" + ("" if hi is None else f" and < {hi}")
        raise ValueError(f"sae run key {key!r} must be a number {rng}, got {v!r}")


def validate_run(run: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check a run dict; returns the complete run. Raises ValueError with the fix."""
    if not isinstance(run, dict):
        raise ValueError(f"an SAE run must be a dict, got {type(run).__name__}")
    arch = run.get("arch", DEFAULT_RUN["arch"])
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown SAE arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    full = {**run_defaults(arch), **run}
    allowed = set(DEFAULT_RUN) | set(ARCH_DEFAULTS[arch])
    unknown = sorted(set(run) - allowed)
    if unknown:
        other = {key: [a for a, o in ARCH_DEFAULTS.items() if key in o] for key in unknown}
        hints = "; ".join(f"{key!r} belongs to arch {v}" if v else f"{key!r} is not a known key" for key, v in other.items())
        raise ValueError(f"sae run (arch {arch!r}) has unexpected keys: {hints}. Known keys: {sorted(allowed)}")
    for key, lo in (("n_features", 1), ("steps", 1), ("batch_size", 1), ("seed", 0), ("checkpoint_every", 0),
                    ("log_every", 1), ("dead_after", 1), ("shuffle_window", 1), ("shuffle_block", 1)):
        _int(full, key, lo)
    if ARCHITECTURES[arch].needs_k:
        _int(full, "k", 1)
        if full["k"] > full["n_features"]:
            raise ValueError(f"sae run: k={full['k']} is larger than n_features={full['n_features']}; expected 1 <= k <= n_features")
    _float(full, "lr", 0.0, lo_open=True)
    _float(full, "warmup", 0.0, 1.0)
    _float(full, "decay", 0.0, 1.0)
    if full["warmup"] + full["decay"] > 1:
        raise ValueError(f"sae run: warmup + decay must be <= 1, got {full['warmup']} + {full['decay']}")
    _float(full, "grad_clip", 0.0)
    betas = full["adam_betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"sae run key 'adam_betas' must be two numbers in [0, 1), got {betas!r}")
    full["adam_betas"] = [float(b) for b in betas]
    if full["normalize_activations"] not in NORMALIZE_CHOICES:
        raise ValueError(f"sae run key 'normalize_activations' must be one of {NORMALIZE_CHOICES}, got {full['normalize_activations']!r}")
    if full["b_dec_init"] not in B_DEC_INIT_CHOICES:
        raise ValueError(f"sae run key 'b_dec_init' must be one of {B_DEC_INIT_CHOICES}, got {full['b_dec_init']!r}")
    if full["device"] not in ("auto", "cpu", "cuda") and not str(full["device"]).startswith("cuda:"):
        raise ValueError(f"sae run key 'device' must be 'auto', 'cpu' or 'cuda[:i]', got {full['device']!r}")
    if full["shuffle_window"] < full["shuffle_block"]:
        raise ValueError(f"sae run: shuffle_window ({full['shuffle_window']}) must be >= shuffle_block ({full['shuffle_block']})")
    for key in ARCH_DEFAULTS[arch]:
        default, v = ARCH_DEFAULTS[arch][key], full[key]
        if default is None and v is None:
            continue
        if isinstance(default, (int, float)) or default is None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"sae run key {key!r} (arch {arch!r}) must be a non-negative number, got {v!r}")
        elif isinstance(default, (list, tuple)):
            if not isinstance(v, (list, tuple)) or not v:
                raise ValueError(f"sae run key {key!r} (arch {arch!r}) must be a non-empty list, got {v!r}")
            full[key] = list(v)
    return full


def arch_options(run: dict[str, Any]) -> dict[str, Any]:
    """The architecture-specific part of a validated run."""
    return {key: run[key] for key in ARCH_DEFAULTS[run["arch"]]}
