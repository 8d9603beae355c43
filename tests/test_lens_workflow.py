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
            ("milan", "Italy|England", "Italy"), ("york", "Spain|England|Italy", "B"), ("bath", "England|France", "England"),
            ("lyon", "Spain|France|Italy", "France"), ("turin", "England|Italy", "B"), ("leon", "Italy|France|Spain", "C")]),
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
            "consistency": {"questions": {"quiz": "questions.csv"}, "shots": 1, "samples": 2, "max_new_tokens": 4, "bins": 4,
                            "max_questions": 4},
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
    assert cons.sizes["prompt"] == 4 and set(cons["n_options"].values.tolist()) <= {2, 3, 4}
    assert np.all((cons["consistency"].values >= 0) & (cons["consistency"].values <= 1))
    assert cons["score"].values.tolist() == ["consistency_logit", "consistency_tuned", "final_prob"]
    assert cons.sizes["sample"] == 2 and "accuracy_weighted" in cons
    lens, meta = TunedLens.load(tmp_path / "results/lens/tuned/tinyllama/tuned_lens.safetensors")
    assert lens.n_layers == 3 and "model_digest" in meta
    _check_held_out(tmp_path, model_dir, lens, readouts={"words": ll, "quiz": cons})
    html = (tmp_path / "results/report/index.html").read_text()
    for heading in ("Reading the layers", "Latent language: words / tinyllama", "Internal consistency: quiz / tinyllama",
                    "Tuned lens: tinyllama", "Voting over sampled reasoning paths"):
        assert heading in html, heading
    # a changed consistency setting reruns only consistency and the report
    cfg["lens"]["consistency"]["bins"] = 5
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert planned_jobs(tmp_path) == {"consistency": 1, "report": 1, "all": 1}


def _check_held_out(tmp_path, model_dir, lens, readouts) -> None:
    """From the files the rules wrote: the tuned lens was fitted only on prompts of split ``lens``, no test prompt gave
    a training position, no read-out text is a fitted prompt, and its test KL is the KL over the test positions."""
    train = load_dataset(tmp_path / "results/lens/tuned/tinyllama/training.nc")
    prompts = {d: load_dataset(tmp_path / f"results/lens/{d}/prompts.nc") for d in readouts}
    fitted = list(zip(train["fit_dataset"].values.astype(str), train["fit_prompt_id"].values.tolist()))
    roles = train["fit_role"].values.astype(str)
    assert set(roles) == {"train", "validation", "test"} and len(set(fitted)) == len(fitted)
    assert all(prompts[d]["split"].values[i] == "lens" for d, i in fitted)
    by_role = {r: {f for f, x in zip(fitted, roles) if x == r} for r in ("train", "validation", "test")}
    assert not by_role["test"] & by_role["train"] and not by_role["validation"] & by_role["train"]
    fit_texts = {str(prompts[d]["text"].values[i]) for d, i in fitted}
    for d, ds in readouts.items():
        read = set(ds["text"].values.astype(str))
        assert read and not read & fit_texts, d
        assert read <= set(prompts[d]["text"].values[prompts[d]["split"].values == "readout"].astype(str))
    # oracle: the reported test KL is the KL over the recorded test positions, and only those
    from mechflow.lens.model import load_causal_lm
    from mechflow.lens.residuals import position_residuals
    from mechflow.lens.tuned import final_targets, kl_by_layer

    model, tok, unembed, _ = load_causal_lm({"spec": str(model_dir), "device": "cpu"})
    test = train["position_role"].values.astype(str) == "test"
    at = train["position_prompt"].values[test]
    assert set(roles[at]) == {"test"}
    texts = [str(prompts[d]["text"].values[i]) for d, i in fitted]
    positions = [[] for _ in fitted]
    for p, k in zip(at, train["position_token"].values[test]):
        positions[p].append(int(k))
    h = position_residuals(model, tok, texts, positions)
    kl = kl_by_layer(h, final_targets(h[-1], unembed), unembed, lens)
    np.testing.assert_allclose(train["kl_tuned"].values, kl, rtol=1e-4, atol=1e-5)
    assert train.attrs["n_holdout"] == int(test.sum())


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
    bad = yaml.safe_load(yaml.safe_dump(cfg))  # every prompt read out: nothing left to fit the tuned lens on
    bad["lens"]["consistency"]["max_questions"] = None
    with pytest.raises(ConfigError, match="lens.tuned: the tuned lens is fitted only on prompts no read-out reads"):
        resolve_study(bad, tmp_path, schema, data_checks=False)
    bad["lens"]["lenses"] = ["logit"]
    resolve_study(bad, tmp_path, schema, data_checks=False)
