"""Where the workflow's files are: a checkout's top level, or their copy inside an installed wheel.

A checkout (and an editable install) keeps ``Snakefile``, ``rules/``, ``scripts/``, ``config.yaml``,
``config.schema.yaml``, ``configs/``, ``profiles/``, ``envs/`` and the report's ``docs/*.rst`` at the
top level, beside the ``mechflow`` package. A wheel carries the same files under
``mechflow/workflow_files/`` (setup.py's build step copies :data:`WORKFLOW_FILES` there), so an
installed mechflow runs from any folder. :data:`WORKFLOW_ROOT` is whichever of the two holds a Snakefile.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED_DIR", "CHECKOUT_DIR", "WORKFLOW_FILES", "WORKFLOW_ROOT", "WorkflowFilesMissing", "workflow_root"]

PACKAGE_DIR = Path(__file__).resolve().parent
#: the installed wheel's copy of the workflow files
BUNDLED_DIR = PACKAGE_DIR / "workflow_files"
#: a checkout's top level (the folder above the package)
CHECKOUT_DIR = PACKAGE_DIR.parent
#: what a wheel carries, relative to the workflow root: files and folders (setup.py keeps its own copy of this list;
#: tests/test_share.py checks that they agree)
WORKFLOW_FILES = ("Snakefile", "config.yaml", "config.schema.yaml", "rules", "scripts", "configs", "profiles", "envs",
                  "docs/workflow.rst", "docs/report_caption.rst", "docs/table_caption.rst", "docs/figure_caption.rst",
                  "requirements")


class WorkflowFilesMissing(FileNotFoundError):
    """Neither an installed copy nor a checkout holds the workflow's Snakefile."""


def workflow_root() -> Path:
    """The folder holding the Snakefile and the rest of :data:`WORKFLOW_FILES`: the installed copy, else the checkout."""
    for root in (BUNDLED_DIR, CHECKOUT_DIR):
        if (root / "Snakefile").is_file():
            return root
    raise WorkflowFilesMissing(f"mechflow: no Snakefile in {BUNDLED_DIR} (an installed wheel) or {CHECKOUT_DIR} (a checkout): "
                               "reinstall mechflow from a wheel built with its workflow files")


try:
    WORKFLOW_ROOT = workflow_root()
except WorkflowFilesMissing:  # reported by whatever needs the files (`mechflow run`, ...), not at import
    WORKFLOW_ROOT = CHECKOUT_DIR
