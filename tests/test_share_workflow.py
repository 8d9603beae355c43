"""The workflow shared as workflow users share them: a wheel installed into a fresh virtualenv runs the tiny study
in a folder outside the repo; another workflow includes it with Snakemake's `module`; `mechflow verify` checks a
run against its archive (all identical; an edited array or a changed study value: that file and only the files it
feeds are different)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import xarray as xr
import yaml
from conftest import REPO, VENV_BIN

from mechflow.plan import parse_dry_run

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
RESULTS = TINY.get("results", "results")  # the tiny study's results folder
#: prompts and activations only: 5 places a region of the tiny study's first prompt set
SMALL = {"datasets": {"tiny": {**TINY["datasets"]["tiny"], "max_per_region": 5}}, "models": TINY["models"],
         "extract": {**TINY["extract"], "hook_layers": {}}, "spatial": {"enabled": False}, "probes": {"enabled": False},
         "sae": {"runs": {}}, "snmf": {"runs": {}}, "report": {"enabled": False}}
MODULE_SNAKEFILE = """module mechflow:
    snakefile: "{snakefile}"
    config: config
use rule * from mechflow as mf_*
"""


def run(cmd, cwd, timeout=1800, check=True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """mechflow's wheel, built from this checkout (the build backend from .venv: nothing downloaded)."""
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, REPO], cwd=out)
    (path,) = out.glob("mechflow-*.whl")
    return path


def fresh_venv(where: Path, reuse_packages: bool) -> Path:
    """A new virtualenv; with ``reuse_packages`` it sees .venv's installed packages through a .pth line (no installs)."""
    run([sys._base_executable, "-m", "venv", where], cwd=where.parent)
    if reuse_packages:
        site = next((where / "lib").glob("python3*/site-packages"))
        (site / "zz_reuse_checkout_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return where / "bin"


def test_the_wheel_carries_the_workflow_and_runs_from_any_folder(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    root = "mechflow/workflow_files/"
    for rel in ("Snakefile", "config.yaml", "config.schema.yaml", "rules/common.smk", "scripts/extract.py",
                "configs/tiny.yaml", "profiles/local/config.yaml", "envs/mechflow.yaml", "requirements/cpu.txt",
                "docs/workflow.rst", "docs/report_caption.rst"):
        assert root + rel in names, rel
    assert not [n for n in names if n.startswith(root + "scripts/dev/") or "__pycache__" in n]
    bin_ = fresh_venv(tmp_path / "venv", reuse_packages=True)
    run([bin_ / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([bin_ / "python", "-c", "import mechflow.layout as l; print(l.WORKFLOW_ROOT)"], cwd=elsewhere).stdout.strip()
    assert Path(where) == next((tmp_path / "venv" / "lib").glob("python3*/site-packages")) / "mechflow" / "workflow_files"
    init = run([bin_ / "mechflow", "init", "my-study"], cwd=elsewhere).stdout
    assert "cd my-study\n  mechflow run --configfile study.yaml" in init
    assert yaml.safe_load((elsewhere / "my-study" / "study.yaml").read_text())["models"]["smollm2"]
    (elsewhere / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    resolved = yaml.safe_load(run([bin_ / "mechflow", "config", "--resolved", "tiny.yaml"], cwd=elsewhere).stdout)
    assert resolved["spatial"]["permutations"] == 99 and resolved["results"] == RESULTS
    # a small study (prompts and activations of 10 places) run by the installed workflow here, then a dry run: nothing to do
    (elsewhere / "small.yaml").write_text(yaml.safe_dump(SMALL))
    run([bin_ / "mechflow", "run", "--configfile", "small.yaml", "--cores", "2"], cwd=elsewhere)
    assert (elsewhere / "results" / "activations" / "tiny" / "minilm" / "resid.nc").exists()
    dry = run([bin_ / "mechflow", "run", "--configfile", "small.yaml", "--", "-n"], cwd=elsewhere).stdout
    assert "Nothing to be done" in dry, dry[-2000:]


def test_a_two_line_outer_workflow_plans_the_study_through_snakemake_module(tmp_path):
    (tmp_path / "Snakefile").write_text(MODULE_SNAKEFILE.format(snakefile=REPO / "Snakefile"))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(TINY))
    out = run([VENV_BIN / "snakemake", "-n", "-c", "1", "--configfile", "study.yaml"], cwd=tmp_path).stdout
    rules = {job.rule for job in parse_dry_run(out)}
    assert {"mf_prompts", "mf_extract", "mf_sae", "mf_spatial", "mf_report", "mf_all"} <= rules, rules
    assert not [r for r in rules if not r.startswith("mf_")]


@pytest.mark.slow
def test_module_use_runs_the_tiny_study(wheel, tmp_path):
    """The outer workflow includes an installed mechflow's Snakefile (a snapshot: edits to the checkout while it runs
    change nothing) and runs the tiny study; a dry run afterwards plans nothing."""
    bin_ = fresh_venv(tmp_path / "venv", reuse_packages=True)
    run([bin_ / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    root = run([bin_ / "python", "-c", "import mechflow.layout as l; print(l.WORKFLOW_ROOT)"], cwd=tmp_path).stdout.strip()
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "Snakefile").write_text(MODULE_SNAKEFILE.format(snakefile=Path(root) / "Snakefile"))
    (outer / "study.yaml").write_text(yaml.safe_dump(TINY))
    snakemake = [bin_ / "python", "-m", "snakemake"]
    run([*snakemake, "-c", "2", "--configfile", "study.yaml"], cwd=outer)
    for rel in ("probes/tiny/minilm/resid.nc", "sae/tiny/minilm/resid/layer4/topk/sae_weights.safetensors", "report/index.html"):
        assert (outer / RESULTS / rel).exists(), rel
    dry = run([*snakemake, "-n", "-c", "1", "--configfile", "study.yaml"], cwd=outer).stdout
    assert nothing_to_do(dry), reasons(dry)


@pytest.fixture(scope="module")
def installed_run(wheel, tmp_path_factory):
    """The wheel installed into a fresh virtualenv (that sees .venv's packages: tests/test_share.py checks the lock
    they come from, `make setup` installs it), and the tiny study run by its `mechflow run` in a folder outside the repo."""
    base = tmp_path_factory.mktemp("installed")
    bin_ = fresh_venv(base / "venv", reuse_packages=True)
    run([bin_ / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=base)
    study = base / "study"
    study.mkdir()
    (study / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run([bin_ / "mechflow", "run", "--configfile", "tiny.yaml", "--cores", "2"], cwd=study)
    return bin_, study


def nothing_to_do(out: str) -> bool:
    return "Nothing to be done" in out


def reasons(out: str) -> str:
    return out[out.find("Reasons:"):][:3000] if "Reasons:" in out else out[-3000:]


def statuses(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        for status in ("within tolerance", "identical", "different", "missing"):
            if line.startswith(status + " "):
                out[line[len(status):].strip().split(":")[0]] = status
    return out


@pytest.mark.slow
def test_installed_wheel_runs_the_tiny_study_archives_and_verifies_it(installed_run, tmp_path):
    bin_, study = installed_run
    assert (study / RESULTS / "report" / "index.html").exists()
    dry = run([bin_ / "mechflow", "run", "--configfile", "tiny.yaml", "--", "-n"], cwd=study).stdout
    assert nothing_to_do(dry), reasons(dry)
    archive = tmp_path / "tiny.tar.gz"
    run([bin_ / "mechflow", "archive", "--configfile", "tiny.yaml", archive], cwd=study)

    same = run([bin_ / "mechflow", "verify", archive, "--results", RESULTS], cwd=study).stdout
    verdicts = statuses(same)
    assert len(verdicts) >= 20 and set(verdicts.values()) == {"identical"}, same

    rerun = run([bin_ / "mechflow", "verify", archive, "--workdir", tmp_path / "rerun", "--cores", "2"], cwd=tmp_path).stdout
    assert statuses(rerun) == verdicts, rerun  # a rerun from the archive alone: every file identical

    edited = tmp_path / "edited"
    shutil.copytree(study / RESULTS, edited)
    probe = "probes/tiny/minilm/resid.nc"
    ds = xr.load_dataset(edited / probe, engine="h5netcdf")
    ds["r2_xy"].values.flat[0] += 0.25
    ds.to_netcdf(edited / probe, engine="h5netcdf")
    proc = run([bin_ / "mechflow", "verify", archive, "--results", edited], cwd=study, check=False)
    after = statuses(proc.stdout)
    assert proc.returncode == 1 and after[probe] == "different"
    assert {k for k, v in after.items() if v != "identical"} == {probe}, proc.stdout
    assert "r2_xy: values differ" in proc.stdout and "same settings" in proc.stdout

    changed = dict(TINY, probes={**TINY["probes"], "folds": 4})
    (study / "tiny.yaml").write_text(yaml.safe_dump(changed))
    plan = run([bin_ / "mechflow", "run", "--configfile", "tiny.yaml", "--", "-n"], cwd=study).stdout
    fed = {o.removeprefix(RESULTS + "/") for job in parse_dry_run(plan) for o in job.outputs}
    assert probe in fed and not [f for f in fed if f.startswith(("activations/", "sae/", "spatial/"))]
    run([bin_ / "mechflow", "run", "--configfile", "tiny.yaml"], cwd=study)
    proc = run([bin_ / "mechflow", "verify", archive, "--results", RESULTS, "--configfile", "tiny.yaml"], cwd=study, check=False)
    after = statuses(proc.stdout)
    differ = {k for k, v in after.items() if v != "identical"}
    assert proc.returncode == 1 and probe in differ and differ <= fed, proc.stdout  # that file, and only what it feeds
    assert "why: study differs at probes.folds (3 -> 4)" in proc.stdout
    assert "changed since the archived run: the step's settings" in proc.stdout
