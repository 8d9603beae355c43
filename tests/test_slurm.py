"""The workflow through SLURM (profiles/slurm + snakemake-executor-plugin-slurm) against a running cluster.

Written for the single-node cluster of ``scripts/dev/slurm_localhost.sh`` (``make test-slurm`` starts it and
runs this file); any cluster with partitions "cpu" and "gpu" whose nodes see this checkout and the test folder
(``MECHFLOW_SLURM_TEST_DIR``, default the system's temporary folder) will do. Skipped, with one line, where the
plugin, the SLURM commands or a running cluster are missing; with ``MECHFLOW_SLURM_START=1`` the tests start the
localhost cluster themselves.

The first two tests run a study through SLURM and the same study locally, then require every result file to be
the same: arrays, coordinates and safetensors bit for bit, attributes equal except the ``created`` timestamps.
Left out: results/logs and results/benchmarks (timings, hostnames), the report's runtime figure (plots the
benchmarks); the report page is compared loosely (same study digest and title, same number of figures). The
third checks that a study's ``extract.gpu: 1`` becomes ``-p gpu --gpus=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import REPO, VENV_BIN, run_snakemake
from test_workflow import planned_jobs, tiny_config, write_config

pytestmark = pytest.mark.slow

START_SCRIPT = REPO / "scripts" / "dev" / "slurm_localhost.sh"
STATE_DIR = Path(os.environ.get("MECHFLOW_SLURM_DIR", "/tmp/mechflow-slurm"))
PROFILE = REPO / "profiles" / "slurm"
# on top of the profile, for the localhost cluster: no accounting database (so squeue, not sacct, reports
# job states; the cluster keeps finished jobs for an hour), no account, and quick status checks
SLURM_ARGS = ("--profile", str(PROFILE), "--slurm-status-command", "squeue", "--slurm-no-account",
              "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2")
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/")
TIMESTAMP_ATTRS = {"created"}
NOT_COMPARED = ("results/logs/", "results/benchmarks/", "results/report/figures/.snakemake_timestamp",
                "results/report/figures/runtime.png", "results/report/index.html")
RUN_TIMEOUT = 3600


def _slurm(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=check)


def _cluster_problem() -> str | None:
    """Why no job can run on a SLURM cluster here, or None."""
    for tool in ("sbatch", "sinfo", "squeue", "scancel"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    proc = _slurm("sinfo", "-h", "-o", "%P %a %T")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"sinfo failed ({lines[-1] if lines else proc.returncode})"
    parts = {}
    for line in proc.stdout.splitlines():
        name, avail, state = line.split()
        if avail == "up" and state in ("idle", "mixed", "allocated", "completing"):
            parts[name.rstrip("*")] = state
    missing = sorted({"cpu", "gpu"} - set(parts))
    return f"no usable partition {missing} (sinfo: {proc.stdout.split()})" if missing else None


@pytest.fixture(scope="module")
def slurm_cluster():
    """A SLURM cluster that takes jobs (started here only with MECHFLOW_SLURM_START=1)."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="the SLURM plugin is not installed (pip install -e '.[slurm]')")
    with pytest.MonkeyPatch.context() as mp:
        if "SLURM_CONF" not in os.environ and not Path("/etc/slurm/slurm.conf").exists() and (STATE_DIR / "slurm.conf").exists():
            mp.setenv("SLURM_CONF", str(STATE_DIR / "slurm.conf"))
        problem = _cluster_problem()
        if problem and os.environ.get("MECHFLOW_SLURM_START") == "1":
            subprocess.run([str(START_SCRIPT), "start"], check=True, timeout=900)
            if "SLURM_CONF" not in os.environ and not Path("/etc/slurm/slurm.conf").exists():
                mp.setenv("SLURM_CONF", str(STATE_DIR / "slurm.conf"))
            problem = _cluster_problem()
        if problem:
            pytest.skip(f"no SLURM cluster: {problem}; run `make test-slurm` or `{START_SCRIPT.relative_to(REPO)} start` first")
        yield


@pytest.fixture
def slurm_tmp(request):
    """A fresh folder outside pytest's numbered temporary folders, which a concurrent pytest session of the same
    user may delete (it keeps only the last three) while these long runs are under way; kept if the test fails.
    ``MECHFLOW_SLURM_TEST_DIR`` puts it elsewhere (on a multi-node cluster: a folder every node sees)."""
    failed_before = request.session.testsfailed
    path = Path(tempfile.mkdtemp(prefix="mechflow-slurm-test-", dir=os.environ.get("MECHFLOW_SLURM_TEST_DIR")))
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"kept for inspection: {path}")


# ---- comparing two runs' results ---------------------------------------------------------------------


def _result_files(workdir: Path) -> set[str]:
    files = {p.relative_to(workdir).as_posix() for p in (workdir / "results").rglob("*") if p.is_file()}
    return {f for f in files if not f.startswith(NOT_COMPARED)}


def _same_value(a, b) -> bool:
    """Attribute values equal, arrays bit for bit (NaN equals NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and (
            a.tobytes() == b.tobytes() if a.dtype.kind not in "OU" else a.tolist() == b.tolist())
    if isinstance(a, np.generic):
        a = a.item()
    if isinstance(b, np.generic):
        b = b.item()
    return type(a) is type(b) and repr(a) == repr(b)


def _attr_diffs(where: str, a: dict, b: dict) -> list[str]:
    keys = (set(a) | set(b)) - TIMESTAMP_ATTRS
    return [f"{where}: attr {k!r} {a.get(k, '<missing>')!r:.80} != {b.get(k, '<missing>')!r:.80}"
            for k in sorted(keys) if k not in a or k not in b or not _same_value(a[k], b[k])]


def _netcdf_diffs(rel: str, pa: Path, pb: Path) -> list[str]:
    # raw stored values: no CF decoding, masking or scaling between the file and the comparison
    with xr.open_dataset(pa, decode_cf=False, mask_and_scale=False) as da, xr.open_dataset(pb, decode_cf=False, mask_and_scale=False) as db:
        da, db = da.load(), db.load()
    diffs = _attr_diffs(rel, da.attrs, db.attrs)
    if set(da.variables) != set(db.variables):
        return diffs + [f"{rel}: variables {sorted(da.variables)} != {sorted(db.variables)}"]
    for name in sorted(da.variables):
        va, vb = da.variables[name], db.variables[name]
        if va.dims != vb.dims or not _same_value(va.values, vb.values):
            diffs.append(f"{rel}: {name} differs (dims {va.dims} / {vb.dims}, dtype {va.dtype} / {vb.dtype})")
        diffs += _attr_diffs(f"{rel}:{name}", va.attrs, vb.attrs)
    return diffs


def _drop_timestamps(value):
    if isinstance(value, dict):
        return {k: _drop_timestamps(v) for k, v in value.items() if k not in TIMESTAMP_ATTRS}
    return [_drop_timestamps(v) for v in value] if isinstance(value, list) else value


def _safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return _drop_timestamps(header), raw[8 + n:]


def _report_summary(path: Path) -> dict:
    html = path.read_text(encoding="utf-8")
    title = re.search(r"<title>(.*?)</title>", html, re.S)
    digest = re.search(r"config ([0-9a-f]{8,})", html)
    return {"title": title and title.group(1).strip(), "config": digest and digest.group(1), "images": html.count("<img")}


def result_diffs(ours: Path, reference: Path) -> list[str]:
    """Every way the results under ``ours`` differ from those under ``reference`` (empty: the same)."""
    files_a, files_b = _result_files(ours), _result_files(reference)
    diffs = [f"only in {ours.name}: {f}" for f in sorted(files_a - files_b)]
    diffs += [f"only in {reference.name}: {f}" for f in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        pa, pb = ours / rel, reference / rel
        if rel.endswith(".nc"):
            diffs += _netcdf_diffs(rel, pa, pb)
        elif rel.endswith(".json"):
            if _drop_timestamps(json.loads(pa.read_text())) != _drop_timestamps(json.loads(pb.read_text())):
                diffs.append(f"{rel}: JSON differs beyond timestamps")
        elif rel.endswith(".safetensors"):
            if _safetensors_parts(pa) != _safetensors_parts(pb):
                diffs.append(f"{rel}: tensors or header differ")
        elif pa.read_bytes() != pb.read_bytes():
            diffs.append(f"{rel}: bytes differ")
    report_a, report_b = ours / "results/report/index.html", reference / "results/report/index.html"
    if report_a.exists() or report_b.exists():
        if not (report_a.exists() and report_b.exists()):
            diffs.append("results/report/index.html: only in one run")
        elif _report_summary(report_a) != _report_summary(report_b):
            diffs.append(f"report: {_report_summary(report_a)} != {_report_summary(report_b)}")
    return diffs


def slurm_jobs(stderr: str) -> dict[str, str]:
    """SLURM job id -> rule, of every job a Snakemake run submitted (from its log)."""
    return {m.group(1): m.group(2) for m in SUBMITTED.finditer(stderr)}


def slurm_job_table(job_ids) -> dict[str, dict[str, str]]:
    """SLURM's own view of finished or running jobs: id -> state, partition, GRES/TRES request, CPUs, memory."""
    fmt = "%i|%T|%P|%b|%C|%m"
    out = _slurm("squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", fmt, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0]: dict(zip(("state", "partition", "gres", "cpus", "mem"), r[1:])) for r in rows}


def _local_reference(workdir: Path, cfg: dict) -> Path:
    workdir.mkdir()
    write_config(workdir, cfg)
    run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml", timeout=RUN_TIMEOUT)
    return workdir


# ---- the tests ---------------------------------------------------------------------------------------


def test_tiny_study_through_slurm_equals_the_local_run(slurm_cluster, slurm_tmp):
    cfg = tiny_config(analyses=True)  # configs/tiny.yaml: every step of the workflow
    slurm_dir = slurm_tmp / "slurm"
    slurm_dir.mkdir()
    write_config(slurm_dir, cfg)
    proc = run_snakemake(slurm_dir, *SLURM_ARGS, "--configfile", "study.yaml", timeout=RUN_TIMEOUT)
    jobs = slurm_jobs(proc.stderr)
    # every job of the study went through SLURM (the summary line counts them), and SLURM ran them all as
    # the study's resources ask: the cpu partition and no GPU (every <step>.gpu is 0), <step>.threads CPUs
    n_study = int(re.search(r"(\d+) jobs in the whole study", proc.stderr).group(1))
    assert len(jobs) == n_study and n_study >= 15, proc.stderr[-3000:]
    assert set(jobs.values()) >= {"prompts", "extract", "extract_tokens", "sae", "snmf", "spatial", "probes", "report"}
    table = slurm_job_table(jobs)
    assert set(table) == set(jobs)
    for job_id, row in table.items():
        assert row["state"] == "COMPLETED" and row["partition"] == "cpu", (jobs[job_id], row)
        assert "gpu" not in row["gres"], (jobs[job_id], row)
        expected_cpus = {"spatial": cfg.get("spatial", {}).get("threads", 2), "extract": cfg["extract"]["threads"]}
        if jobs[job_id] in expected_cpus:
            assert int(row["cpus"]) == expected_cpus[jobs[job_id]], (jobs[job_id], row)

    reference = _local_reference(slurm_tmp / "local", cfg)
    compared = _result_files(slurm_dir)
    assert sum(f.endswith(".nc") for f in compared) >= 20 and any(f.endswith(".safetensors") for f in compared)
    assert result_diffs(slurm_dir, reference) == []
    # Snakemake's own bookkeeping (params, code digests, software stack) from the SLURM jobs agrees with the local
    # run's: the same plan for both now (nothing, unless the checkout's code changed since these runs)
    assert planned_jobs(slurm_dir) == planned_jobs(reference)


def test_cancelled_slurm_extraction_is_resubmitted_and_gives_the_same_results(slurm_cluster, slurm_tmp):
    cfg = tiny_config(n=400, batch_size=2, threads=1)  # prompts + extraction only, long enough to cancel mid-way
    slurm_dir = slurm_tmp / "slurm"
    slurm_dir.mkdir()
    write_config(slurm_dir, cfg)
    out_dir = slurm_dir / "results/activations/tiny/minilm"
    log_path = slurm_tmp / "first-run.log"
    cmd = [str(VENV_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(slurm_dir), *SLURM_ARGS,
           "--configfile", "study.yaml", "--retries", "0"]  # no in-run retry: the next run has to pick it up
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=slurm_dir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and not list(out_dir.glob(".resid.nc.tmp-*")):
            time.sleep(0.1)
        assert list(out_dir.glob(".resid.nc.tmp-*")), f"extraction never started writing:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.5)  # mid-way through the batches
        extract_jobs = [j for j, rule in slurm_jobs(log_path.read_text()).items() if rule == "extract"]
        assert len(extract_jobs) == 1, log_path.read_text()[-3000:]
        assert slurm_job_table(extract_jobs)[extract_jobs[0]]["state"] == "RUNNING"
        _slurm("scancel", extract_jobs[0], check=True)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:  # stop our own Snakemake (it cancels the jobs it submitted)
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    first = log_path.read_text()
    assert proc.returncode != 0, first[-3000:]
    assert slurm_job_table(extract_jobs)[extract_jobs[0]]["state"] == "CANCELLED"
    assert not (out_dir / "resid.nc").exists()
    assert all(p.name.startswith(".") for p in out_dir.iterdir())  # at most the killed writer's hidden temporary

    rerun = run_snakemake(slurm_dir, *SLURM_ARGS, "--configfile", "study.yaml", "--rerun-incomplete", timeout=RUN_TIMEOUT)
    resubmitted = slurm_jobs(rerun.stderr)
    assert list(resubmitted.values()) == ["extract"], rerun.stderr[-3000:]  # the prompts were kept, extraction redone
    assert slurm_job_table(resubmitted)[next(iter(resubmitted))]["state"] == "COMPLETED"
    assert [p.name for p in out_dir.iterdir()] == ["resid.nc"]

    reference = _local_reference(slurm_tmp / "local", cfg)
    compared = {f for f in _result_files(slurm_dir) if f.endswith(".nc")}
    assert compared == {"results/prompts/tiny.nc", "results/activations/tiny/minilm/resid.nc"}
    assert result_diffs(slurm_dir, reference) == []


def test_gpu_steps_ask_slurm_for_a_gpu_only_where_the_study_says_so(slurm_cluster, slurm_tmp):
    cfg = tiny_config(n=5, gpu=1)  # extract.gpu: 1, the prompts stay a CPU job
    write_config(slurm_tmp, cfg)
    run_snakemake(slurm_tmp, "results/prompts/tiny.nc", "-c", "1", "--configfile", "study.yaml")
    proc = run_snakemake(slurm_tmp, *SLURM_ARGS, "--configfile", "study.yaml", "--retries", "0", "--verbose", check=False)
    out = proc.stdout + proc.stderr
    calls = [line for line in out.splitlines() if line.startswith("sbatch call:")]
    extract = [c for c in calls if "rule_extract_wildcards" in c]
    assert len(extract) == 1, out[-3000:]
    assert " -p gpu " in extract[0] and "--gpus=1" in extract[0], extract[0][:600]
    if "gpu" in _slurm("sinfo", "-h", "-p", "gpu", "-o", "%G", check=True).stdout:  # the gpu partition has GPUs
        assert proc.returncode == 0, out[-3000:]
    else:  # the localhost node has no GPU: SLURM itself refuses the request
        assert proc.returncode != 0 and "Invalid generic resource" in out, out[-3000:]
