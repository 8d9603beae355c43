"""What a study will run and how big it gets, before it runs (``mechflow info --configfile FILE``).

- **Jobs and resources** come from Snakemake itself: a dry run of the whole study (``snakemake -n
  --forceall``) lists every job with its rule, wildcards, outputs, threads and resources
  (:mod:`mechflow.plan.dryrun`).
- **Sizes** come from the resolved study and facts read without running anything: each output of the dry
  run gets its expected size, exact or an upper bound (:mod:`mechflow.plan.sizes`).
- **Working memory** per job of the steps whose memory grows with the data, estimated from the same
  facts, next to the ``mem_mb`` the job requests (:mod:`mechflow.plan.memory`).

:func:`study_plan` runs the dry run and gathers the facts; :func:`build_plan` is the pure part (jobs
+ study + facts -> :class:`Plan`, :mod:`mechflow.plan.build`); :func:`format_plan` prints it
(:mod:`mechflow.plan.printing`). The submodules import each other bottom-up (dryrun, sizes -> memory ->
build -> printing), never this package.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from mechflow.config import DEFAULT_STUDY, SCHEMA_FILE, load_study
from mechflow.plan.build import Plan, RulePlan, build_plan
from mechflow.plan.dryrun import REPO, Job, PlanError, dry_run_command, parse_dry_run, parse_job_stats, run_dry_run
from mechflow.plan.memory import PYTHON_MB, SAE_WINDOW_COPIES, job_memory
from mechflow.plan.printing import format_plan, human
from mechflow.plan.sizes import (
    NETCDF_OVERHEAD,
    THRESHOLD_ARCHS,
    FileSize,
    activation_bytes,
    file_size,
    match_result,
    n_features,
    token_bytes,
)
from mechflow.resolve import resolve

__all__ = ["Job", "FileSize", "RulePlan", "Plan", "PlanError", "PYTHON_MB", "parse_dry_run", "parse_job_stats",
           "dry_run_command", "build_plan", "study_plan", "format_plan", "human", "REPO", "SAE_WINDOW_COPIES",
           "THRESHOLD_ARCHS", "NETCDF_OVERHEAD", "match_result", "activation_bytes", "token_bytes", "n_features",
           "file_size", "job_memory", "run_dry_run"]


def study_plan(configfile: str | Path | None = None, base_dir: str | Path | None = None, timeout: float = 900) -> Plan:
    """Plan a study file (None: the default study): the Snakemake dry run (in a subprocess, from
    ``base_dir``, default the current directory, as a run would) and the facts, gathered side by side."""
    base = Path(base_dir or Path.cwd()).resolve()
    path = Path(configfile).resolve() if configfile else None
    proc = subprocess.Popen(dry_run_command(path), cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        resolved = resolve(load_study(path or REPO / DEFAULT_STUDY), base_dir=base, schema_path=REPO / SCHEMA_FILE)
        config, facts = resolved.study, resolved.facts
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    jobs = run_dry_run(proc, timeout)
    return build_plan(jobs, config, facts, str(configfile or DEFAULT_STUDY))
