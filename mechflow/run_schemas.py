"""The generated entries of config.schema.yaml: ``sae.runs.*`` and ``snmf.runs.*`` come from the run
dataclasses (:func:`mechflow.sae.run_schema`, :func:`mechflow.snmf.run_schema`).

``python -m mechflow.run_schemas [config.schema.yaml]`` (or :func:`write_run_schemas`) rewrites those two
entries in place, leaving every other line of the file as it is; :func:`check_run_schemas` lists the
entries that are out of date. Kept apart from :mod:`mechflow.runconfig` so that the steps' code digests
do not depend on how the schema file is written.
"""

from __future__ import annotations

import copy
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mechflow.layout import WORKFLOW_ROOT
from mechflow.study import SAE_RUN_PLACEMENT

#: the generated entries of config.schema.yaml: key path -> "module:function" returning the schema
GENERATED_ENTRIES: dict[tuple[str, ...], str] = {
    ("properties", "sae", "properties", "runs", "additionalProperties"): "mechflow.sae.config:run_schema",
    ("properties", "snmf", "properties", "runs", "additionalProperties"): "mechflow.snmf.config:run_schema",
}
#: the section whose runs also take its placement keys (:data:`~mechflow.study.SAE_RUN_PLACEMENT`), and those keys
_PLACED = {"sae": SAE_RUN_PLACEMENT}

SCHEMA_PATH = WORKFLOW_ROOT / "config.schema.yaml"


def generated_entries(schema: dict[str, Any] | None = None) -> dict[tuple[str, ...], dict[str, Any]]:
    """Each generated entry's key path in config.schema.yaml and its schema, freshly generated; a run entry of a
    section in :data:`_PLACED` also takes the section's placement keys, with the enums of ``schema`` (the loaded
    config.schema.yaml; None: the checkout's)."""
    if schema is None:
        schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    out = {}
    for keys, target in GENERATED_ENTRIES.items():
        module, func = target.split(":")
        out[keys] = _with_placement(getattr(importlib.import_module(module), func)(), keys[1], schema)
    return out


def _with_placement(entry: dict[str, Any], section: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A run entry with the section's placement keys (none for most sections): each with the section key's enum and
    no default (the resolution fills the section's value), admitted by every architecture's ``propertyNames``."""
    keys = _PLACED.get(section, ())
    if not keys:
        return entry
    section_props = schema["properties"][section]["properties"]
    for key in keys:
        entry["properties"][key] = {
            "enum": list(section_props[key]["enum"]),
            "description": f"this run's {key} (default: the section's, `{section}.{key}`, which says what each value "
                           f"means); it places the run in the study and is not part of its training config",
        }
    for block in entry.get("allOf", []):
        names = block["then"]["propertyNames"]["enum"]
        names.extend(k for k in keys if k not in names)
    return entry


class _Dumper(yaml.SafeDumper):
    """Block style for the structure, flow style for short leaves (as in the hand-written schema);
    sequences indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


class _Flow(dict):
    pass


class _FlowList(list):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
_Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_WIDTH = 120


def _flow_len(obj: Any) -> int:
    return len(yaml.dump(obj, Dumper=yaml.SafeDumper, default_flow_style=True, sort_keys=False, width=10**6).strip())


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _tidy(obj: Any, col: int) -> Any:
    """Mark the short leaves of ``obj`` (whose keys or items start at column ``col``) for flow style:
    a mapping of scalars and scalar lists that fits on its key's line, or any mapping of <= 60 chars."""
    if isinstance(obj, list):
        if all(_is_scalar(v) for v in obj):
            return _FlowList(obj)
        return [_tidy(v, col + 2) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, v in obj.items():
        if isinstance(v, dict) and v:
            n = _flow_len(v)
            leaf = all(_is_scalar(x) or (isinstance(x, list) and all(map(_is_scalar, x))) for x in v.values())
            fits = col + len(str(key)) + 2 + n <= _WIDTH
            out[key] = _Flow(v) if fits and (leaf or n <= 60) else _tidy(v, col + 2)
        elif isinstance(v, list) and v:
            out[key] = _tidy(v, col + 2)
        else:
            out[key] = v
    return out


def dump_yaml(obj: Any, indent: int = 0) -> str:
    """``obj`` as tidy YAML, every line indented by ``indent`` spaces."""
    text = yaml.dump(_tidy(obj, indent), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10**6,
                     allow_unicode=True)
    return "".join(" " * indent + line if line.strip() else line for line in text.splitlines(keepends=True))


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def replace_yaml_entry(text: str, keys: Sequence[str], value: Any) -> str:
    """Replace the value at ``keys`` (a path of mapping keys in block style) in YAML ``text``, leaving
    every other line as it is. Raises KeyError when the path is not there in block style."""
    lines = text.splitlines(keepends=True)
    start, end, key_line, indent = 0, len(lines), -1, -1
    for key in keys:
        child = None
        found = None
        for i in range(start, end):
            if not _content(lines[i]):
                continue
            ind = _indent_of(lines[i])
            child = ind if child is None else child
            if ind == child and re.match(rf"(['\"]?){re.escape(key)}\1\s*:(\s|$)", lines[i][ind:]):
                found = i
                break
        if found is None:
            raise KeyError(f"{'.'.join(keys)}: {key!r} not found in block style")
        j = found + 1
        while j < end and (not _content(lines[j]) or _indent_of(lines[j]) > child):
            j += 1
        while j > found + 1 and not _content(lines[j - 1]):
            j -= 1
        start, end, key_line, indent = found + 1, j, found, child
    head = lines[key_line][: lines[key_line].index(":", indent) + 1]
    body = dump_yaml(value, indent + 2)
    new = [head + "\n", body] if isinstance(value, (dict, list)) and value else [head + " " + dump_yaml(value).strip() + "\n"]
    return "".join(lines[:key_line] + new + lines[end:])


def _set_in(obj: Any, keys: Sequence[str], value: Any) -> None:
    for key in keys[:-1]:
        obj = obj[key]
    obj[keys[-1]] = value


def _get_in(obj: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        obj = obj[key]
    return obj


def render_run_schemas(text: str) -> str:
    """``text`` of config.schema.yaml with its generated entries replaced by fresh ones (and nothing
    else changed: checked by parsing both)."""
    entries = generated_entries(yaml.safe_load(text))
    new_text = text
    for keys, schema in entries.items():
        new_text = replace_yaml_entry(new_text, keys, schema)
    want = yaml.safe_load(text)
    for keys, schema in entries.items():
        _set_in(want, keys, copy.deepcopy(schema))
    if yaml.safe_load(new_text) != want:
        raise RuntimeError("rewriting the generated entries of the schema changed something else; not written")
    return new_text


def check_run_schemas(path: str | Path = SCHEMA_PATH) -> list[str]:
    """Dotted paths of the generated entries of ``path`` that differ from the dataclasses (empty: in sync)."""
    loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return [".".join(keys) for keys, schema in generated_entries(loaded).items() if _get_in(loaded, keys) != schema]


def write_run_schemas(path: str | Path = SCHEMA_PATH) -> bool:
    """Regenerate the ``sae.runs.*`` and ``snmf.runs.*`` entries of config.schema.yaml from the run
    dataclasses, in place; returns whether the file changed."""
    from mechflow.io import atomic_write_text

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    new_text = render_run_schemas(text)
    if new_text == text:
        return False
    atomic_write_text(path, new_text)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(f"usage: python -m mechflow.run_schemas [config.schema.yaml]\n\n{__doc__.strip()}")
        return 0
    path = Path(args[0]) if args else SCHEMA_PATH
    changed = write_run_schemas(path)
    print(f"{path}: {'generated entries rewritten' if changed else 'generated entries already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
