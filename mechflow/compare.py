"""Compare two results folders array by array: are they the same results?

Every result file under both roots is compared by what it holds, not by its bytes (netCDF files
carry a creation time): netCDF files by each variable's and coordinate's dtype, shape and values
(bit for bit, NaN equal to NaN), safetensors by each tensor, JSON (``cfg.json``) and CSV / Markdown
by content. Provenance attributes that name when or from which code a file was made
(:data:`VOLATILE_ATTRS`) are left out; every other attribute must be equal. Logs, benchmark timings,
checkpoints and the report's HTML and figures (which embed timings) are not results and are skipped.

:func:`compare_roots` returns one :class:`FileComparison` per file; ``python -m mechflow.compare A B``
prints them and exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from safetensors.numpy import load_file

from mechflow.contracts import RESULT_PATHS

__all__ = ["VOLATILE_ATTRS", "SKIPPED_DIRS", "FileComparison", "compare_files", "compare_roots", "is_result", "main"]

#: attrs that record when, by which code or with which settings digest a file was made (not what it holds)
VOLATILE_ATTRS = frozenset({"created", "config_digest", "mechflow_version", "code", "prompts_config_digest",
                            "upstream_config_digest"})
#: folders under a results root that hold no results (logs, timings, training checkpoints, the rendered report)
SKIPPED_DIRS = (RESULT_PATHS["logs"], RESULT_PATHS["benchmarks"], RESULT_PATHS["sae_checkpoints"].split("/")[0],
                RESULT_PATHS["report_figures"])
#: files compared by their text
TEXT_SUFFIXES = (".json", ".csv", ".md", ".txt")


@dataclass(frozen=True)
class FileComparison:
    """One file's verdict: ``identical``, ``different`` (with the first difference found) or ``missing``."""

    path: str
    status: str
    detail: str = ""


def compare_roots(a: str | Path, b: str | Path) -> list[FileComparison]:
    """Every result file under ``a`` or ``b`` (paths relative to the roots), compared."""
    a, b = Path(a), Path(b)
    files = sorted({p.relative_to(root).as_posix() for root in (a, b) for p in root.rglob("*")
                    if p.is_file() and is_result(p.relative_to(root).as_posix())})
    out = []
    for rel in files:
        if not (a / rel).exists() or not (b / rel).exists():
            out.append(FileComparison(rel, "missing", f"only under {a if (a / rel).exists() else b}"))
            continue
        detail = compare_files(a / rel, b / rel)
        out.append(FileComparison(rel, "different" if detail else "identical", detail or ""))
    return out


def compare_files(a: Path, b: Path) -> str | None:
    """None when two result files hold the same results, else the first difference, in words."""
    if a.suffix == ".nc":
        return _compare_netcdf(a, b)
    if a.suffix == ".safetensors":
        return _compare_arrays(load_file(str(a)), load_file(str(b)))
    if a.suffix == ".json":
        left, right = (json.loads(p.read_text(encoding="utf-8")) for p in (a, b))
        return None if _drop_volatile(left) == _drop_volatile(right) else "JSON content differs"
    if a.suffix in TEXT_SUFFIXES:
        return None if a.read_bytes() == b.read_bytes() else "text differs"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def is_result(rel: str) -> bool:
    """Whether a path relative to a results root is a result (not a log, timing, checkpoint or the rendered report)."""
    return not any(rel == d or rel.startswith(d + "/") for d in SKIPPED_DIRS) and not rel.endswith((".html", ".log"))


def _drop_volatile(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if k not in VOLATILE_ATTRS}
    return value


def _compare_netcdf(a: Path, b: Path) -> str | None:
    with xr.open_dataset(a, engine="h5netcdf") as left, xr.open_dataset(b, engine="h5netcdf") as right:
        names = (set(left.variables), set(right.variables))
        if names[0] != names[1]:
            return f"variables differ: {sorted(names[0] ^ names[1])}"
        for name in sorted(names[0]):
            x, y = left[name], right[name]
            if x.dims != y.dims:
                return f"{name}: dims {x.dims} vs {y.dims}"
            diff = _compare_arrays({name: x.values}, {name: y.values})
            if diff:
                return diff
            attrs = (_drop_volatile(dict(x.attrs)), _drop_volatile(dict(y.attrs)))
            if not _attrs_equal(*attrs):
                return f"{name}: attrs differ"
        if not _attrs_equal(_drop_volatile(dict(left.attrs)), _drop_volatile(dict(right.attrs))):
            keys = sorted(k for k in set(left.attrs) | set(right.attrs) if k not in VOLATILE_ATTRS
                          and not _attrs_equal({0: left.attrs.get(k)}, {0: right.attrs.get(k)}))
            return f"file attrs differ: {keys}"
    return None


def _compare_arrays(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> str | None:
    if set(left) != set(right):
        return f"arrays differ: {sorted(set(left) ^ set(right))}"
    for name in sorted(left):
        x, y = np.asarray(left[name]), np.asarray(right[name])
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        same = np.array_equal(x, y, equal_nan=True) if x.dtype.kind in "fc" else np.array_equal(x, y)
        if not same:
            if x.dtype.kind in "fc":
                gap = float(np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64))))
                return f"{name}: values differ (max |a - b| = {gap:.3g})"
            return f"{name}: values differ"
    return None


def _attrs_equal(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) if isinstance(a[k], (np.ndarray, list))
               else a[k] == b[k] for k in a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mechflow.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="a results folder")
    parser.add_argument("b", help="another results folder")
    args = parser.parse_args(argv)
    results = compare_roots(args.a, args.b)
    for r in results:
        if r.status != "identical":
            print(f"{r.status:9s} {r.path}: {r.detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("identical", "different", "missing")}
    print(f"{counts['identical']} identical, {counts['different']} different, {counts['missing']} missing "
          f"({len(results)} result files)")
    return 0 if counts["identical"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
