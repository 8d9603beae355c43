"""Study configuration: schema validation with defaults, plus checks the schema cannot express.

``check_config`` is called by the Snakefile before any job runs. Every problem becomes a
:class:`ConfigError` whose message is one line naming the offending key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_FILE = "config.schema.yaml"


class ConfigError(ValueError):
    """The study configuration is invalid; the message is one line naming the key."""


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


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
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/").split("/")
        target: Any = root
        for part in ref:
            target = target[part]
        schema = target
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


def _extracted_layers(config: dict[str, Any], hook: str, n_layers: int | None) -> set[int] | None:
    """Layer indices extracted for ``hook`` (None when unknown)."""
    layers = config["extract"]["hook_layers"].get(hook, config["extract"]["layers"])
    if layers == "all":
        return set(range(n_layers)) if n_layers is not None else None
    if n_layers is None:
        return {layer for layer in layers if layer >= 0} if all(layer >= 0 for layer in layers) else None
    return {layer + n_layers if layer < 0 else layer for layer in layers}


def _check_downstream(config: dict[str, Any], n_layers: dict[str, int | None]) -> None:
    """Models named by analyses exist; analysed layers are extracted; SAE runs are valid."""
    sections = {"spatial": config["spatial"].get("hooks", []), "probes": config["probes"].get("hooks", []),
                "sae": [config["sae"]["hook"]], "snmf": [config["snmf"]["hook"]]}
    for section, hooks in sections.items():
        models = config[section].get("models") or list(config["models"])
        for m in models:
            if m not in config["models"]:
                raise ConfigError(f"config error at {section}.models: unknown model {m!r} (have {sorted(config['models'])})")
        if (section == "probes" and config["probes"].get("layers") is None) or (
            section in ("sae", "snmf") and not config[section]["runs"]
        ):
            continue
        if section == "spatial" and not config["spatial"]["units"] and not config["sae"]["runs"] and not config["snmf"]["runs"]:
            continue
        for m in models:
            for hook in hooks:
                have = _extracted_layers(config, hook, n_layers[m])
                for layer in config[section]["layers"]:
                    if n_layers[m] is not None and layer >= n_layers[m]:
                        raise ConfigError(f"config error at {section}.layers: layer {layer} does not exist in model "
                                          f"{m!r} ({n_layers[m]} layers)")
                    if have is not None and layer not in have:
                        raise ConfigError(f"config error at {section}.layers: layer {layer} of hook {hook!r} is not "
                                          f"extracted (extract.layers / extract.hook_layers.{hook})")
    if config["sae"]["runs"]:
        from mechflow.sae.config import validate_run

        for name, run in config["sae"]["runs"].items():
            try:
                validate_run(dict(run))
            except ValueError as e:
                raise ConfigError(f"config error at sae.runs.{name}: {' '.join(str(e).split())}") from None


def check_semantics(config: dict[str, Any], base_dir: str | Path = ".") -> None:
    """Checks beyond the schema: model paths and weights, prompt files, templates, regions, layers."""
    from mechflow.data.prompts import PromptSetError, _region_spec, build_prompts, check_template
    from mechflow.models import ModelSpecError, count_layers, resolve_model

    n_layers: dict[str, int | None] = {}
    for name, model in config["models"].items():
        try:
            n_layers[name] = count_layers(resolve_model(model["spec"], base_dir))
        except ModelSpecError as e:
            raise ConfigError(f"config error at models.{name}.spec: {e}") from None
    _check_downstream(config, n_layers)
    for name, ds in config["datasets"].items():
        try:
            if ds["source"] == "geonames":
                check_template(ds["template"])
                for region in ds["regions"]:
                    _region_spec(region)
            else:
                build_prompts(ds, base_dir)  # small user files: read now so bad rows fail before any job
        except PromptSetError as e:
            raise ConfigError(f"config error at datasets.{name}: {e}") from None


def check_config(config: dict[str, Any], base_dir: str | Path = ".", schema_path: str | Path | None = None) -> dict[str, Any]:
    """Validate a study config (schema, defaults, semantics); return the filled config.

    Raises ConfigError with a one-line message.
    """
    schema = load_schema(schema_path or Path(base_dir) / SCHEMA_FILE)
    filled = validate_schema(dict(config), schema)
    check_semantics(filled, base_dir)
    return filled
