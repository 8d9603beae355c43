"""The lens step as workflow rules: a tiny study on a random tiny Llama, its files, checks and report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_snakemake
from test_lens import build_lens_lm
from test_workflow import planned_jobs

from mechflow.io import load_dataset
from mechflow.lens.tuned import TunedLens
from mechflow.resolve import resolve_study
from mechflow.study import ConfigError

SCHEMA = Path(__file__).resolve().parents[1] / "config.schema.yaml"


def _study(tmp_path, model_dir) -> dict:
    (tmp_path / "places.csv").write_text(
        "text,latitude,longitude,region\n" + "".join(f"london {i},{51 + i / 100},{-0.1 + i / 100},GB\n" for i in range(12)),
        encoding="utf-8")
    (tmp_path / "words.csv").write_text("en,fr,it\nwater,eau,acqua\nfire,feu,fuoco\ntree,arbre,albero\n", encoding="utf-8")
    (tmp_path / "questions.csv").write_text(
        "question,options,answer\n" + "".join(f"In which country is {c} ?,{opts},{a}\n" for c, opts, a in [
            ("rome", "France|Italy|Spain", "Italy"), ("paris", "France|Italy", "A"), ("leeds", "England|Spain|France|Italy", "A"),
            ("milan", "Italy|England", "Italy"), ("york", "Spain|England|Italy", "B"), ("bath", "England|France", "England")]),
        encoding="utf-8")
    return {
        "datasets": {"tiny": {"source": "csv", "path": "places.csv"}},
        "models": {"tinyllama": {"spec": str(model_dir), "device": "cpu"}},
        "extract": {"layers": [0], "batch_size": 8},
        "spatial": {"enabled": False},
        "probes": {"enabled": False},
        "lens": {
            "enabled": True, "batch_size": 4,
            "tuned": {"steps": 5, "batch_tokens": 8, "max_tokens": 64},
            "latent_language": {"words": "words.csv", "shots": 1},
            "consistency": {"questions": {"quiz": "questions.csv"}, "shots": 1, "samples": 2, "max_new_tokens": 4, "bins": 4},
        },
        "report": {"title": "lens test"},
    }


def test_lens_study_runs_writes_the_contracts_and_reports(tmp_path):
    model_dir = build_lens_lm(tmp_path / "tinyllama", "llama")
    cfg = _study(tmp_path, model_dir)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_snakemake(tmp_path, "-c", "2", "--configfile", "study.yaml")
    assert "tuned_lens 1, latent_language 1, consistency 1, lens_prompts 2" in proc.stderr, proc.stderr[-2000:]
    ll = load_dataset(tmp_path / "results/lens/words/tinyllama/latent_language.nc")
    assert ll["logprob"].dims == ("prompt", "layer", "language", "lens")
    assert ll["logprob"].shape == (6, 3, 3, 2) and ll["lens"].values.tolist() == ["logit", "tuned"]  # fr->it, it->fr x 3 words
    assert {"mechflow_version", "config_digest", "model_digest", "dataset", "model"} <= set(ll.attrs)
    cons = load_dataset(tmp_path / "results/lens/quiz/tinyllama/consistency.nc")
    assert cons["option_prob"].dims == ("prompt", "layer", "option", "lens") and cons.sizes["option"] == 4
    assert cons["n_options"].values.tolist() == [3, 2, 4, 2, 3, 2]
    assert np.all((cons["consistency"].values >= 0) & (cons["consistency"].values <= 1))
    assert cons["score"].values.tolist() == ["consistency_logit", "consistency_tuned", "final_prob"]
    assert cons.sizes["sample"] == 2 and "accuracy_weighted" in cons
    lens, meta = TunedLens.load(tmp_path / "results/lens/tuned/tinyllama/tuned_lens.safetensors")
    assert lens.n_layers == 3 and "model_digest" in meta
    html = (tmp_path / "results/report/index.html").read_text()
    for heading in ("Reading the layers", "Latent language: words / tinyllama", "Internal consistency: quiz / tinyllama",
                    "Tuned lens: tinyllama", "Voting over sampled reasoning paths"):
        assert heading in html, heading
    # a changed consistency setting reruns only consistency and the report
    cfg["lens"]["consistency"]["bins"] = 5
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert planned_jobs(tmp_path) == {"consistency": 1, "report": 1, "all": 1}


def test_lens_config_errors_name_the_key(tmp_path):
    model_dir = build_lens_lm(tmp_path / "tinyllama", "llama")
    cfg = _study(tmp_path, model_dir)
    schema = str(SCHEMA)
    resolve_study(cfg, tmp_path, schema, data_checks=False)
    bad = yaml.safe_load(yaml.safe_dump(cfg))
    bad["lens"]["consistency"]["questions"] = {"tiny": "questions.csv"}
    with pytest.raises(ConfigError, match="lens.consistency.questions.tiny: the name is taken"):
        resolve_study(bad, tmp_path, schema, data_checks=False)
    bad = yaml.safe_load(yaml.safe_dump(cfg))
    bad["lens"]["latent_language"]["pairs"] = [["en", "fr"]]
    with pytest.raises(ConfigError, match="lens.latent_language"):
        resolve_study(bad, tmp_path, schema, data_checks=False)
    bad = yaml.safe_load(yaml.safe_dump(cfg))
    bad["lens"]["consistency"]["layers"] = [7]
    with pytest.raises(ConfigError, match="lens.consistency.layers"):
        resolve_study(bad, tmp_path, schema, data_checks=False)
    bad = yaml.safe_load(yaml.safe_dump(cfg))
    bad["lens"]["consistency"]["datasets"] = ["tiny"]
    with pytest.raises(ConfigError, match="not a GeoNames prompt set"):
        resolve_study(bad, tmp_path, schema, data_checks=False)
