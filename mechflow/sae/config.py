"""The run config of one SAE training run (config ``sae.runs.<name>``): validation, defaults, schema.

The keys live in dataclasses: :class:`~mechflow.sae.configs.base.SAERunConfig` holds the keys every
run takes, and each architecture's config (``mechflow.sae.configs.<arch>``) adds its own options.
Neither this module nor those import torch: a study's runs are checked without loading it.
:func:`validate_run` is the one validator (workflow, :func:`mechflow.sae.train`, the SAE classes);
:func:`run_schema` generates the JSON schema of a run, written into config.schema.yaml by
:func:`mechflow.run_schemas.write_run_schemas`.
"""

from __future__ import annotations

from typing import Any

from mechflow.runconfig import config_fields, properties_schema
from mechflow.sae.configs import ARCH_DOC, CONFIGS, SAERunConfig

DEFAULT_ARCH: str = SAERunConfig.__dataclass_fields__["arch"].default


def config_class(arch: str) -> type[SAERunConfig]:
    """The run config class of ``arch``."""
    if arch not in CONFIGS:
        raise ValueError(f"unknown SAE arch {arch!r}; expected one of {sorted(CONFIGS)}")
    return CONFIGS[arch]


def _owner_hint(key: str) -> str | None:
    """Which architectures take ``key`` (for the error on an unknown key)."""
    owners = [a for a, cls in CONFIGS.items() if key in cls.option_names()]
    return f"{key!r} belongs to arch {owners}" if owners else None


def parse_run(run: dict[str, Any]) -> SAERunConfig:
    """A run dict -> the validated config dataclass of its architecture (``arch`` defaults to topk).

    Raises ValueError with a one-line message naming the key: unknown arch or key (with the arch it
    belongs to), wrong type, out of bounds, or a cross-field rule (``k <= n_features`` where k is
    used, ``warmup + decay <= 1``, ``shuffle_block <= shuffle_window``, per-arch rules).
    """
    if not isinstance(run, dict):
        raise ValueError(f"an SAE run must be a dict, got {type(run).__name__}")
    arch = run.get("arch", DEFAULT_ARCH)
    if not isinstance(arch, str) or arch not in CONFIGS:
        raise ValueError(f"unknown SAE arch {arch!r}; expected one of {sorted(CONFIGS)}")
    return CONFIGS[arch].from_dict({**run, "arch": arch}, label=f"sae run (arch {arch!r})", hint=_owner_hint)


def validate_run(run: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check a run dict; returns the complete run (plain data). See :func:`parse_run`."""
    return parse_run(run).to_dict()


def run_defaults(arch: str | None = None) -> dict[str, Any]:
    """Common defaults, plus those of ``arch`` (with ``arch`` set) when given."""
    return dict(SAERunConfig.defaults()) if arch is None else config_class(arch).defaults()


def arch_options(run: dict[str, Any]) -> dict[str, Any]:
    """The architecture-specific part of a validated run."""
    return {key: run[key] for key in config_class(run["arch"]).option_names()}


#: keys every run takes, with their defaults (derived from SAERunConfig)
DEFAULT_RUN: dict[str, Any] = SAERunConfig.defaults()
#: what each common key means (derived from SAERunConfig)
RUN_DOCS: dict[str, str] = SAERunConfig.docs()
#: architecture-specific keys with their defaults (derived from the arch config classes)
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    arch: {k: v for k, v in cls.defaults().items() if k in cls.option_names()} for arch, cls in CONFIGS.items()
}


def run_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of one ``sae.runs.<name>`` entry, generated from the dataclasses.

    ``properties`` holds the common keys (type, bounds, default, description; ``arch`` an enum). An
    ``allOf`` of ``if arch == X then ...`` blocks declares X's options (type, bounds, default,
    description) and admits X's keys only (``propertyNames``), so an unknown key or another
    architecture's option is rejected and named; a missing ``arch`` is the default architecture.
    Cross-field rules JSON schema cannot express are listed in the description and checked by
    :func:`validate_run`.
    """
    props = properties_schema(SAERunConfig)
    props["arch"] = {"enum": list(CONFIGS), "default": DEFAULT_ARCH, "description": ARCH_DOC}
    blocks = []
    for arch, cls in CONFIGS.items():
        cond: dict[str, Any] = {"properties": {"arch": {"const": arch}}}
        if arch != DEFAULT_ARCH:  # an absent arch is the default one
            cond["required"] = ["arch"]
        then: dict[str, Any] = {"propertyNames": {"enum": [f.name for f in config_fields(cls)]}}
        if cls.option_names():
            then["properties"] = properties_schema(cls, cls.option_names())
        blocks.append({"if": cond, "then": then})
    rules: dict[str, list[str]] = {}
    for arch, cls in CONFIGS.items():
        for check in cls.CHECKS:
            if check.applies(cls):
                rules.setdefault(check.rule, []).append(arch)
    text = "; ".join(r if len(a) == len(CONFIGS) else f"{r}: {', '.join(a)}" for r, a in rules.items())
    return {
        "type": "object",
        "description": "one SAE training run (generated from the dataclasses of mechflow.sae.archs; regenerate with "
                       f"python -m mechflow.run_schemas). Also checked by mechflow.sae.validate_run: {text}",
        "properties": props,
        "allOf": blocks,
    }


__all__ = ["ARCH_DEFAULTS", "DEFAULT_ARCH", "DEFAULT_RUN", "RUN_DOCS", "SAERunConfig", "arch_options", "config_class",
           "parse_run", "run_defaults", "run_schema", "validate_run"]
