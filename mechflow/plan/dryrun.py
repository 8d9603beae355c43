"""The jobs of a study from Snakemake itself: a dry run of the whole study (``snakemake -n --forceall``)
lists every job with its rule, wildcards, outputs, threads and resources, so the counts are the
workflow's own (the start-of-run summary's, plus ``all``) and the resources are exactly what each job
asks its executor for."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechflow.layout import WORKFLOW_ROOT

__all__ = ["REPO", "Job", "PlanError", "dry_run_command", "parse_dry_run", "parse_job_stats", "run_dry_run"]

REPO = WORKFLOW_ROOT  # the Snakefile's folder: a checkout, or an installed wheel's copy (mechflow.layout)


class PlanError(RuntimeError):
    """The study cannot be planned (the dry run failed); the message is Snakemake's last lines."""


@dataclass(frozen=True)
class Job:
    """One job of the dry run."""

    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    threads: int = 1
    resources: dict[str, str] = field(default_factory=dict)


def dry_run_command(configfile: str | Path | None, snakefile: str | Path = REPO / "Snakefile") -> list[str]:
    """``snakemake -n --forceall`` of the whole study (every job, whatever exists already). ``--cores`` is
    large so that threads are reported as the rules ask, not capped at this machine's cores."""
    exe = Path(sys.executable).parent / "snakemake"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]
    cmd += ["-s", str(snakefile), "--dry-run", "--forceall", "--nolock", "--cores", "1024"]
    return cmd + (["--configfile", str(configfile)] if configfile else [])


_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):\s*$")
_FIELD = re.compile(r"^\s{4}(\w+): (.*)$")


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(", "):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_dry_run(text: str) -> list[Job]:
    """The jobs of a Snakemake dry-run listing (``rule x:`` blocks with indented ``output:``,
    ``wildcards:``, ``threads:`` and ``resources:`` lines; threads are listed only when > 1)."""
    jobs: list[Job] = []
    current: dict[str, Any] | None = None

    def close() -> None:
        if current is not None:
            jobs.append(Job(**current))

    for line in text.splitlines():
        m = _RULE.match(line)
        if m:
            close()
            current = {"rule": m.group(1)}
            continue
        if current is None:
            continue
        f = _FIELD.match(line)
        if f is None:
            if line and not line.startswith(" "):  # the block ended
                close()
                current = None
            continue
        key, value = f.groups()
        if key == "output":
            current["outputs"] = tuple(p.strip() for p in value.split(", ") if p.strip())
        elif key == "wildcards":
            current["wildcards"] = _pairs(value)
        elif key == "threads":
            current["threads"] = int(value)
        elif key == "resources":
            current["resources"] = _pairs(value)
    close()
    return jobs


def parse_job_stats(text: str) -> dict[str, int]:
    """Rule -> jobs of the dry run's ``Job stats`` table (without the total)."""
    if "Job stats:" not in text:
        return {}
    counts = {}
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m is None:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def run_dry_run(proc: subprocess.Popen, timeout: float) -> list[Job]:
    """The jobs of a started dry run (:func:`dry_run_command`), checked against its ``Job stats``; a
    :class:`PlanError` if it fails, takes longer than ``timeout`` seconds or cannot be read."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise PlanError(f"the Snakemake dry run took longer than {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [line for line in (err + "\n" + out).splitlines() if line.strip()]
        mech = [line for line in lines if line.startswith("mechflow:")]
        raise PlanError(mech[-1] if mech else "the Snakemake dry run failed:\n" + "\n".join(lines[-15:]))
    jobs = parse_dry_run(out)
    listed: dict[str, int] = {}
    for job in jobs:
        listed[job.rule] = listed.get(job.rule, 0) + 1
    if listed != parse_job_stats(out):  # the listing's format changed: say so rather than print wrong counts
        raise PlanError(f"could not read Snakemake's dry run: its jobs {listed} disagree with its Job stats "
                        f"{parse_job_stats(out)}")
    return jobs
