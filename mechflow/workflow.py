"""Glue between the Snakefile / rule scripts and the package.

- :func:`code_digest` hashes the source of the mechflow modules a rule depends on; rules pass it as
  a ``params:`` entry so an edit to library code reruns exactly the affected rules.
- :func:`run_rule` runs a rule script's body with logging into the rule's ``log:`` file, torch
  threads set from ``threads:``, and the traceback logged on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent


def _module_files(name: str) -> list[Path]:
    """Source files of a mechflow module or subpackage (all .py/.json files of a package)."""
    rel = name.removeprefix("mechflow.").replace(".", "/")
    path = PACKAGE_ROOT / rel
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts)
    py = path.with_suffix(".py")
    if py.exists():
        return [py]
    spec = find_spec(name)
    if spec is None or spec.origin is None:
        raise ValueError(f"unknown module {name!r} for code digest")
    return [Path(spec.origin)]


def code_digest(*modules: str) -> str:
    """Short sha256 over the source of the named mechflow modules (e.g. ``"mechflow.extract"``)."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        for path in _module_files(name):
            h.update(str(path.relative_to(PACKAGE_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


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
    except BaseException:
        logger.error("rule %s failed:\n%s", snakemake.rule, traceback.format_exc())
        raise
    finally:
        sys.stderr = stderr
    logger.info("rule %s done", snakemake.rule)
