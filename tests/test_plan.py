"""``mechflow info``: the plan of a study (jobs, resources, sizes) before it runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import xarray as xr
from conftest import REPO, VENV_BIN

from mechflow.facts import gather_facts
from mechflow.plan import (
    PYTHON_MB,
    Job,
    activation_bytes,
    build_plan,
    format_plan,
    match_result,
    parse_dry_run,
    parse_job_stats,
)

LISTING = """Building DAG of jobs...
Job stats:
job        count
-------  -------
extract        1
spatial        2
total          3

[Mon Nov 30 11:36:40 2026]
rule extract:
    input: results/prompts/d.nc, /models/m/model.safetensors
    output: results/activations/d/m/resid.nc, results/activations/d/m/mlp_hidden.nc
    log: results/logs/extract/d/m.log
    jobid: 3
    reason: Forced execution
    wildcards: dataset=d, model=m
    threads: 4
    resources: tmpdir=/tmp, gpu=1, mem_mb=16000, mem=16 GB, mem_mib=15259

[Mon Nov 30 11:36:40 2026]
rule spatial:
    input: results/activations/d/m/resid.nc
    output: results/spatial/d/m/resid/layer2/units/moran.nc, results/spatial/d/m/resid/layer2/units/lisa.nc
    jobid: 5
    wildcards: dataset=d, model=m, hook=resid, layer=2, source=units
    resources: tmpdir=/tmp, gpu=0, mem_mb=4000, mem=4 GB, mem_mib=3815

[Mon Nov 30 11:36:40 2026]
rule spatial:
    output: results/spatial/d/m/resid/layer2/sae-top/moran.nc, results/spatial/d/m/resid/layer2/sae-top/lisa.nc
    jobid: 6
    wildcards: dataset=d, model=m, hook=resid, layer=2, source=sae-top
    resources: tmpdir=/tmp, gpu=0, mem_mb=4000, mem=4 GB, mem_mib=3815
Job stats:
job        count
-------  -------
extract        1
spatial        2
total          3

This was a dry-run (flag -n). The order of jobs does not reflect the order of execution.
"""


def test_the_dry_run_listing_is_read_job_by_job():
    jobs = parse_dry_run(LISTING)
    assert [j.rule for j in jobs] == ["extract", "spatial", "spatial"]
    assert parse_job_stats(LISTING) == {"extract": 1, "spatial": 2}
    ex = jobs[0]
    assert ex.threads == 4 and ex.resources["mem_mb"] == "16000" and ex.resources["gpu"] == "1"
    assert ex.outputs == ("results/activations/d/m/resid.nc", "results/activations/d/m/mlp_hidden.nc")
    assert jobs[1].threads == 1 and jobs[1].wildcards["source"] == "units"


def test_result_paths_are_matched_to_their_kind():
    assert match_result("results/activations/d/m/resid.nc") == ("activations", {"dataset": "d", "model": "m", "hook": "resid"})
    assert match_result("out/activations/d/m/resid.tokens.nc")[0] == "tokens"
    assert match_result("results/activations/d/m/resid.shards/3.nc")[1]["shard"] == "3"
    kind, wc = match_result("results/sae/d/m/resid/layer4/topk/features.nc")
    assert kind == "sae_dir/features.nc" and wc == {"dataset": "d", "model": "m", "hook": "resid", "layer": "4", "run": "topk"}
    assert match_result("results/sae/d/m/resid/layer4/topk/splice.nc")[0] == "sae_splice"
    assert match_result("results/spatial/d/m/resid/layer4/sae-topk/moran.nc")[1]["source"] == "sae-topk"
    assert match_result("notes.txt") is None


def _csv_prompts(tmp_path, n=7):
    rows = ["text,latitude,longitude,region"] + [f"london city {i},51.{i},-0.{i},GB" for i in range(n)]
    path = tmp_path / "p.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("keep_sink", [False, True])
def test_predicted_activations_equal_a_real_extraction(tiny_llama, tmp_path, keep_sink):
    from mechflow.data.prompts import build_prompts
    from mechflow.extract import extract_to_file
    from mechflow.models import load_model, resolve_model

    csv = _csv_prompts(tmp_path)
    config = {
        "datasets": {"d": {"source": "csv", "path": str(csv)}},
        "models": {"m": {"spec": str(tiny_llama)}},
        "extract": {"layers": "all", "hook_layers": {"mlp_hidden": [-1]}, "keep_sink": keep_sink, "pooling": "mean",
                    "exclude": "first", "max_length": 32, "shards": 1},
    }
    facts = gather_facts(config)
    assert facts.regions == {"d": {"GB": 7}} and facts.models["m"].layers == 3
    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    prompts = build_prompts(config["datasets"]["d"])
    for hook, layers in (("resid", "all"), ("mlp_hidden", [-1])):
        path = extract_to_file(tmp_path / f"{hook}{keep_sink}.nc", model, tok, prompts, hook, layers, "mean", 4, 32, {},
                               False, exclude="first", keep_sink=keep_sink)
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            stored = sum(ds[v].nbytes for v in ("activations", "sink") if v in ds)
            assert ("sink" in ds) == keep_sink
        assert activation_bytes(config, facts, "d", "m", hook) == stored  # exact: prompts x layers x units x 4 (x 2)
        # the whole file: the arrays plus coordinates and HDF5 structure (tens of kB), which the plan adds as a flat overhead
        jobs = [Job("extract", {"dataset": "d", "model": "m"}, (f"results/activations/d/m/{hook}.nc",))]
        predicted = build_plan(jobs, {**config, "results": "results"}, facts).files[0].bytes
        assert abs(path.stat().st_size - predicted) < 32_000


def test_mechflow_info_plans_the_tiny_study():
    proc = subprocess.run([str(VENV_BIN / "mechflow"), "info", "--json", "--configfile", str(REPO / "configs" / "tiny.yaml")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["versions"]["mechflow"]
    plan = out["plan"]
    rules = {r["rule"]: r for r in plan["rules"]}
    # one job per prompt set, one extraction per (prompt set, model), spatial per feature set, ...
    assert {k: rules[k]["jobs"] for k in ("prompts", "extract", "extract_tokens", "sae", "snmf", "spatial", "spatial_units",
                                              "report")} == {
        "prompts": 2, "extract": 2, "extract_tokens": 3, "sae": 1, "snmf": 1, "spatial": 2, "spatial_units": 4, "report": 1}
    assert rules["spatial"]["threads"] == 2 and rules["spatial"]["resources"]["mem_mb"] == "4000"
    assert rules["extract"]["threads"] == 1
    sizes = {f["path"]: f for f in plan["files"]}
    act = sizes["results/tiny/activations/tiny/minilm/resid.nc"]
    # 60 prompts x 6 layers x 384 units x 4 bytes, twice (keep_sink), + prompt coordinates and overhead
    assert 60 * 6 * 384 * 4 * 2 < act["bytes"] < 60 * 6 * 384 * 4 * 2 * 1.1
    tokens = sizes["results/tiny/activations/tiny/minilm/mlp_hidden.tokens.nc"]
    assert tokens["bound"] and tokens["bytes"] >= 60 * 64 * 1536 * 4  # every prompt at max_length tokens: an upper bound
    weights = sizes["results/tiny/sae/tiny/minilm/resid/layer4/topk/sae_weights.safetensors"]["bytes"]
    assert weights == 4 * (2 * 384 * 128 + 128 + 384)


def _snmf_study(csv: Path, model: Path, level: str) -> dict:
    """A study of one prompt CSV, one model and one semi-NMF run (k2) at ``level``."""
    return {
        "results": "results",
        "datasets": {"d": {"source": "csv", "path": str(csv)}},
        "models": {"m": {"spec": str(model)}},
        "extract": {"layers": "all", "hook_layers": {}, "keep_sink": False, "pooling": "mean", "exclude": "first",
                    "max_length": 32, "shards": 1},
        "snmf": {"level": level, "runs": {"k2": {"n_factors": 2, "max_iter": 10}}},
    }


def _snmf_job(threads: int, mem_mb: int) -> Job:
    return Job("snmf", {"dataset": "d", "model": "m", "hook": "resid", "layer": "1", "run": "k2"},
               ("results/snmf/d/m/resid/layer1/k2.nc",), threads, {"mem_mb": str(mem_mb), "gpu": "0"})


def test_the_printed_plan_flags_a_step_over_its_memory(tiny_llama, tmp_path):
    config = _snmf_study(_csv_prompts(tmp_path, n=12), tiny_llama, "pooled")
    text = format_plan(build_plan([_snmf_job(2, 100)], config, gather_facts(config), "s.yaml"))
    assert "snmf" in text and "(over mem_mb)" in text and "raise <step>.mem_mb" in text
    assert "snmf/{dataset}/{model}/{hook}/layer{layer}/{run}.nc" in text


def test_semi_nmf_reads_its_layer_from_disk_when_it_does_not_fit_mem_mb(tiny_llama, tmp_path):
    """The plan's semi-NMF note and estimate follow the choice the rule makes (mechflow.snmf.blocks)."""
    config = _snmf_study(_csv_prompts(tmp_path, n=12), tiny_llama, "tokens")
    facts = gather_facts(config)

    def plan(mem_mb: int):
        (rule,) = build_plan([_snmf_job(1, mem_mb)], config, facts, "s.yaml").rules
        return rule

    small, large = plan(300), plan(8000)
    assert "read from disk" in small.note and "in memory" in large.note
    assert small.peak_bound and large.peak_bound  # token counts at max_length: upper bounds
    assert small.peak_bytes > PYTHON_MB * 1e6 and large.peak_bytes > PYTHON_MB * 1e6
