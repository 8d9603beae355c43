"""Positions that carry the name: the name's character span from the template, its tokens from the tokenizer's
offsets, and the last token / mean over its tokens from a token-level file, against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mechflow.extract import ExtractionError
from mechflow.extract.names import name_positions, name_spans, name_token_mask


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "new", "york", "in", "the", "state", "of", "bath", "la", "spezia", ",", "england", "town"]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]")


def _prompts(template: str, names, regions) -> xr.Dataset:
    texts = [template.format(name=n, region=r) for n, r in zip(names, regions)]
    return xr.Dataset(coords={"prompt": np.arange(len(texts)), "text": ("prompt", texts), "name": ("prompt", names),
                              "region": ("prompt", regions), "latitude": ("prompt", np.zeros(len(texts)))})


def test_name_spans_and_tokens_follow_the_template():
    prompts = _prompts("town of {name} in {region}", ["new york", "bath", "la spezia"], ["state", "england", "x"])
    start, end = name_spans(prompts, "town of {name} in {region}")
    assert start.tolist() == [8, 8, 8] and end.tolist() == [16, 12, 17]
    masks = name_token_mask(_tokenizer(), prompts["text"].values, start, end, max_length=64)
    assert [m.astype(int).tolist() for m in masks] == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0, 0]]
    lead = _prompts("in {region}, {name}", ["york"], ["england"])  # a field before the name
    s, e = name_spans(lead, "in {region}, {name}")
    assert lead["text"].values[0][s[0]:e[0]] == "york"
    assert name_token_mask(_tokenizer(), lead["text"].values, s, e, 64)[0].astype(int).tolist() == [0, 0, 0, 1]
    with pytest.raises(ExtractionError, match="no token of the name"):
        name_token_mask(_tokenizer(), prompts["text"].values, start, end, max_length=2)  # truncated before the name
    with pytest.raises(ExtractionError, match="has no"):
        name_spans(prompts, "{region}")
    with pytest.raises(ExtractionError, match="is not at characters"):
        name_spans(prompts, "the town of {name} in {region}")


def test_last_and_mean_equal_a_hand_computation():
    rng = np.random.default_rng(0)
    prompts = _prompts("{name}", ["new york", "bath", "la spezia"], ["a", "b", "c"])
    start, end = name_spans(prompts, "{name}")
    masks = name_token_mask(_tokenizer(), prompts["text"].values, start, end, 64)
    lengths = [m.size for m in masks]
    assert lengths == [2, 1, 2] and all(m.all() for m in masks)  # the whole prompt is the name
    owner = np.repeat(np.arange(3), lengths)
    acts = rng.normal(size=(owner.size, 3, 4)).astype(np.float32)
    tokens = xr.Dataset({"activations": (("token", "layer", "unit"), acts)}, coords={
        "token": np.arange(owner.size), "layer": [0, 2, 5], "unit": np.arange(4), "prompt_index": ("token", owner),
        "position": ("token", np.concatenate([np.arange(n) for n in lengths]))})
    out = name_positions(tokens, masks, [2, 5], prompts)
    assert out["last"].dims == ("prompt", "layer", "unit") and out["last"]["layer"].values.tolist() == [2, 5]
    np.testing.assert_array_equal(out["last"].values, acts[[1, 2, 4]][:, 1:])
    expect = np.stack([acts[0:2].mean(0), acts[2:3].mean(0), acts[3:5].mean(0)])[:, 1:]  # the sink (position 0) included
    np.testing.assert_allclose(out["mean"].values, expect, rtol=1e-6)
    assert out["mean"]["n_name_tokens"].values.tolist() == [2, 1, 2] and out["mean"]["n_tokens"].values.tolist() == lengths
    assert out["last"]["name"].values.tolist() == ["new york", "bath", "la spezia"]
    with pytest.raises(ExtractionError, match="do not match"):
        name_positions(tokens, masks[:2], [2], prompts.isel(prompt=slice(0, 2)))


def test_the_spatial_step_plans_name_positions_for_name_only_sets():
    from pathlib import Path

    import yaml

    from mechflow.resolve import resolve
    from mechflow.steps import explorer, spatial
    from mechflow.study import ConfigError

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "configs" / "tiny.yaml").read_text())

    def plan(**sp):
        c = yaml.safe_load(yaml.safe_dump(cfg))
        c["spatial"].update(sp)
        r = resolve(c, base_dir=repo, schema_path=repo / "config.schema.yaml", data_checks=False)
        return r.study, spatial.jobs(r.study, r.facts), explorer.jobs(r.study, r.facts)

    study, jobs, explorers = plan()
    names = [j for j in jobs if j["name_position"]]
    assert {(j["dataset"], j["source"], j["layer"]) for j in names} == {
        ("tiny-name", f"units-name_{p}", layer) for p in ("last", "mean") for layer in (1, 4)}
    assert all(j["kind"] == "units" and j["run"] == f"name_{j['name_position']}" for j in names)
    w = {"dataset": "tiny-name", "model": "minilm", "hook": "resid", "layer": "1", "source": "units-name_mean"}
    assert spatial.input_path(study, w) == "results/tiny/activations/tiny-name/minilm/resid.name_mean.nc"
    assert spatial.name_position("units") is None and spatial.name_position("units-name_last") == "last"
    assert not any(e["source"].startswith("units-name") for e in explorers)  # explorers: pooled sets only
    assert not [j for j in plan(name_positions=[])[1] if j["name_position"]]
    both = plan(name_position_datasets=["tiny", "tiny-name"])[1]
    assert {j["dataset"] for j in both if j["name_position"]} == {"tiny", "tiny-name"}
    with pytest.raises(ConfigError, match="spatial.name_position_datasets"):
        plan(name_position_datasets=["nope"])
