"""Glue between the Snakefile / rule scripts and the package.

- :func:`script_code_digest` hashes the mechflow code a rule script runs: every mechflow module it
  imports, followed through the package's own imports (a static closure, so imports inside functions
  count too). Rules pass it as a ``params:`` entry, so a change of behaviour in library code reruns
  exactly the steps that run that code. The hash is over the modules' syntax trees without docstrings,
  so comment and docstring edits rerun nothing.
- :func:`run_rule` runs a rule script's body with logging into the rule's ``log:`` file, torch
  threads set from ``threads:``, and the traceback logged on failure.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from mechflow.io import DamagedFileError

PACKAGE_ROOT = Path(__file__).resolve().parent
DATA_SUFFIXES = (".json", ".csv", ".yaml")


def _module_file(name: str) -> Path | None:
    """Source file of a mechflow module or package (``__init__.py``); None for a name that is neither."""
    rel = PACKAGE_ROOT.joinpath(*name.split(".")[1:])
    if (rel / "__init__.py").exists():
        return rel / "__init__.py"
    if rel.with_suffix(".py").exists():
        return rel.with_suffix(".py")
    return None


def _imports(path: Path, module: str) -> set[str]:
    """mechflow modules named by the import statements of one file (anywhere in it), and their parents."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule`
        else:
            continue
        for name in names:
            if name == "mechflow" or name.startswith("mechflow."):
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if _module_file(m) is not None}


def imported_modules(script: str | Path) -> list[str]:
    """Every mechflow module a script runs: its imports, followed through the package (sorted)."""
    todo = sorted(_imports(Path(script), "__main__"))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(_imports(_module_file(name), name) - seen)  # type: ignore[arg-type]
    return sorted(seen)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


@cache
def module_digest(path: Path) -> str:
    """sha256 of a module's behaviour: its syntax tree without docstrings (comments never reach it)."""
    tree = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return hashlib.sha256(ast.dump(tree, annotate_fields=True, include_attributes=False).encode()).hexdigest()


def code_digest(*modules: str) -> str:
    """Short sha256 over the named mechflow modules' code and the data files beside them."""
    h = hashlib.sha256()
    folders: set[Path] = set()
    for name in sorted(set(modules)):
        path = _module_file(name)
        if path is None:
            raise ValueError(f"unknown module {name!r} for code digest")
        h.update(f"{name}:{module_digest(path)}".encode())
        folders.add(path.parent)
    for folder in sorted(folders):  # data the code reads (region presets...), by content
        for data in sorted(p for p in folder.iterdir() if p.suffix in DATA_SUFFIXES):
            h.update(str(data.relative_to(PACKAGE_ROOT)).encode() + data.read_bytes())
    return h.hexdigest()[:16]


def script_code_digest(script: str | Path) -> str:
    """Digest of the mechflow code a rule script runs (see :func:`imported_modules`)."""
    return code_digest(*imported_modules(script))


class _StreamToLogger:
    """File-like object that sends writes to a logger (for stray prints and progress bars)."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger, self.level = logger, level

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").splitlines():
            if line.strip():
                self.logger.log(self.level, line.rstrip())
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def run_rule(body: Callable[[Any], None], snakemake: Any) -> None:
    """Run ``body(snakemake)`` with logging to the rule's log file; re-raise on failure."""
    log_path = Path(snakemake.log[0]) if len(snakemake.log) else None
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.__stderr__)]
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    logger = logging.getLogger(f"mechflow.rule.{snakemake.rule}")
    threads = int(getattr(snakemake, "threads", 1) or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
    logger.info("rule %s wildcards=%s threads=%d", snakemake.rule, dict(snakemake.wildcards), threads)
    stderr = sys.stderr
    sys.stderr = _StreamToLogger(logging.getLogger("mechflow.progress"), logging.INFO)
    try:
        body(snakemake)
    except DamagedFileError as e:  # one line that says which file and how to rebuild it, no traceback
        logger.error("rule %s: %s", snakemake.rule, e)
        raise SystemExit(f"mechflow: rule {snakemake.rule}: {e}") from None
    except BaseException:
        logger.error("rule %s failed:\n%s", snakemake.rule, traceback.format_exc())
        raise
    finally:
        sys.stderr = stderr
    logger.info("rule %s done", snakemake.rule)
