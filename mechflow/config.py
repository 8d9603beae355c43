"""Study configuration: one file is one whole study, validated and resolved before any job runs.

- :func:`load_study` reads a study file; :func:`workflow_study` picks what Snakemake runs: the
  ``--configfile`` given (nothing is merged into it), else the default study ``config.yaml``.
- :func:`check_config` validates against the schema, fills its defaults and the typed run configs'
  defaults, and runs :mod:`mechflow.checks` (what the schema cannot express: model files, layers,
  devices, prompt sets, CRSs, region sizes...).
- :func:`resolve_study` is ``check_config`` plus the canonical form: keys sorted, numbers typed as
  the schema says (``lr: 1`` and ``lr: 1.0`` alike), so Snakemake's params comparison (by repr)
  reruns a step only when a value changes.

Every problem becomes a :class:`ConfigError` whose message is one line naming the offending key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_FILE = "config.schema.yaml"
#: the default study, used when no --configfile is given
DEFAULT_STUDY = "config.yaml"


class ConfigError(ValueError):
    """The study configuration is invalid; the message is one line naming the key."""


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def load_study(path: str | Path) -> dict[str, Any]:
    """Read one study file (YAML or JSON); one-line ConfigError when it cannot be read."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config error at (file): {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config error at (file): cannot read {path}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config error at (file): {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def workflow_study(config: dict[str, Any], configfiles: list[Any], default: str | Path) -> dict[str, Any]:
    """The study Snakemake runs, before validation.

    With ``--configfile`` Snakemake has already loaded those files (and ``--config`` overrides) into
    ``config``: that is the whole study. Without one, the default study file is loaded and any
    ``--config`` overrides are merged on top of it.
    """
    if configfiles:
        return copy.deepcopy(config)
    study = load_study(default)
    _merge(study, copy.deepcopy(config))
    return study


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted (recursively) and tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def _deref(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def coerce_numbers(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    """``instance`` with integers turned into floats wherever the schema allows a number but no integer."""
    schema = _deref(schema, root)
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if isinstance(instance, int) and not isinstance(instance, bool) and "number" in types and "integer" not in types:
        return float(instance)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            sub = _deref(sub, root)
            if key != "allOf" and not jsonschema.Draft202012Validator(sub).is_valid(instance):
                continue
            instance = coerce_numbers(instance, sub, root)
    if "if" in schema and jsonschema.Draft202012Validator({**schema["if"], "definitions": root.get("definitions", {})}).is_valid(instance):
        if "then" in schema:
            instance = coerce_numbers(instance, schema["then"], root)
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in instance.items():
            if k in props:
                instance[k] = coerce_numbers(v, props[k], root)
            elif isinstance(extra, dict):
                instance[k] = coerce_numbers(v, extra, root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        instance = [coerce_numbers(v, schema["items"], root) for v in instance]
    return instance


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _one_line(error: jsonschema.ValidationError) -> str:
    best = jsonschema.exceptions.best_match([error])
    msg = best.message
    if best.validator == "additionalProperties":
        msg = msg.replace("Additional properties are not allowed", "unknown key(s)")
    if best.validator in ("oneOf", "anyOf") and best.context:
        msg = "; or ".join(dict.fromkeys(e.message for e in best.context))
    return f"config error at {_key_path(best)}: {' '.join(msg.split())}"


def _fill_defaults(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Fill ``default`` values of object properties in place (recursing into objects and maps)."""
    schema = _deref(schema, root)
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in instance:
            if key not in schema.get("properties", {}):
                _fill_defaults(instance[key], extra, root)


def validate_schema(config: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Validate against the JSON schema and return a copy with defaults filled in."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), e.message))
    if errors:
        raise ConfigError(_one_line(errors[0]))
    filled = copy.deepcopy(config)
    _fill_defaults(filled, schema, schema)
    errors = list(validator.iter_errors(filled))
    if errors:  # a default that violates the schema is a bug in the schema itself
        raise ConfigError(_one_line(errors[0]) + " (after filling defaults)")
    return filled


def _complete_runs(config: dict[str, Any]) -> None:
    """Replace each SAE / semi-NMF run by its validated, complete form (typed run configs' defaults)."""
    from mechflow import snmf
    from mechflow.sae import validate_run

    for section, validate in (("sae", validate_run), ("snmf", snmf.validate_run)):
        for name, run in config[section]["runs"].items():
            try:
                config[section]["runs"][name] = validate(dict(run))
            except ValueError as e:
                raise ConfigError(f"config error at {section}.runs.{name}: {' '.join(str(e).split())}") from None


def check_config(config: dict[str, Any], base_dir: str | Path = ".", schema_path: str | Path | None = None,
                 data_checks: bool = True) -> dict[str, Any]:
    """Validate a study config (schema, defaults, semantics); return the filled config.

    Raises ConfigError with a one-line message. ``data_checks=False`` skips building the prompt sets
    (Snakemake's job processes re-read a study the main process has checked).
    """
    from mechflow.checks import check_semantics

    schema = load_schema(schema_path or Path(base_dir) / SCHEMA_FILE)
    filled = validate_schema(dict(config), schema)
    _complete_runs(filled)
    check_semantics(filled, base_dir, data_checks=data_checks)
    return filled


def resolve_study(config: dict[str, Any], base_dir: str | Path = ".", schema_path: str | Path | None = None,
                  data_checks: bool = True) -> dict[str, Any]:
    """The complete, canonical study: :func:`check_config`, numbers typed by the schema, keys sorted."""
    schema = load_schema(schema_path or Path(base_dir) / SCHEMA_FILE)
    filled = check_config(config, base_dir, schema_path, data_checks)
    return canonical(coerce_numbers(filled, schema, schema))


# ---- the config reference (README), generated from the schema ---------------------------------------


def _has_children(schema: Mapping[str, Any]) -> bool:
    extra = schema.get("additionalProperties")
    return bool(schema.get("properties")) or (isinstance(extra, dict) and _has_children(extra)) or any(
        "then" in block for block in schema.get("allOf", []))


def _fmt(value: Any) -> str:
    import json

    return "`" + json.dumps(value, ensure_ascii=False).replace('"', "") + "`" if value is not None else "`null`"


def _meaning(schema: Mapping[str, Any]) -> str:
    parts = [" ".join(str(schema.get("description", "")).split())]
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if isinstance(schema.get("items"), dict) and "enum" in schema["items"]:
        parts.append("a list of " + ", ".join(f"`{v}`" for v in schema["items"]["enum"]))
    bounds = [f"{op} {schema[key]}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                    ("exclusiveMaximum", "<")) if key in schema]
    if bounds:
        parts.append(", ".join(bounds))
    return "; ".join(p for p in parts if p).replace("|", "\\|")


def _condition(schema: Mapping[str, Any]) -> str:
    if "const" in schema:
        return f"= {schema['const']}"
    if "enum" in schema:
        return "in " + ", ".join(map(str, schema["enum"]))
    return ", ".join(f"{op} {schema[key]}" for key, op in (("minimum", ">="), ("maximum", "<=")) if key in schema)


def reference_rows(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, prefix: str = "",
                   only: str = "") -> list[tuple[str, str, str]]:
    """(key, default, meaning) of every leaf key of the schema, in schema order."""
    root = root if root is not None else schema
    schema = _deref(schema, root)
    rows: list[tuple[str, str, str]] = []
    for key, sub in schema.get("properties", {}).items():
        sub = _deref(sub, root)
        if _has_children(sub):
            rows += reference_rows(sub, root, f"{prefix}{key}.", only)
        else:
            default = _fmt(sub["default"]) if "default" in sub else "–"
            rows.append((f"`{prefix}{key}`", default, (f"({only}) " if only else "") + _meaning(sub)))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and _has_children(_deref(extra, root)):
        rows += reference_rows(extra, root, f"{prefix}<name>.", only)
    for block in schema.get("allOf", []):
        if "then" in block:
            cond = ", ".join(f"{k} {_condition(v)}" for k, v in block.get("if", {}).get("properties", {}).items())
            rows += reference_rows(block["then"], root, prefix, cond)
    return rows


def config_reference(schema: Mapping[str, Any]) -> str:
    """The README's config reference: one markdown table row per key of the schema."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| {k} | {d} | {m} |" for k, d, m in reference_rows(schema)]
    return "\n".join(lines) + "\n"


# ---- what a study's steps run on (shared by rules/*.smk and the job modules of lens, steering, selection) ----

#: the model settings a job loads a model with (a change reruns it); resource keys are never among them
MODEL_KEYS: tuple[str, ...] = ("spec", "dtype", "device", "random_init", "init_seed")


def model_params(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The settings a job loads ``model`` with (:data:`MODEL_KEYS`)."""
    return {k: config["models"][model][k] for k in MODEL_KEYS}


def study_pairs(config: Mapping[str, Any], section: Mapping[str, Any] | None = None,
                models: list[str] | None = None) -> list[tuple[str, str]]:
    """(dataset, model) pairs a step runs on: the section's ``datasets`` and ``models`` lists (null = all; ``models``
    given: those), less the models a prompt set leaves out (``datasets.<d>.models``). ``section=None``: every
    pair the study extracts."""
    every = sorted(config["models"])
    datasets = sorted((section or {}).get("datasets") or config["datasets"])
    if models is None:
        models = sorted((section or {}).get("models") or every)
    return [(d, m) for d in datasets for m in models if m in (config["datasets"][d].get("models") or every)]


def sae_jobs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every SAE the study trains: dicts of dataset, model, hook, layer, run."""
    sae = config.get("sae") or {}
    if not sae.get("runs"):
        return []
    return [dict(dataset=d, model=m, hook=sae["hook"], layer=int(layer), run=r)
            for d, m in study_pairs(config, sae) for layer in sae["layers"] for r in sorted(sae["runs"])]


def one_of(names: list[str]) -> str:
    """A wildcard constraint matching exactly these names (none: a pattern that matches nothing)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!x)x"
