"""A text corpus in a study (``datasets.<name>.source: text``): resolved with its own defaults, never a prompt set of
any analysis, bad paths one line before any job, and the ``corpus`` rule cutting it into windows per model."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import REPO, WORDS, run_snakemake

from mechflow.resolve import resolve
from mechflow.steps.manifest import manifest
from mechflow.study import ConfigError, prompt_sets, study_pairs

DOCS = ["The king went up to the city.\n\nAnd the people followed him into the house of the Lord.",
        "In the beginning was the word, and the word was with the people.",
        "A soft answer turneth away wrath: but grievous words stir up anger.\n\nThe eyes are in every place."]


def _study(tmp_path) -> dict:
    folder = tmp_path / "texts"
    folder.mkdir(exist_ok=True)
    for i, text in enumerate(DOCS):
        (folder / f"doc{i}.txt").write_text(text, encoding="utf-8")
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.pop("results")  # the default folder, results
    cfg["datasets"]["texts"] = {"source": "text", "path": "texts/*.txt", "split_documents": "file", "context_size": 8,
                                "held_out": 0.34, "seed": 1}
    return cfg


def _resolve(cfg, tmp_path, data_checks=False):
    return resolve(copy.deepcopy(cfg), base_dir=tmp_path, schema_path=REPO / "config.schema.yaml", data_checks=data_checks)


def test_a_corpus_resolves_with_its_own_defaults_and_is_never_a_prompt_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = _resolve(_study(tmp_path), tmp_path)
    study = resolved.study
    texts, tiny = study["datasets"]["texts"], study["datasets"]["tiny"]
    assert texts["format"] == "auto" and texts["column"] == "text" and texts["max_tokens"] is None
    assert "context_size" not in tiny and "format" not in tiny  # a prompt set gets no corpus keys
    assert prompt_sets(study) == ["tiny", "tiny-name"]
    assert all(d != "texts" for d, _ in study_pairs(study))
    jobs = manifest(study, resolved.facts)
    assert jobs["corpus"] == [{"dataset": "texts", "model": "minilm", "path": "results/corpus/texts/minilm/windows.nc"}]
    assert all(e["dataset"] != "texts" for key in ("prompts", "activations", "spatial", "probes", "sae") for e in jobs[key])


@pytest.mark.parametrize("change, key, message", [
    (lambda d: d.update(path="nothing/*.txt"), "datasets.texts.path", "nothing"),
    (lambda d: d.update(context_size=1), "datasets.texts.context_size", ">= 2|less than the minimum"),
    (lambda d: d.pop("path"), "datasets.texts", "path"),
])
def test_a_bad_corpus_is_one_line_naming_its_key(tmp_path, monkeypatch, change, key, message):
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path)
    change(cfg["datasets"]["texts"])
    with pytest.raises(ConfigError, match=message) as err:
        _resolve(cfg, tmp_path)
    assert str(err.value).startswith(f"config error at {key}") and "\n" not in str(err.value)


def test_a_late_bad_byte_in_a_corpus_is_one_line_before_any_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path)
    (tmp_path / "texts" / "doc2.txt").write_bytes(("fine words " * 200_000).encode() + b"\xff")
    with pytest.raises(ConfigError) as err:
        _resolve(cfg, tmp_path, data_checks=True)
    assert str(err.value) == "config error at datasets.texts.path: texts/doc2.txt: not UTF-8 at byte 2200000 (invalid " \
                             "start byte); corpora must be UTF-8 text"


def test_a_list_of_paths_is_for_text_corpora_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path)
    cfg["datasets"]["texts"]["path"] = ["texts/doc0.txt", "texts/doc*.txt"]
    assert _resolve(cfg, tmp_path).study["datasets"]["texts"]["path"] == ["texts/doc0.txt", "texts/doc*.txt"]
    cfg["datasets"]["table"] = {"source": "csv", "path": ["a.csv", "b.csv"]}
    with pytest.raises(ConfigError) as err:
        _resolve(cfg, tmp_path)
    assert str(err.value) == ("config error at datasets.table.path: a csv or xarray source reads one file; a list of "
                              "paths is for text corpora")


def test_an_analysis_cannot_name_a_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path)
    cfg["spatial"]["datasets"] = ["texts"]
    with pytest.raises(ConfigError, match="spatial.datasets: 'texts' is a text corpus, not a prompt set"):
        _resolve(cfg, tmp_path)


def test_the_corpus_rule_cuts_windows_per_model_and_reruns_when_a_file_changes(tmp_path):
    cfg = _study(tmp_path)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/corpus/texts/minilm/windows.nc"
    run_snakemake(tmp_path, target, "-c", "1", "--configfile", "study.yaml")
    with xr.open_dataset(tmp_path / target, engine="h5netcdf") as ds:
        assert ds["tokens"].dims == ("window", "position") and ds.sizes["position"] == 8
        splits = {}
        for doc, split in zip(ds["document"].values.tolist(), ds["split"].values.astype(str).tolist()):
            splits.setdefault(doc, set()).add(split)
        assert all(len(s) == 1 for s in splits.values())  # the split is by document
        assert {"train", "held_out"} == set().union(*splits.values())
    out = run_snakemake(tmp_path, target, "-n", "--configfile", "study.yaml").stdout
    assert "Nothing to be done" in out, out[-2000:]
    (tmp_path / "texts" / "doc1.txt").write_text(DOCS[1] + " And more words.", encoding="utf-8")
    out = run_snakemake(tmp_path, target, "-n", "--configfile", "study.yaml").stdout
    assert "rule corpus:" in out, out[-2000:]


def test_an_sae_trained_on_a_corpus_encodes_prompts_it_never_saw(tmp_path):
    """sae.level corpus: the SAE trains once (rule sae_corpus) on the corpus's train windows (corpus_activations
    shards), is evaluated on its held-out windows, and each prompt set's features.nc holds every prompt of it,
    pooled from its tokens, none trained on, all from the same weights."""
    cfg = _study(tmp_path)
    words = " ".join(DOCS).split()
    for i in range(12):  # more text: a few hundred tokens over 12 documents
        (tmp_path / "texts" / f"more{i}.txt").write_text(" ".join(words[i:] + words[:i]), encoding="utf-8")
    cfg["sae"].update(level="corpus", corpus="texts", corpus_shards=2, datasets=["tiny", "tiny-name"])
    cfg["spatial"].update(units=False, layers=[4])
    cfg["snmf"]["runs"] = {}
    cfg["probes"]["enabled"] = False
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, "-c", "2", "--configfile", "study.yaml")
    assert ("(prompts 2, corpus 1, extract 2, extract_tokens 2, corpus_activations 4, sae 2, spatial 2, sae_corpus 1, "
            "explorer 2, report 1)") in proc.stderr, proc.stderr[-3000:]
    assert len(re.findall(r"^(?:local)?rule sae_corpus:", proc.stdout + proc.stderr, re.M)) == 1
    assert "Held-out corpus tokens" in (tmp_path / "results/report/index.html").read_text(encoding="utf-8")
    trained = tmp_path / "results/corpus/texts/minilm/resid/layer4/sae/topk"
    for prompt_set in ("tiny", "tiny-name"):
        run_dir = tmp_path / f"results/sae/{prompt_set}/minilm/resid/layer4/topk"
        with xr.open_dataset(run_dir / "features.nc", engine="h5netcdf") as f:
            assert f["features"].shape == (60, 128) and set(f["split"].values.astype(str)) == {"validation"}
            assert f.attrs["dataset"] == prompt_set and f.attrs["corpus"] == "texts"
        for name in ("sae_weights.safetensors", "cfg.json", "training.nc"):  # one SAE for every prompt set
            assert (run_dir / name).read_bytes() == (trained / name).read_bytes()
    with xr.open_dataset(trained / "training.nc", engine="h5netcdf") as t:
        assert 0 <= float(t["heldout_fvu"]) < 2 and float(t["heldout_tokens"]) > 0
    cfg_json = yaml.safe_load((trained / "cfg.json").read_text())
    assert cfg_json["metadata"]["context_size"] == 8 and cfg_json["mechflow"]["level"] == "corpus"
    assert (tmp_path / "results/spatial/tiny/minilm/resid/layer4/sae-topk/moran.nc").exists()
    # its explorer shows top contexts from the corpus's held-out windows (never trained on) beside the placenames
    site = tmp_path / "results/explorer/tiny/minilm/resid/layer4/sae-topk/data"
    index = json.loads(re.fullmatch(r"MF\.index\((.*)\);\n", (site / "index.js").read_text(encoding="utf-8"), re.S).group(1))
    assert "held-out windows of corpus texts, never trained on" in index["meta"]["corpus_from"]
    with xr.open_dataset(tmp_path / "results/corpus/texts/minilm/windows.nc", engine="h5netcdf") as w:
        split = w["split"].values.astype(str)
    shown = [c["window"] for chunk in site.glob("chunks/c*.js") for page in json.loads(
        re.fullmatch(r"MF\.chunk\(\d+,(.*)\);\n", chunk.read_text(encoding="utf-8"), re.S).group(1))["features"].values()
        for c in page["corpus"]]
    assert shown and set(split[shown]) == {"held_out"}
    out = run_snakemake(tmp_path, "-n", "--configfile", "study.yaml").stdout
    assert "Nothing to be done" in out, out[-2000:]


def _llama_study(tmp_path, tiny_llama) -> dict:
    """A corpus-level SAE of the tiny Llama (causal): 12 documents of its tokenizer's words, 28 places in a CSV."""
    texts = tmp_path / "texts"
    texts.mkdir(exist_ok=True)
    for i in range(12):  # 12 documents of 40 tokens of the tiny tokenizer's words
        (texts / f"doc{i}.txt").write_text(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40)), encoding="utf-8")
    gb, it = "london oxford york leeds bath ely wells".split(), "rome milan turin naples bari lecce siena pisa".split()
    rows = ["text,latitude,longitude,region"]
    rows += [f'"{n} , england",{51 + i * 0.1:.2f},{-1 + i * 0.1:.2f},GB' for i, n in enumerate(gb * 2)]
    rows += [f'"{n} , italy",{42 + i * 0.1:.2f},{12 + i * 0.1:.2f},IT' for i, n in enumerate(it * 2)]
    (tmp_path / "mini.csv").write_text("\n".join(rows) + "\n")
    return {"datasets": {"mini": {"source": "csv", "path": "mini.csv"},
                         "texts": {"source": "text", "path": "texts/*.txt", "split_documents": "file", "context_size": 8,
                                   "held_out": 0.34, "seed": 1}},
            "models": {"llama": {"spec": str(tiny_llama)}},
            "extract": {"layers": [1], "threads": 1}, "spatial": {"enabled": False}, "probes": {"enabled": False},
            "sae": {"layers": [1], "level": "corpus", "corpus": "texts", "corpus_shards": 1, "corpus_splice_windows": 5,
                    "runs": {"r": {"arch": "topk", "n_features": 32, "k": 4, "steps": 20, "batch_size": 16,
                                   "shuffle_block": 8, "checkpoint_every": 0}}},
            "snmf": {"runs": {}}}


def test_a_corpus_sae_of_a_causal_lm_plans_a_splice_on_held_out_corpus_windows(tmp_path, monkeypatch, tiny_llama):
    """The corpus splice (rule sae_corpus_splice) is planned for resid SAEs of a causal LM trained on a corpus, reading
    the corpus's windows; not for an encoder (the tiny study's MiniLM), nor with sae.corpus_splice_windows 0."""
    monkeypatch.chdir(tmp_path)
    study = _llama_study(tmp_path, tiny_llama)
    resolved = _resolve(study, tmp_path)
    assert resolved.study["sae"]["corpus_splice_windows"] == 5
    entry = manifest(resolved.study, resolved.facts)["sae"][0]
    assert entry["corpus_splice"] == "results/corpus/texts/llama/resid/layer1/sae/r/corpus_splice.nc" and entry["splice"]
    off = _resolve({**study, "sae": {**study["sae"], "corpus_splice_windows": 0}}, tmp_path)
    assert manifest(off.study, off.facts)["sae"][0]["corpus_splice"] is None
    tiny = _study(tmp_path)
    tiny["sae"].update(level="corpus", corpus="texts")
    encoder = _resolve(tiny, tmp_path)
    assert encoder.study["sae"]["corpus_splice_windows"] == 64  # the default at level corpus
    assert manifest(encoder.study, encoder.facts)["sae"][0]["corpus_splice"] is None  # MiniLM is no causal LM
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    out = run_snakemake(tmp_path, "results/corpus/texts/llama/resid/layer1/sae/r/corpus_splice.nc", "-n", "--configfile",
                        "study.yaml").stdout
    assert re.search(r"sae_corpus_splice\s+1", out) and "results/corpus/texts/llama/windows.nc" in out, out[-3000:]


@pytest.mark.slow
def test_a_corpus_sae_of_a_causal_lm_is_spliced_into_it_on_held_out_corpus_windows(tmp_path, tiny_llama):
    """End to end (about 90 s on 2 cores): sae_corpus_splice scores at most sae.corpus_splice_windows held-out windows
    of the corpus with the SAE spliced in, beside the prompt splice; the report shows both."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(_llama_study(tmp_path, tiny_llama)))
    proc = run_snakemake(tmp_path, "-c", "2", "--configfile", "study.yaml")
    assert "sae_splice 1, sae_corpus_splice 1" in proc.stderr, proc.stderr[-3000:]
    run_dir = tmp_path / "results/corpus/texts/llama/resid/layer1/sae/r"
    with xr.open_dataset(tmp_path / "results/corpus/texts/llama/windows.nc", engine="h5netcdf") as w:
        held_windows = set(np.flatnonzero(w["split"].values.astype(str) == "held_out").tolist())
    with xr.open_dataset(run_dir / "corpus_splice.nc", engine="h5netcdf") as ds:
        assert ds.sizes["window"] == min(5, len(held_windows)) and set(ds["window"].values.tolist()) <= held_windows
        assert ds.attrs["split"] == "held_out" and ds.attrs["source"] == "corpus" and ds.attrs["corpus"] == "texts"
        assert int(ds["n_predictions"]) == int((ds["length"] - 1).sum()) and np.isfinite(float(ds["loss_recovered"]))
        assert float(ds["kl_zero"]) > 0 and float(ds["ce_zero"]) != float(ds["ce_clean"])
    assert "corpus held-out tokens (texts, " in (tmp_path / "results/report/index.html").read_text(encoding="utf-8")
    out = run_snakemake(tmp_path, "-n", "--configfile", "study.yaml").stdout
    assert "Nothing to be done" in out, out[-2000:]


def test_a_corpus_sae_names_a_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path)
    cfg["sae"].update(level="corpus", corpus="tiny")
    with pytest.raises(ConfigError, match="sae.corpus: 'tiny' is not a text corpus"):
        _resolve(cfg, tmp_path)


def test_sae_runs_on_one_layer_share_one_set_of_corpus_shards(tmp_path):
    """Two SAE runs at the same hook and layer plan the corpus activations once (the shards hold nothing
    run-specific); a second layer adds its own shards."""
    from mechflow.plan import parse_job_stats
    from mechflow.steps.manifest import job_counts

    cfg = _study(tmp_path)
    cfg["sae"].update(level="corpus", corpus="texts", corpus_shards=2)
    cfg["sae"]["runs"]["other"] = dict(cfg["sae"]["runs"]["topk"], k=4)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    stats = parse_job_stats(run_snakemake(tmp_path, "-n", "--configfile", "study.yaml").stdout)
    assert stats["sae"] == 2 and stats["sae_corpus"] == 2 and stats["corpus_activations"] == 4 and stats["corpus"] == 1
    resolved = _resolve(cfg, tmp_path)  # the start-of-run summary counts what Snakemake plans (explorers included)
    assert job_counts(resolved.study, manifest(resolved.study, resolved.facts)) == {k: v for k, v in stats.items() if k != "all"}
    cfg["sae"]["datasets"] = ["tiny", "tiny-name"]  # a second prompt set encodes with the same corpus SAEs
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    stats = parse_job_stats(run_snakemake(tmp_path, "-n", "--configfile", "study.yaml").stdout)
    assert stats["sae"] == 4 and stats["sae_corpus"] == 2 and stats["corpus_activations"] == 4
    cfg["sae"]["layers"] = [3, 4]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    stats = parse_job_stats(run_snakemake(tmp_path, "-n", "--configfile", "study.yaml").stdout)
    assert stats["sae"] == 8 and stats["corpus_activations"] == 8  # 2 runs x 2 layers x 2 prompt sets


def test_the_gpu_corpus_config_plans_100m_tokens_of_a_users_jsonl_corpus(tmp_path, monkeypatch):
    """configs/sae-corpus-gpu.yaml resolves on any machine (device auto), reads a JSONL corpus at its path, and plans
    one pass over 100M training token rows in 100 shards per split."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text(
        "".join(json.dumps({"text": f"{WORDS} {i}"}) + "\n" for i in range(20)), encoding="utf-8")
    cfg = yaml.safe_load((REPO / "configs" / "sae-corpus-gpu.yaml").read_text())
    resolved = resolve(cfg, base_dir=tmp_path, schema_path=REPO / "config.schema.yaml")
    study = resolved.study
    assert study["datasets"]["corpus"]["max_tokens"] == 100_000_000 and study["datasets"]["corpus"]["column"] == "text"
    run = study["sae"]["runs"]["topk"]
    assert run["steps"] * run["batch_size"] >= 100_000_000
    jobs = manifest(study, resolved.facts)
    assert len(jobs["sae"]) == 1 and jobs["sae"][0]["corpus_splice"]
    assert study["sae"]["corpus_shards"] == 100
