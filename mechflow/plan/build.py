"""The plan of a study, the pure part: the dry run's jobs + the resolved study + its facts -> :class:`Plan`
(each rule's jobs, the resources each job requests and the estimated peak of its largest job; every
output's expected size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechflow.facts import StudyFacts
from mechflow.plan.dryrun import Job
from mechflow.plan.memory import job_memory
from mechflow.plan.sizes import NETCDF_OVERHEAD, FileSize, file_size, match_result

__all__ = ["RulePlan", "Plan", "build_plan"]


@dataclass(frozen=True)
class RulePlan:
    """A rule's jobs, what each job requests, and the estimated peak memory of its largest job."""

    rule: str
    jobs: int
    threads: int
    resources: dict[str, str]
    peak_bytes: int | None = None
    note: str = ""
    peak_bound: bool = False  # the estimate is an upper bound (token counts at extract.max_length)

    @property
    def mem_mb(self) -> float | None:
        value = self.resources.get("mem_mb")
        return float(value) if value not in (None, "") else None


@dataclass(frozen=True)
class Plan:
    configfile: str
    results: str
    rules: list[RulePlan]
    files: list[FileSize]
    facts: StudyFacts

    @property
    def jobs(self) -> int:
        return sum(r.jobs for r in self.rules)


def build_plan(jobs: list[Job], config: dict[str, Any], facts: StudyFacts, configfile: str = "") -> Plan:
    """Rules (jobs, threads, resources, estimated peak of the largest job) and every output's expected size."""
    rules: dict[str, list[Job]] = {}
    for job in jobs:
        rules.setdefault(job.rule, []).append(job)
    plans = []
    for rule, js in rules.items():
        peak, note, bound = max((job_memory(j, config, facts) for j in js), key=lambda p: p[0] or 0)
        threads = max(j.threads for j in js)
        resources = {k: v for k, v in js[0].resources.items() if k in ("mem_mb", "gpu", "runtime", "disk_mb")}
        plans.append(RulePlan(rule, len(js), threads, resources, peak, note, bound))
    files = []
    for job in jobs:
        for path in job.outputs:
            hit = match_result(path)
            if hit is None:
                continue
            size, bound = file_size(*hit, config, facts)
            if size is not None and path.endswith(".nc"):
                size += NETCDF_OVERHEAD
            files.append(FileSize(hit[0], path, size, bound))
    return Plan(configfile, str(config["results"]), plans, files, facts)
