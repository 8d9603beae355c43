"""Build hook: the wheel carries the workflow (Snakefile, rules/, scripts/, studies, profiles, envs) under
mechflow/workflow_files/, so an installed mechflow runs from any folder. The repo keeps them at its top level;
an editable install reads them there (mechflow.layout). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: what the wheel carries, relative to the repo's top level (mechflow.layout.WORKFLOW_FILES: tests check they agree)
WORKFLOW_FILES = ("Snakefile", "config.yaml", "config.schema.yaml", "rules", "scripts", "configs", "profiles", "envs",
                  "docs/workflow.rst", "docs/report_caption.rst", "docs/table_caption.rst", "docs/figure_caption.rst",
                  "requirements")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "dev")  # scripts/dev: a developer's local SLURM cluster


class BuildWithWorkflow(build_py):
    """build_py, then a copy of the workflow files into the built package (not for editable installs)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "mechflow" / "workflow_files"
        for rel in WORKFLOW_FILES:
            src, dst = HERE / rel, target / rel
            if not src.exists():
                raise FileNotFoundError(f"workflow file {rel} missing from {HERE}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=SKIP, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildWithWorkflow})
