"""What a study will run and how big it gets, before it runs (``mechflow info --configfile FILE``).

- **Jobs and resources** come from Snakemake itself: a dry run of the whole study (``snakemake -n
  --forceall``) lists every job with its rule, wildcards, outputs, threads and resources, so the
  counts are the workflow's own (the start-of-run summary's, plus ``all``) and the resources are
  exactly what each job asks its executor for.
- **Sizes** come from the resolved study and facts read without running anything: every prompt set
  built (as the pre-run checks do), each model's layers and hook widths from ``config.json`` or the
  GGUF header (no weights loaded). Each output of the dry run gets its expected size: pooled
  activations are exact (prompts x layers x units x 4 bytes, twice with ``extract.keep_sink``),
  token files an upper bound (prompts x ``extract.max_length`` tokens), SAE weights and features,
  semi-NMF factors, spatial outputs exact up to the small coordinates and attributes.
- **Working memory** per job of the steps whose memory grows with the data, estimated from the same
  facts, next to the ``mem_mb`` the job requests. Extraction holds one window of prompts, the gather
  one window of rows (:data:`GATHER_WINDOW_MB`), SAE training two shuffle windows and encoding one batch
  of rows (``features.nc`` is written batch by batch), semi-NMF its layer's matrix in float64 where
  that fits the job's ``mem_mb``, else one block of samples read from disk at every pass plus G
  [samples, factors] (:mod:`mechflow.snmf.blocks`; the result is the same), the spatial step one block of columns sized
  to its ``mem_mb`` (:func:`mechflow.spatial.analysis.columns_per_block`).

:func:`study_plan` runs the dry run and gathers the facts; :func:`build_plan` is the pure part (jobs
+ study + facts -> :class:`Plan`); :func:`format_plan` prints it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechflow.config import DEFAULT_STUDY, SCHEMA_FILE, load_study
from mechflow.contracts import ENCODE_BATCH, GATHER_WINDOW_MB, RESULT_PATHS, SNMF_BLOCK_MB
from mechflow.facts import StudyFacts
from mechflow.resolve import resolve
from mechflow.snmf.blocks import keep_in_memory, working_bytes
from mechflow.spatial.analysis import BYTES_PER_VALUE, CONTROL_VARS, columns_per_block, output_bytes
from mechflow.spatial.datasets import MORAN_VARS
from mechflow.steps.extract import n_extracted

__all__ = ["Job", "FileSize", "RulePlan", "Plan", "PlanError", "PYTHON_MB", "parse_dry_run", "parse_job_stats",
           "dry_run_command", "build_plan", "study_plan", "format_plan", "human"]

REPO = Path(__file__).resolve().parents[1]

#: resident memory of a step's interpreter once torch, numpy, xarray, scipy and numba are imported
#: (measured 565 MB for the spatial step's imports on Linux; rounded up)
PYTHON_MB = 600

#: the arrays SAE training streams: two shuffle windows, each read, concatenated and reordered once
SAE_WINDOW_COPIES = 2 * 3

#: SAE architectures whose weights file holds a ``threshold`` [d_sae]
THRESHOLD_ARCHS = ("jumprelu", "batchtopk", "matryoshka", "gba")

#: what a netCDF file holds beyond its arrays: HDF5 structure, attributes (provenance), small coordinates
NETCDF_OVERHEAD = 16_000


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


@dataclass(frozen=True)
class FileSize:
    """An intermediate: its kind (a :data:`mechflow.contracts.RESULT_PATHS` key, ``sae_dir/<file>`` for an
    SAE run's files), path, expected bytes (None: small, not estimated) and whether that is an upper bound."""

    kind: str
    path: str
    bytes: int | None
    bound: bool = False


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


# ---- the dry run --------------------------------------------------------------------------------


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


def _run_dry_run(proc: subprocess.Popen, timeout: float) -> list[Job]:
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


# ---- sizes --------------------------------------------------------------------------------------


def _kind_patterns() -> list[tuple[str, re.Pattern]]:
    """(kind, regex with named wildcards) of every result path, the most specific first."""
    out = []
    for kind, template in sorted(RESULT_PATHS.items(), key=lambda item: -len(item[1])):
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        tail = r"/(?P<file>[^/]+)" if kind == "sae_dir" else ""
        out.append((kind, re.compile(f"(?:^|/){pattern}{tail}$")))
    return out


_PATTERNS = _kind_patterns()


def match_result(path: str) -> tuple[str, dict[str, str]] | None:
    """(kind, wildcards) of a result path below any results root; SAE run files are ``sae_dir/<file>``."""
    for kind, pattern in _PATTERNS:
        m = pattern.search(path)
        if m:
            wc = {k: v for k, v in m.groupdict().items() if v is not None}
            return (f"{kind}/{wc.pop('file')}" if kind == "sae_dir" else kind), wc
    return None


def _keeps_sink(config: dict[str, Any]) -> bool:
    ex = config["extract"]
    return bool(ex["keep_sink"]) and ex["pooling"] in ("mean", "max") and ex["exclude"] != "none"


def activation_bytes(config: dict[str, Any], facts: StudyFacts, dataset: str, model: str, hook: str) -> int | None:
    """``activations`` [prompt, layer, unit] float32 (and ``sink``, the same shape, with ``keep_sink``)."""
    layers, width = n_extracted(config, facts, model, hook), facts.models[model].widths.get(hook)
    if layers is None or width is None:
        return None
    return facts.n(dataset) * layers * width * 4 * (2 if _keeps_sink(config) else 1)


def token_bytes(config: dict[str, Any], facts: StudyFacts, dataset: str, model: str, hook: str) -> int | None:
    """Upper bound of a token file: every prompt at ``extract.max_length`` tokens, [token, layer, unit]
    float32, plus per-token coordinates (the prompt's, its position and token string)."""
    layers, width = n_extracted(config, facts, model, hook), facts.models[model].widths.get(hook)
    if layers is None or width is None:
        return None
    n, max_len = facts.n(dataset), int(config["extract"]["max_length"])
    per_prompt_coords = facts.prompt_bytes[dataset] // max(n, 1) + 3 * 8 + 64
    return n * max_len * (layers * width * 4 + per_prompt_coords)


def n_features(config: dict[str, Any], facts: StudyFacts, source: str, model: str, hook: str) -> int | None:
    """Features of a spatial source: the hook's units, an SAE run's ``n_features``, a semi-NMF run's factors."""
    kind, _, run = source.partition("-")
    if kind == "units":
        return facts.models[model].widths.get(hook)
    if kind == "sae":
        return int(config["sae"]["runs"][run]["n_features"])
    return int(config["snmf"]["runs"][run]["n_factors"])


def _spatial_controls(config: dict[str, Any], source: str) -> int:
    sp = config["spatial"]
    return int(bool(sp["shuffled_control"])) + int(bool(sp["residualise"])) + int(source == "units" and _keeps_sink(config))


def file_size(kind: str, wc: dict[str, str], config: dict[str, Any], facts: StudyFacts) -> tuple[int | None, bool]:
    """Expected bytes of one result (None: small, not estimated) and whether that is an upper bound."""
    d, m, hook = wc.get("dataset"), wc.get("model"), wc.get("hook")
    if kind == "prompts":
        return facts.prompt_bytes[d], False
    if d is None or d not in facts.regions:
        return None, False
    n, prompts = facts.n(d), facts.prompt_bytes[d]
    bound = config["extract"]["keep_sink"] and config["extract"]["exclude"] == "auto"  # a sink only if the tokenizer has one
    if kind in ("activations", "shard"):
        data = activation_bytes(config, facts, d, m, hook)
        if data is None:
            return None, False
        total = data + prompts + 8 * n
        return (total // int(config["extract"]["shards"]) if kind == "shard" else total), bound
    if kind == "tokens":
        return token_bytes(config, facts, d, m, hook), True
    if kind.startswith("sae_dir/"):
        run = config["sae"]["runs"][wc["run"]]
        F, width = int(run["n_features"]), facts.models[m].widths.get(hook)
        name = kind.partition("/")[2]
        if name == "sae_weights.safetensors":
            if width is None:
                return None, False
            return 4 * (2 * width * F + F + width + (F if run["arch"] in THRESHOLD_ARCHS else 0)), False
        if name == "features.nc":
            return 4 * n * F + prompts + 40 * n, False
        if name == "training.nc":
            return 8 * 24 * (int(run["steps"]) // int(run["log_every"]) + 2), True
        return None, False
    if kind == "snmf":
        run = config["snmf"]["runs"][wc["run"]]
        k, width = int(run["n_factors"]), facts.models[m].widths.get(hook)
        if width is None:
            return None, False
        size = 8 * (width * k + n * k + int(run["max_iter"]) + 1) + prompts
        if config["snmf"]["level"] == "tokens":
            size += 8 * k * n * int(config["extract"]["max_length"])
            return size, True
        return size, False
    if kind in ("moran", "lisa"):
        F, R = n_features(config, facts, wc["source"], m, hook), len(facts.regions[d])
        if F is None:
            return None, False
        if kind == "moran":
            per = len(MORAN_VARS) + _spatial_controls(config, wc["source"]) * len(CONTROL_VARS)
            return 8 * R * F * per + 24 * R + 8 * F, False
        top = int(config["spatial"]["lisa_top_n"])
        U = min(R * top, F)
        return (R * n * U * 34 + R * U * 9 + prompts if top else 0), top > 0
    return None, False


# ---- working memory -----------------------------------------------------------------------------


def job_memory(job: Job, config: dict[str, Any], facts: StudyFacts) -> tuple[int | None, str, bool]:
    """Estimated peak resident bytes of one job (None where small or not estimated), a note, and whether
    the estimate is an upper bound (it counts every prompt at ``extract.max_length`` tokens)."""
    wc, rule = job.wildcards, job.rule
    d, m, hook = wc.get("dataset"), wc.get("model"), wc.get("hook")
    base = PYTHON_MB * 10**6
    if d not in facts.regions or (m is not None and m not in facts.models):
        return None, "", False
    n = facts.n(d)
    ex = config["extract"]
    if rule in ("extract", "extract_shard", "extract_tokens", "sae_splice"):
        weights = facts.models[m].loaded_bytes(str(config["models"][m].get("dtype", "float32")))
        if rule == "sae_splice":
            return base + weights, "model weights", False
        if rule == "extract_tokens":
            tokens = token_bytes(config, facts, d, m, hook) or 0
            return base + weights + tokens // max(n, 1) * min(1024, n), "model weights + one window of prompts", True
        hooks = {hit[1].get("hook") for hit in map(match_result, job.outputs) if hit}
        window = min(1024, n // (int(ex["shards"]) if rule == "extract_shard" else 1) or 1)
        buffers = sum((activation_bytes(config, facts, d, m, h) or 0) // max(n, 1) * window for h in hooks)
        return base + weights + buffers, "model weights + one window of prompts", False
    if rule == "gather_activations":
        shard = (activation_bytes(config, facts, d, m, hook) or 0) // int(ex["shards"])
        return base + min(shard, int(GATHER_WINDOW_MB * 2**20)), "one window of rows at a time", False
    if rule == "sae":
        run, width = config["sae"]["runs"][wc["run"]], facts.models[m].widths.get(hook)
        if width is None:
            return None, "", False
        F = int(run["n_features"])
        rows = n if config["sae"]["level"] == "pooled" else n * int(ex["max_length"])
        windows = SAE_WINDOW_COPIES * min(int(run["shuffle_window"]), rows) * width * 4
        sample = 4 * min(8192, rows) * width * 4  # the initialisation's data sample (and its float64 copies)
        weights = 4 * 4 * (2 * width * F + F + width)  # parameters, gradients, two Adam moments
        batch = 2 * ENCODE_BATCH * (width + F) * 4  # one batch of rows and its features (and their copies)
        return (base + windows + sample + weights + batch,
                "streams 2 shuffle windows; encodes and writes features.nc one batch at a time", False)
    if rule == "snmf":
        run, width = config["snmf"]["runs"][wc["run"]], facts.models[m].widths.get(hook)
        if width is None:
            return None, "", False
        k, tokens = int(run["n_factors"]), config["snmf"]["level"] == "tokens"
        samples = n * int(ex["max_length"]) if tokens else n
        mem_mb = float(job.resources.get("mem_mb", 0) or 0)
        in_memory = not mem_mb or keep_in_memory(width, samples, k, mem_mb, base)
        note = ("the layer in memory as float64 sample blocks" if in_memory else
                f"the layer read from disk in {SNMF_BLOCK_MB:g} MiB sample blocks at every pass; G in memory")
        return base + working_bytes(width, samples, k, in_memory), note, tokens
    if rule == "spatial":
        F, R = n_features(config, facts, wc["source"], m, hook), len(facts.regions[d])
        if F is None:
            return None, "", False
        controls = _spatial_controls(config, wc["source"])
        mem_mb = float(job.resources.get("mem_mb", 0) or 0)
        width = columns_per_block(n, F, mem_mb, R, controls, in_use_bytes=base) if mem_mb else F
        blocks = -(-F // width)
        peak = base + n * min(width, F) * BYTES_PER_VALUE + 2 * output_bytes(F, R, controls)
        return peak, (f"{blocks} column blocks of {width}" if blocks > 1 else "one block of columns"), False
    return None, "", False


# ---- the plan -----------------------------------------------------------------------------------


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
    jobs = _run_dry_run(proc, timeout)
    return build_plan(jobs, config, facts, str(configfile or DEFAULT_STUDY))


# ---- printing -----------------------------------------------------------------------------------


def human(n: float | None) -> str:
    """Bytes as B, kB, MB, GB, TB (powers of 1000, as Snakemake's mem_mb)."""
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header).rstrip(), "  ".join("-" * w for w in widths), *[fmt(r).rstrip() for r in rows]]


def _pattern(kind: str) -> str:
    base, _, name = kind.partition("/")
    return RESULT_PATHS[base] + (f"/{name}" if name else "")


def format_plan(plan: Plan) -> str:
    """The plan as plain text: the study, jobs and resources per rule, every intermediate's size."""
    f = plan.facts
    lines = [f"study {plan.configfile}: {plan.jobs} jobs (Snakemake dry run of the whole study); results under {plan.results}/"]
    for d, regions in f.regions.items():
        lines.append(f"  prompt set {d}: {f.n(d)} prompts ({', '.join(f'{r} {c}' for r, c in regions.items())})")
    for m, mf in f.models.items():
        widths = ", ".join(f"{h} {w}" for h, w in mf.widths.items() if w)
        lines.append(f"  model {m}: {mf.layers} layers; units {widths}; weight files {human(mf.weight_bytes)}")
    lines += ["", "jobs and the resources each job requests; est. peak = estimated resident memory of the largest job",
              "(<= : an upper bound, every prompt counted at extract.max_length tokens)"]
    rows = []
    over = []
    for r in plan.rules:
        flag = ""
        if r.peak_bytes and r.mem_mb and r.peak_bytes > r.mem_mb * 1e6:
            flag = " (over mem_mb)"
            over.append(r.rule)
        peak = ("<= " if r.peak_bound and r.peak_bytes else "") + human(r.peak_bytes) + flag
        rows.append([r.rule, r.jobs, r.threads, r.resources.get("mem_mb", "-"), r.resources.get("gpu", "-"),
                     r.resources.get("runtime", "-"), peak, r.note])
    rows.append(["total", plan.jobs, "", "", "", "", "", ""])
    lines += _table(["rule", "jobs", "threads", "mem_mb", "gpu", "runtime", "est. peak", "note"], rows, {1, 2, 3, 4})
    lines += ["", "intermediates (<= : an upper bound; - : small, not estimated)"]
    kinds: dict[str, list[FileSize]] = {}
    for fs in plan.files:
        kinds.setdefault(fs.kind, []).append(fs)
    rows, total = [], 0
    for kind, fss in kinds.items():
        sizes = [x.bytes for x in fss if x.bytes is not None]
        mark = "<= " if any(x.bound for x in fss) else ""
        largest = mark + human(max(sizes)) if sizes else "-"
        subtotal = mark + human(sum(sizes)) if sizes else "-"
        total += sum(sizes)
        rows.append([_pattern(kind), len(fss), largest, subtotal])
    rows.append(["total", len(plan.files), "", human(total)])
    lines += _table(["file", "files", "largest", "total"], rows, {1, 2, 3})
    if over:
        lines += ["", f"estimated peak above the requested mem_mb: {', '.join(over)} (raise <step>.mem_mb in the study; "
                      "an upper bound may overstate it)"]
    return "\n".join(lines) + "\n"
