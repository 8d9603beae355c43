"""The run config of one semi-NMF fit (config ``snmf.runs.<name>``): the keys of :func:`mechflow.snmf.fit`
a study may set, their defaults (the library's and the workflow's alike), validation and JSON schema."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from mechflow.runconfig import Check, RunConfig, option, properties_schema, required_keys

Init = Literal["svd", "kmeans", "random"]
INITS: tuple[str, ...] = ("svd", "kmeans", "random")
SEEDED_INITS: tuple[str, ...] = ("kmeans", "random")


class SNMFError(ValueError):
    """Invalid input or settings for a semi-NMF fit."""


@dataclass(frozen=True, kw_only=True)
class SNMFRunConfig(RunConfig):
    """Settings of a semi-NMF fit ``A [units, samples] ~ F G^T`` (see :mod:`mechflow.snmf.algorithm`)."""

    LABEL: ClassVar[str] = "snmf run"
    ERROR: ClassVar[type[ValueError]] = SNMFError
    CHECKS: ClassVar[tuple[Check, ...]] = (
        Check("n_init", "n_init > 1 needs init kmeans or random", lambda c: c.n_init == 1 or c.init in SEEDED_INITS,
              "restarts (n_init > 1) need a seeded init, 'kmeans' or 'random'; 'svd' and arrays are deterministic",
              schema={"if": {"properties": {"n_init": {"minimum": 2}}, "required": ["n_init"]},
                      "then": {"properties": {"init": {"enum": list(SEEDED_INITS)}}, "required": ["init"]}}),
    )

    n_factors: int = option(doc="factors K, at most min(units, samples)", minimum=1)
    sparsity: float = option(0.1, "fraction of units kept per factor: n_keep = ceil(sparsity * units)",
                             exclusive_minimum=0, maximum=1)
    init: Init = option("svd", "initial G: svd (top singular directions), kmeans (spherical k-means++ cluster "
                               "indicators + 0.2) or random (uniform)")
    max_iter: int = option(300, "iterations after the initialisation (0: the initialisation alone)", minimum=0)
    tol: float = option(1e-5, "stop when an iteration lowers the relative loss by less than this fraction (0: run "
                              "max_iter)", minimum=0)
    seed: int = option(0, "seed of every random choice (restart r uses seed + r)", minimum=0)
    n_init: int = option(1, "restarts (init kmeans or random); the lowest final loss is kept", minimum=1)
    ridge: float = option(1e-6, "ridge lambda of the F least-squares step, relative to G's unit-norm columns",
                          minimum=0)
    refit_iter: int = option(5, "conjugate-gradient steps refitting F on its support per iteration", minimum=0)


def validate_run(run: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check a run dict; returns the complete run (the keyword arguments of
    :func:`mechflow.snmf.fit` after ``A``). Raises :class:`SNMFError` (a ValueError) naming the key."""
    return SNMFRunConfig.from_dict(run).to_dict()


def run_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of one ``snmf.runs.<name>`` entry, generated from :class:`SNMFRunConfig`."""
    return {
        "type": "object",
        "description": "one semi-NMF fit (generated from mechflow.snmf.SNMFRunConfig; regenerate with python -m "
                       "mechflow.run_schemas)",
        "required": required_keys(SNMFRunConfig),
        "properties": properties_schema(SNMFRunConfig),
        "allOf": [copy.deepcopy(dict(c.schema)) for c in SNMFRunConfig.CHECKS if c.schema is not None],
        "additionalProperties": False,
    }
