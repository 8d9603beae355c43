"""Study files: read, validated against the JSON schema, defaults filled, numbers typed as the schema says.

- :func:`load_study` reads a study file; :func:`workflow_study` picks what Snakemake runs: the
  ``--configfile`` given (nothing is merged into it), else the default study ``config.yaml``.
- :func:`validate_schema` validates against ``config.schema.yaml`` and fills its defaults;
  :func:`coerce_numbers` types numbers as the schema says (``lr: 1`` and ``lr: 1.0`` alike), so
  the canonical form (:func:`mechflow.study.canonical`) compares equal whenever the values do.
- :func:`config_reference`: the README's table of every key, generated from the schema.

This module knows the schema and nothing else of the study: the typed run configs, the facts, the
checks and the canonical study are :func:`mechflow.resolve.resolve_study`'s. Every problem is a
:class:`~mechflow.study.ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mechflow.study import ConfigError

SCHEMA_FILE = "config.schema.yaml"
#: the default study, used when no --configfile is given
DEFAULT_STUDY = "config.yaml"


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


#: the YAML tags a study may use: those of YAML's core schema that ``yaml.SafeLoader`` builds (plain values)
SAFE_TAGS = (frozenset(yaml.SafeLoader.yaml_constructors) | {"tag:yaml.org,2002:merge"}) - {None}
#: top-level keys that make Snakemake's config loader (YTE) evaluate Python expressions in the file
TEMPLATE_KEYS = ("__use_yte__",)


def _short_tag(tag: str) -> str:
    """``tag:yaml.org,2002:python/name:os.system`` -> ``!!python/name`` (the tag without its argument)."""
    if tag.startswith("tag:yaml.org,2002:"):
        return "!!" + tag.removeprefix("tag:yaml.org,2002:").split(":", 1)[0]
    return tag


def _check_tags(node: yaml.Node, path: list[str], source: str, seen: set[int]) -> None:
    """ConfigError for the first node (depth first) whose tag is outside :data:`SAFE_TAGS`."""
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    if node.tag not in SAFE_TAGS:
        where = ".".join(path) or "(top level)"
        raise ConfigError("", f"YAML tag {_short_tag(node.tag)} is not allowed ({where}, {source} line "
                          f"{node.start_mark.line + 1}); a study holds plain values: strings, numbers, lists, mappings")
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _check_tags(key, path, source, seen)
            _check_tags(value, [*path, str(key.value) if isinstance(key, yaml.ScalarNode) else "?"], source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_tags(item, [*path, str(i)], source, seen)


def load_study(path: str | Path) -> dict[str, Any]:
    """Read one study file (YAML or JSON) with YAML's safe loader; one-line ConfigError when it cannot be read.

    Every node's tag is checked on the composed document, before any object is built: a tag outside
    :data:`SAFE_TAGS` (``!!python/name``, ``!!python/object/apply``, a local ``!tag``) is
    ``config error: YAML tag !!python/name is not allowed (report.title, my.yaml line 3); ...``. So is a
    YTE template (``__use_yte__``), whose expressions Snakemake's own loader would evaluate."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_tags(node, [], Path(path).name, set())
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError("(file)", f"{path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ConfigError("(file)", f"cannot read {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("(file)", f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("(file)", f"{path} must hold a mapping of sections, got {type(data).__name__}")
    for key in TEMPLATE_KEYS:
        if key in data:
            raise ConfigError(key, "a study file is plain YAML, not a YTE template (Snakemake evaluates its "
                              "expressions when it loads the file); write the values out")
    return data


def check_study_files(paths: list[Any]) -> None:
    """Read every study file safely (:func:`load_study`); the first problem is one ConfigError. What the
    Snakefile and ``mechflow run`` call on the ``--configfile`` files, whose values Snakemake itself reads
    with a loader that builds Python objects from ``!!python/...`` tags."""
    for path in paths:
        load_study(path)


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


def deref(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with its ``$ref`` chain followed to the definition in ``root``."""
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def _validator(schema: Mapping[str, Any], root: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of a sub-schema whose ``$ref``s point into the root schema's definitions."""
    return jsonschema.Draft202012Validator({**schema, "definitions": root.get("definitions", {})})


def coerce_numbers(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    """``instance`` with integers turned into floats wherever the schema allows a number but no integer."""
    schema = deref(schema, root)
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if isinstance(instance, int) and not isinstance(instance, bool) and "number" in types and "integer" not in types:
        return float(instance)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            sub = deref(sub, root)
            if key != "allOf" and not _validator(sub, root).is_valid(instance):
                continue
            instance = coerce_numbers(instance, sub, root)
    if "if" in schema and _validator(schema["if"], root).is_valid(instance):
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


def _schema_error(error: jsonschema.ValidationError, suffix: str = "") -> ConfigError:
    """One ConfigError for a schema violation: the key it is at and the clearest message."""
    best = jsonschema.exceptions.best_match([error])
    msg = best.message
    if best.validator == "additionalProperties":
        msg = msg.replace("Additional properties are not allowed", "unknown key(s)")
    if best.validator in ("oneOf", "anyOf") and best.context:
        msg = "; or ".join(dict.fromkeys(e.message for e in best.context))
    if best.validator == "not" and isinstance(best.schema, Mapping) and "x-message" in best.schema:
        key, _, msg = str(best.schema["x-message"]).partition(": ")  # the schema's own words: "<sub-key>: <message>"
        return ConfigError(f"{_key_path(best)}.{key}", msg + suffix)
    return ConfigError(_key_path(best), msg + suffix)


def _fill_defaults(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Fill ``default`` values of object properties in place (recursing into objects and maps); the defaults of an
    ``allOf`` block's ``then`` apply where its ``if`` holds (settings of one ``source`` only)."""
    schema = deref(schema, root)
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    for block in schema.get("allOf", []):
        if "then" in block and "if" in block and _validator(block["if"], root).is_valid(instance):
            _fill_defaults(instance, block["then"], root)
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
        raise _schema_error(errors[0])
    filled = copy.deepcopy(config)
    _fill_defaults(filled, schema, schema)
    errors = list(validator.iter_errors(filled))
    if errors:  # a default that violates the schema is a bug in the schema itself
        raise _schema_error(errors[0], " (after filling defaults)")
    return filled


# ---- the config reference (README), generated from the schema ---------------------------------------


def _has_children(schema: Mapping[str, Any]) -> bool:
    extra = schema.get("additionalProperties")
    return bool(schema.get("properties")) or (isinstance(extra, dict) and _has_children(extra)) or any(
        "then" in block for block in schema.get("allOf", []))


def _fmt(value: Any) -> str:
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
    schema = deref(schema, root)
    rows: list[tuple[str, str, str]] = []
    conditional = {k for block in schema.get("allOf", []) for k in block.get("then", {}).get("properties", {})}
    for key, sub in schema.get("properties", {}).items():
        sub = deref(sub, root)
        if key in conditional and "default" not in sub:
            continue  # its default holds under a condition: listed with that condition below
        if _has_children(sub):
            rows += reference_rows(sub, root, f"{prefix}{key}.", only)
        else:
            default = _fmt(sub["default"]) if "default" in sub else "–"
            rows.append((f"`{prefix}{key}`", default, (f"({only}) " if only else "") + _meaning(sub)))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and _has_children(deref(extra, root)):
        rows += reference_rows(extra, root, f"{prefix}<name>.", only)
    for block in schema.get("allOf", []):
        if "then" in block:
            cond = ", ".join(f"{k} {_condition(v)}" for k, v in block.get("if", {}).get("properties", {}).items())
            base = {k: deref(v, root) for k, v in schema.get("properties", {}).items()}
            props = {k: {**({"description": base[k]["description"]} if "description" in base.get(k, {}) else {}), **v}
                     for k, v in block["then"].get("properties", {}).items()}
            rows += reference_rows({**block["then"], "properties": props}, root, prefix, cond)
    return rows


def config_reference(schema: Mapping[str, Any]) -> str:
    """The README's config reference: one markdown table row per key of the schema."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| {k} | {d} | {m} |" for k, d, m in reference_rows(schema)]
    return "\n".join(lines) + "\n"
