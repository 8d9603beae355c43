"""Rewrite README's two evidence tables from a finished default-study run's ``results/report/significance.md``.

    .venv/bin/python scripts/dev/readme_evidence.py [--significance results/report/significance.md] [--check]

README quotes the raw units of ``places / smollm2``: the per-unit table (fraction of units significant under each
fix and control) and the layer-level mean Moran's I excess per control. Both live between
``<!-- evidence:<name>:begin -->`` / ``<!-- evidence:<name>:end -->`` markers and are rebuilt here, column by column
from the report's own table, so README can only say what the report says. ``--check`` exits 1 when README differs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAIR, SOURCE = "places / smollm2", "units"
#: README table -> (significance.md section, README columns as (header, significance.md column), row filter)
PER_UNIT = ["with sink, folded p", "sink out, folded p", "one-sided p", "shuffled coords", "random-init model",
            "residualised", "name-only prompts", "name-only, residualised"]
LAYER = [("template", "template"), ("residualised", "residualised"), ("name-only", "name-only"),
         ("name-only, last name token", "name-only, last name token"),
         ("name-only, mean of name tokens", "name-only, mean of name tokens"),
         ("name-only, residualised", "name-only, residualised"), ("shuffled coords", "shuffled coords"),
         ("random-init model", "random-init model")]


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table of a markdown text: (header cells, rows of cells)."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            header = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _render(header: list[str], rows: list[list[str]], numeric: int = 1) -> str:
    align = ["---:"] * numeric + ["---"] * (len(header) - numeric)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def evidence_tables(significance: str) -> dict[str, str]:
    """The README tables ``per_unit`` and ``layer_mean_I`` from the text of significance.md."""
    tables = markdown_tables(significance)
    per_unit = next(t for t in tables if "one-sided p" in t[0])
    layer = next(t for t in tables if "statistic" in t[0])
    h, rows = per_unit
    idx = {name: h.index(name) for name in ["prompt set / model", "feature set", "layer", "region", *PER_UNIT]}
    keep = [r for r in rows if r[idx["prompt set / model"]] == PAIR and r[idx["feature set"]] == SOURCE]
    unit_rows = [[r[idx["layer"]], r[idx["region"]], *(r[idx[c]] for c in PER_UNIT)] for r in keep]
    lh, lrows = layer
    lidx = {name: lh.index(name) for name in ["prompt set / model", "feature set", "layer", "region", "statistic",
                                              *(col for _, col in LAYER)]}
    lkeep = [r for r in lrows if r[lidx["prompt set / model"]] == PAIR and r[lidx["feature set"]] == SOURCE
             and r[lidx["statistic"]] == "mean_I"]
    layer_rows = [[r[lidx["layer"]], r[lidx["region"]], *(r[lidx[col]] for _, col in LAYER)] for r in lkeep]
    if not unit_rows or not layer_rows:
        raise SystemExit(f"no rows of {PAIR} / {SOURCE} in significance.md")
    return {"per_unit": _render(["layer", "region", *PER_UNIT], unit_rows),
            "layer_mean_I": _render(["layer", "region", *(name for name, _ in LAYER)], layer_rows)}


def rewrite(readme: str, tables: dict[str, str]) -> str:
    """README with each marked table replaced."""
    for name, table in tables.items():
        pattern = re.compile(rf"(<!-- evidence:{name}:begin -->\n).*?(\n<!-- evidence:{name}:end -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README has no <!-- evidence:{name}:begin/end --> markers")
        readme = pattern.sub(lambda m, table=table: m.group(1) + table + m.group(2), readme)
    return readme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--significance", type=Path, default=ROOT / "results" / "report" / "significance.md")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="only report whether README differs")
    args = ap.parse_args()
    old = args.readme.read_text(encoding="utf-8")
    new = rewrite(old, evidence_tables(args.significance.read_text(encoding="utf-8")))
    if args.check:
        sys.exit(0 if new == old else 1)
    args.readme.write_text(new, encoding="utf-8")
    print("README evidence tables " + ("unchanged" if new == old else "rewritten"))


if __name__ == "__main__":
    main()
