"""Per-run hook and level of an SAE (``sae.runs.<run>.hook`` / ``.level``, defaulting to ``sae.hook`` / ``sae.level``):
one study trains a resid SAE on a text corpus and a small attn_z SAE on its pooled prompts."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import REPO, run_snakemake

from mechflow.plan import parse_job_stats
from mechflow.resolve import resolve
from mechflow.sae import validate_run
from mechflow.steps import corpus, explorer, extract, sae
from mechflow.steps.manifest import job_counts, manifest
from mechflow.steps.report import study_settings
from mechflow.study import ConfigError

DOCS = ["The king went up to the city.\n\nAnd the people followed him into the house of the Lord.",
        "In the beginning was the word, and the word was with the people.",
        "A soft answer turneth away wrath: but grievous words stir up anger.\n\nThe eyes are in every place."]
#: the attn_z run: small and pooled (one sample per prompt), beside the section's corpus-level resid run
HEADS = {"arch": "topk", "n_features": 16, "k": 2, "steps": 20, "batch_size": 16, "checkpoint_every": 0, "log_every": 5,
         "val_fraction": 0.2, "shuffle_block": 8, "hook": "attn_z", "level": "pooled"}


def _study(tmp_path) -> dict:
    """configs/tiny.yaml on its ``tiny`` prompt set, its SAE section at level corpus (a folder of text files) with the
    tiny run ``topk`` (resid, the section's) and ``heads`` (attn_z, pooled); spatial on the SAEs at layer 4 only."""
    texts = tmp_path / "texts"
    texts.mkdir(exist_ok=True)
    words = " ".join(DOCS).split()
    for i in range(12):  # a few hundred tokens over 12 documents
        (texts / f"doc{i}.txt").write_text(" ".join(words[i:] + words[:i]), encoding="utf-8")
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.pop("results")  # the default folder, results
    cfg["datasets"].pop("tiny-name")
    cfg["datasets"]["texts"] = {"source": "text", "path": "texts/*.txt", "split_documents": "file", "context_size": 8,
                                "held_out": 0.34, "seed": 1}
    cfg["extract"]["hook_layers"] = {"attn_z": [4]}  # the attn_z run's layer only
    cfg["sae"].update(level="corpus", corpus="texts", corpus_shards=1)
    cfg["sae"]["runs"]["topk"].update(steps=20, checkpoint_every=0)
    cfg["sae"]["runs"]["heads"] = dict(HEADS)
    cfg["spatial"].update(units=False, layers=[4])
    cfg["snmf"]["runs"] = {}
    cfg["probes"]["enabled"] = False
    cfg["report"]["enabled"] = False
    return cfg


def _resolve(cfg, tmp_path):
    return resolve(copy.deepcopy(cfg), base_dir=tmp_path, schema_path=REPO / "config.schema.yaml", data_checks=False)


def test_the_resolved_study_gives_each_run_its_hook_and_level_outside_its_training_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path)
    study = _resolve(cfg, tmp_path).study
    runs = study["sae"]["runs"]
    assert (runs["topk"]["hook"], runs["topk"]["level"]) == ("resid", "corpus")  # the section's
    assert (runs["heads"]["hook"], runs["heads"]["level"]) == ("attn_z", "pooled")  # its own
    own = {k: v for k, v in HEADS.items() if k not in ("hook", "level")}
    assert sae.run_params(study, "heads") == validate_run(own)  # the training config: no hook, no level
    assert "hook" not in sae.run_params(study, "topk") and "level" not in sae.run_params(study, "topk")
    assert sae.level_params(study, "heads") == {"level": "pooled"}
    assert sae.level_params(study, "topk") == {"corpus": "texts", "level": "corpus", "token_pooling": "max"}
    # the report's study params name a run's hook or level only where it is not the section's
    shown = study_settings(study)["sae"]["runs"]
    assert "hook" not in shown["topk"] and "level" not in shown["topk"]
    assert (shown["heads"]["hook"], shown["heads"]["level"]) == ("attn_z", "pooled")
    bad = copy.deepcopy(cfg)
    bad["sae"]["runs"]["heads"]["hook"] = "attn_q"
    with pytest.raises(ConfigError, match="sae.runs.heads"):
        _resolve(bad, tmp_path)


def test_a_corpus_run_in_a_pooled_section_gets_the_corpus_defaults_and_needs_a_corpus(tmp_path, monkeypatch):
    """The other way round: the section pooled (its attn_z run), one run at level corpus: the section's corpus settings
    get their level-corpus defaults; without ``sae.corpus`` one line names it."""
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path)
    cfg["sae"] = {k: v for k, v in cfg["sae"].items() if k not in ("level", "corpus_shards")}
    cfg["sae"]["runs"]["topk"]["level"] = "corpus"
    cfg["sae"]["runs"]["heads"].pop("level")
    resolved = _resolve(cfg, tmp_path)
    sec = resolved.study["sae"]
    assert sec["level"] == "pooled" and sec["runs"]["heads"]["level"] == "pooled" and sec["runs"]["topk"]["level"] == "corpus"
    assert (sec["corpus_shards"], sec["corpus_batch_size"], sec["corpus_splice_windows"]) == (2, 16, 64)
    assert [j["run"] for j in sae.corpus_jobs(resolved.study)] == ["topk"]
    cfg["sae"].pop("corpus")
    with pytest.raises(ConfigError, match="sae.corpus: required by the SAE runs at level corpus"):
        _resolve(cfg, tmp_path)


def test_a_corpus_resid_run_and_a_pooled_attn_z_run_plan_their_own_inputs(tmp_path, monkeypatch):
    """The corpus run gets the corpus SAE, its corpus shards and the resid token file; the pooled attn_z run the pooled
    attn_z activations (one extraction pass with resid) and no corpus anything; counts match Snakemake's plan."""
    monkeypatch.chdir(tmp_path)
    cfg = _study(tmp_path)
    resolved = _resolve(cfg, tmp_path)
    study = resolved.study
    jobs = manifest(study, resolved.facts)
    assert sorted((e["run"], e["hook"], e["layer"]) for e in jobs["sae"]) == [("heads", "attn_z", 4), ("topk", "resid", 4)]
    assert all(e["corpus_splice"] is None and e["splice"] is None for e in jobs["sae"])  # MiniLM is no causal LM
    assert [(j["run"], j["hook"]) for j in sae.corpus_jobs(study)] == [("topk", "resid")]
    assert corpus.activation_jobs(study, jobs["sae"]) == 2  # train + held_out, resid layer 4, one shard each
    assert extract.pooled_hooks(study) == ["attn_z", "resid"] and extract.params(study, "minilm")["hooks"]["attn_z"] == [4]
    w = {"dataset": "tiny", "model": "minilm", "layer": "4"}
    heads_in, topk_in = sae.inputs(study, dict(w, hook="attn_z", run="heads")), sae.inputs(study, dict(w, hook="resid", run="topk"))
    assert heads_in == {"activations": "results/activations/tiny/minilm/attn_z.nc"}
    assert topk_in["activations"] == "results/activations/tiny/minilm/resid.tokens.nc" and len(topk_in["corpus_sae"]) > 0
    assert explorer.corpus_source(study, "sae-topk") and not explorer.corpus_source(study, "sae-heads")
    assert explorer.params(study, resolved.facts, "minilm", "sae-heads")["corpus"] is None
    assert not explorer.inputs(study, resolved.facts, dict(w, hook="attn_z", source="sae-heads"))["corpus_shards"]
    layers = extract.token_layers(study, jobs)  # the explorers read each hook's token file
    assert layers == {("tiny", "minilm", "attn_z"): [4], ("tiny", "minilm", "resid"): [4]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    stats = parse_job_stats(run_snakemake(tmp_path, "-n", "--configfile", "study.yaml").stdout)
    assert stats["sae"] == 2 and stats["sae_corpus"] == 1 and stats["corpus_activations"] == 2
    assert job_counts(study, jobs) == {k: v for k, v in stats.items() if k != "all"}
    # attn_z not extracted at the SAE layer: one line naming the key
    cfg["extract"]["hook_layers"] = {"attn_z": [3]}
    with pytest.raises(ConfigError, match=r"sae.layers: layer 4 of hook 'attn_z' is not extracted"):
        _resolve(cfg, tmp_path)


@pytest.mark.slow
def test_one_study_trains_a_corpus_resid_sae_and_a_pooled_attn_z_sae_and_explores_both(tmp_path):
    """End to end (about 2 min on 2 shared cores): both runs' features.nc, the attn_z one with head attribution
    (shares summing to 1 per feature), and an explorer for each, top corpus contexts only for the corpus run."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(_study(tmp_path)))
    proc = run_snakemake(tmp_path, "-c", "2", "--configfile", "study.yaml")
    assert "sae 2" in proc.stderr and "sae_corpus 1" in proc.stderr, proc.stderr[-3000:]
    root = tmp_path / "results"
    with xr.open_dataset(root / "sae/tiny/minilm/resid/layer4/topk/features.nc", engine="h5netcdf") as f:
        assert f["features"].shape == (60, 128) and f.attrs["corpus"] == "texts" and "head_share" not in f
    with xr.open_dataset(root / "sae/tiny/minilm/attn_z/layer4/heads/features.nc", engine="h5netcdf") as f:
        assert f["features"].shape == (60, 16) and "corpus" not in f.attrs
        share = f["head_share"].values
    assert share.shape == (16, 12)
    np.testing.assert_allclose(share.sum(axis=1), 1.0, rtol=1e-9)
    for hook, source, corpus_shown in (("resid", "sae-topk", True), ("attn_z", "sae-heads", False)):
        site = root / f"explorer/tiny/minilm/{hook}/layer4/{source}/data"
        index = json.loads(re.fullmatch(r"MF\.index\((.*)\);\n", (site / "index.js").read_text(encoding="utf-8"), re.S).group(1))
        assert bool(index["meta"].get("corpus_from")) == corpus_shown
    out = run_snakemake(tmp_path, "-n", "--configfile", "study.yaml").stdout
    assert "Nothing to be done" in out, out[-2000:]
