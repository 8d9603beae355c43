"""``mechflow init``: a study file to start from: the default study (``config.yaml``) with every key explained by
its description in the schema (``config.schema.yaml``), as comment lines above it."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechflow.config import DEFAULT_STUDY, SCHEMA_FILE, deref, load_schema
from mechflow.io import atomic_write_text
from mechflow.layout import WORKFLOW_ROOT

__all__ = ["STUDY_NAME", "commented_study", "write_study"]

STUDY_NAME = "study.yaml"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.{}-]+):(?P<rest>.*)$")
WIDTH = 110
HEADER = """\
# A mechflow study, written by `mechflow init` from the default study. Each key's comment above it is its
# description in the schema (config.schema.yaml), which also fills the defaults of every key left out.
#   mechflow config --resolved {name}     the complete study this file stands for
#   mechflow info --configfile {name}     the jobs it plans and the size of every result, before a run
#   mechflow run --configfile {name}      run it: results land in ./results/ (the key `results`)

"""


def _child(node: Mapping[str, Any] | None, key: str, root: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema of ``key`` inside an object schema: its property (here or in a conditional block), else the schema
    of any other key (``additionalProperties``)."""
    if node is None:
        return None
    node = deref(node, root)
    blocks = [node] + [deref(b.get("then", {}), root) for b in node.get("allOf", [])] \
        + [deref(b, root) for k in ("anyOf", "oneOf") for b in node.get(k, [])]
    for block in blocks:
        if key in block.get("properties", {}):
            return deref(block["properties"][key], root)
    extra = node.get("additionalProperties")
    return deref(extra, root) if isinstance(extra, Mapping) else None


def _comment(description: str, indent: str) -> list[str]:
    return textwrap.wrap(" ".join(description.split()), WIDTH - len(indent) - 2, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ", break_on_hyphens=False)


def commented_study(study_text: str, schema: Mapping[str, Any]) -> str:
    """``study_text`` (block-style YAML) with each mapping key's schema description as comment lines above it (once per
    schema entry: keys of a second prompt set or model are those of the first)."""
    out, stack = [], []  # stack: (indent, schema node of the key's value)
    explained: set[int] = set()  # schema nodes described once (the second prompt set's keys are the first's)
    for line in study_text.splitlines():
        m = _KEY.match(line)
        if not m or line.lstrip().startswith("#"):
            out.append(line)
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        node = _child(stack[-1][1] if stack else schema, m["key"], schema)
        stack.append((indent, node))
        description = (node or {}).get("description")
        if description and id(node) not in explained:
            explained.add(id(node))
            out += _comment(str(description), m["indent"])
        out.append(line)
    return "\n".join(out) + "\n"


def write_study(folder: str | Path, name: str = STUDY_NAME, force: bool = False) -> Path:
    """Write the commented default study to ``folder/name``; FileExistsError rather than overwrite a study."""
    path = Path(folder) / name
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: not overwritten")
    text = (WORKFLOW_ROOT / DEFAULT_STUDY).read_text(encoding="utf-8")
    body = commented_study(text, load_schema(WORKFLOW_ROOT / SCHEMA_FILE))
    atomic_write_text(path, HEADER.format(name=name) + body)
    return path
