"""The snakemake command line that runs the workflow (a checkout's, or the installed copy: :mod:`mechflow.layout`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from mechflow.layout import WORKFLOW_ROOT, workflow_root

__all__ = ["snakemake_command"]


def snakemake_command(configfile: str | Path | None = None, cores: str | int = "all", directory: str | Path | None = None,
                      extra: Sequence[str] = ()) -> list[str]:
    """``snakemake -s <workflow>/Snakefile -c <cores> [-d directory] [extra...] [--configfile f]``: results land in
    ``directory`` (default: the current folder). Targets and other options in ``extra`` come before ``--configfile``,
    which takes several values."""
    workflow_root()  # a clear error when neither an installed copy nor a checkout holds the workflow
    exe = Path(sys.executable).parent / "snakemake"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]
    cmd += ["-s", str(WORKFLOW_ROOT / "Snakefile"), "-c", str(cores)]
    if directory is not None:
        cmd += ["--directory", str(directory)]
    cmd += list(extra)
    return cmd + (["--configfile", str(configfile)] if configfile else [])
