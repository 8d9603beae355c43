"""A text corpus in a study (``datasets.<name>.source: text``): resolved with its own defaults, never a prompt set of
any analysis, bad paths one line before any job, and the ``corpus`` rule cutting it into windows per model."""

from __future__ import annotations

import copy

import pytest
import xarray as xr
import yaml
from conftest import REPO, run_snakemake

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
