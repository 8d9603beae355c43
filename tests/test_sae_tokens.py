"""Token-level SAEs (``sae.level: tokens``): sink rows left out, a prompt-level validation split, per-prompt
max / mean pooling of token features, the file entry point and the workflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from mechflow.io import load_dataarray, load_dataset, write_dataarray
from mechflow.sae import Trainer, load_sae, train_from_file
from mechflow.sae.tokens import (
    TokenPooler,
    pool_tokens,
    select_token_layer,
    split_prompts,
    token_rows,
)

SINK_SCALE = 1e4  # the flagged position's norm is this many times the others' (SmolLM2's sink is 10-100x)
D = 8


def _token_file(path: Path, lengths=(3, 1, 4, 2, 5, 3, 2, 4, 3, 2, 6, 3), seed=0, flag=True) -> xr.DataArray:
    """A token file as rule extract_tokens writes it: ``activations`` [token, layer, unit], the first token of
    every prompt with another token flagged ``excluded`` and given a huge norm (an attention sink)."""
    g = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    n_prompts, n = lengths.size, int(lengths.sum())
    owner = np.repeat(np.arange(n_prompts), lengths)
    position = np.concatenate([np.arange(k) for k in lengths])
    excluded = (position == 0) & (lengths[owner] > 1)
    acts = g.standard_normal((n, 2, D)).astype(np.float32)
    acts[excluded] *= SINK_SCALE
    lat, lon = g.uniform(50, 58, n_prompts), g.uniform(-5, 1, n_prompts)
    coords = {"token": np.arange(n), "layer": [2, 4], "unit": np.arange(D),
              "prompt_index": ("token", owner), "position": ("token", position),
              "text": ("token", np.array([f"place {i}" for i in owner])), "latitude": ("token", lat[owner]),
              "longitude": ("token", lon[owner]), "region": ("token", np.array(["GB"] * n)),
              "place_id": ("token", owner.astype(np.int64) + 100)}
    if flag:
        coords["excluded"] = ("token", excluded)
    da = xr.DataArray(acts, dims=("token", "layer", "unit"), name="activations", coords=coords,
                      attrs={"model": "tiny-model", "model_digest": "abc", "hook": "resid", "pooling": "none (token level)",
                             "exclude": "auto", "pool_excluded": "first"})
    write_dataarray(da, path)
    return da


# ---- the loader: sink rows are not training rows -----------------------------------------------

def test_token_rows_leave_out_the_flagged_sink_and_index_prompts(tmp_path):
    da = _token_file(tmp_path / "t.nc")
    rows = token_rows(select_token_layer(da, 4), block=4)
    excluded = da["excluded"].values
    assert rows.n_tokens == da.sizes["token"] and rows.n_excluded == int(excluded.sum()) == 11  # one prompt has 1 token
    x = rows.source.read(0, rows.source.n_rows)
    np.testing.assert_array_equal(x, da.sel(layer=4).values[~excluded])
    assert np.linalg.norm(x, axis=1).max() < 50 < SINK_SCALE  # no sink row among the training rows
    np.testing.assert_array_equal(rows.prompt_of, da["prompt_index"].values[~excluded])
    assert rows.prompts.tolist() == list(range(12))
    assert rows.coords["n_tokens"].values.tolist() == [3, 1, 4, 2, 5, 3, 2, 4, 3, 2, 6, 3]  # as the pooled file counts
    assert rows.coords["place_id"].values.tolist() == list(range(100, 112))
    # without the flag (extract.exclude: none) every token is a training row
    unflagged = token_rows(select_token_layer(_token_file(tmp_path / "u.nc", flag=False), 4))
    assert unflagged.n_excluded == 0 and unflagged.source.n_rows == da.sizes["token"]


def test_token_loader_errors(tmp_path):
    da = _token_file(tmp_path / "t.nc")
    with pytest.raises(ValueError, match="holds layers"):
        select_token_layer(da, 3)
    pooled = xr.DataArray(np.zeros((4, 2, D), np.float32), dims=("prompt", "layer", "unit"), coords={"layer": [2, 4]})
    with pytest.raises(ValueError, match="token-level file"):
        select_token_layer(pooled, 4)
    flagged_all = da.assign_coords(excluded=("token", da["prompt_index"].values == 0))
    flagged_all.values[:] = 0
    with pytest.raises(ValueError, match="every token flagged excluded"):
        token_rows(select_token_layer(flagged_all.isel(token=slice(0, 3)), 4))


# ---- the validation split holds out whole prompts ----------------------------------------------

def test_split_prompts_holds_out_whole_prompts():
    g = np.random.default_rng(1)
    prompt_of = np.repeat(np.arange(40), g.integers(1, 9, 40))
    train_rows, val_rows = split_prompts(prompt_of, 0.25, seed=3)
    assert np.union1d(train_rows, val_rows).tolist() == list(range(prompt_of.size))
    val_prompts, train_prompts = set(prompt_of[val_rows]), set(prompt_of[train_rows])
    assert not val_prompts & train_prompts and len(val_prompts) == 10  # round(0.25 x 40) whole prompts
    assert np.array_equal(split_prompts(prompt_of, 0.25, seed=3)[1], val_rows)  # seeded
    assert not np.array_equal(split_prompts(prompt_of, 0.25, seed=4)[1], val_rows)
    with pytest.raises(ValueError, match="1 prompt"):
        split_prompts(np.zeros(10, np.int64), 0.2, 0)


def test_trainer_with_groups_never_trains_on_a_held_out_prompt():
    g = np.random.default_rng(0)
    prompt_of = np.repeat(np.arange(30), 7)
    x = torch.from_numpy(g.standard_normal((prompt_of.size, D)).astype(np.float32))
    from mechflow.sae.data import TensorSource

    trainer = Trainer(TensorSource(x), {"n_features": 16, "k": 2, "steps": 4, "batch_size": 16, "val_fraction": 0.2,
                                        "shuffle_block": 8}, groups=prompt_of)
    held = set(prompt_of[trainer.val_rows])
    assert len(held) == 6 and trainer.val_rows.size == 42  # 6 prompts x 7 tokens, not 8-row blocks
    trained = {int(p) for i in range(trainer.source.n_rows) for p in [prompt_of[trainer.source.rows[i]]]}
    assert not held & trained
    with pytest.raises(ValueError, match="one group per row"):
        Trainer(TensorSource(x), {"steps": 2}, groups=prompt_of[:-1])


# ---- per-prompt pooling of token features ------------------------------------------------------

@pytest.mark.parametrize("how", ["max", "mean"])
def test_pooling_equals_a_hand_computation(how):
    g = np.random.default_rng(2)
    prompt_of = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    acts = g.standard_normal((10, 5)).astype(np.float32)  # negative values too: max is not clamped at 0
    expected = np.stack([(acts[prompt_of == p].max(0) if how == "max" else acts[prompt_of == p].mean(0)) for p in range(4)])
    np.testing.assert_allclose(pool_tokens(acts, prompt_of, 4, how), expected, rtol=1e-6, atol=1e-7)
    # streamed in batches that cut prompts in two: the same
    pooler = TokenPooler(4, 5, how)
    for a, b in ((0, 2), (2, 5), (5, 7), (7, 10)):
        pooler.add(torch.from_numpy(acts[a:b]), torch.from_numpy(prompt_of[a:b]))
    np.testing.assert_allclose(pooler.result(), expected, rtol=1e-6, atol=1e-7)


def test_pooling_errors():
    with pytest.raises(ValueError, match="token_pooling"):
        TokenPooler(2, 3, "median")
    with pytest.raises(ValueError, match="received no token"):
        pool_tokens(np.ones((2, 3)), np.array([0, 0]), 2, "max")


# ---- the file entry point ----------------------------------------------------------------------

RUN = {"arch": "topk", "n_features": 16, "k": 3, "steps": 12, "batch_size": 8, "seed": 0, "log_every": 4,
       "val_fraction": 0.25, "shuffle_block": 4, "checkpoint_every": 0}


@pytest.mark.parametrize("how", ["max", "mean"])
def test_train_from_token_file_pools_kept_tokens_per_prompt(tmp_path, how):
    da = _token_file(tmp_path / "t.nc")
    out = tmp_path / "sae"
    train_from_file(tmp_path / "t.nc", 4, RUN, out, checkpoint_dir=tmp_path / "ckpt", progress=False, level="tokens",
                    token_pooling=how)
    feats = load_dataarray(out / "features.nc")
    assert feats.dims == ("prompt", "feature") and feats.shape == (12, 16) and feats["prompt"].values.tolist() == list(range(12))
    assert feats.attrs["level"] == "tokens" and feats.attrs["token_pooling"] == how
    assert int(feats.attrs["token_rows_excluded"]) == 11 and feats["n_tokens"].values.tolist()[:3] == [3, 1, 4]
    # features = max / mean over each prompt's kept tokens of the SAE's token-level features: the sink is not in them
    model = load_sae(out)
    layer4 = torch.from_numpy(da.sel(layer=4).values)
    excluded = da["excluded"].values
    owner = da["prompt_index"].values
    with torch.no_grad():
        tok = model.encode(layer4).numpy()
    kept = ~excluded
    expected = pool_tokens(tok[kept], owner[kept], 12, how)
    np.testing.assert_allclose(feats.values, expected, rtol=1e-5, atol=1e-5)
    with_sink = pool_tokens(tok, owner, 12, how)
    assert not np.allclose(with_sink, expected, atol=1e-3)  # the sink would have changed them
    # ... nor in training: the input scale was estimated on tokens of unit variance, not on 1e4-norm sinks
    cfg = json.loads((out / "cfg.json").read_text())
    assert 0.5 < cfg["mechflow"]["activation_norm_scaling_factor"] < 2.0
    assert cfg["mechflow"]["level"] == "tokens" and cfg["mechflow"]["token_pooling"] == how
    # the split is by prompt: 3 of 12 prompts held out; the validation metrics are on their tokens
    split = feats["split"].values
    assert (split == "validation").sum() == 3
    tr = load_dataset(out / "training.nc")
    assert tr.attrs["level"] == "tokens" and np.isfinite(tr["val_fvu"].values[-1]) and np.isfinite(tr["train_fvu"].values[-1])
    assert int(tr.attrs["token_rows"]) == da.sizes["token"]


def test_train_from_file_level_errors_and_pooled_level_attr(tmp_path):
    _token_file(tmp_path / "t.nc")
    with pytest.raises(ValueError, match="token_pooling"):
        train_from_file(tmp_path / "t.nc", 4, RUN, tmp_path / "o", level="tokens", token_pooling="median")
    with pytest.raises(ValueError, match="level"):
        train_from_file(tmp_path / "t.nc", 4, RUN, tmp_path / "o", level="words")
    with pytest.raises(ValueError, match="dims"):  # a token file read as pooled activations
        train_from_file(tmp_path / "t.nc", 4, RUN, tmp_path / "o")
    g = np.random.default_rng(0)
    pooled = xr.DataArray(g.standard_normal((40, 2, D)).astype(np.float32), dims=("prompt", "layer", "unit"),
                          name="activations", coords={"prompt": np.arange(40), "layer": [2, 4], "unit": np.arange(D)},
                          attrs={"hook": "resid", "pooling": "mean"})
    write_dataarray(pooled, tmp_path / "p.nc")
    with pytest.raises(ValueError, match="token-level file"):
        train_from_file(tmp_path / "p.nc", 4, RUN, tmp_path / "o", level="tokens")
    train_from_file(tmp_path / "p.nc", 4, RUN, tmp_path / "pooled", progress=False)
    feats = load_dataarray(tmp_path / "pooled" / "features.nc")
    assert feats.attrs["level"] == "pooled" and "token_pooling" not in feats.attrs and feats.shape == (40, 16)


# ---- the workflow ------------------------------------------------------------------------------

def _token_study(n: int = 10) -> dict:
    from test_workflow import tiny_config

    cfg = tiny_config(n=n, layers=[2])
    cfg["spatial"] = {"units": False, "layers": [2], "permutations": 19, "lisa_top_n": 0, "k": 4,
                      "shuffled_control": False, "residualise": False}
    cfg["sae"] = {"layers": [2], "level": "tokens", "datasets": ["tiny"], "runs": {"tok": {
        "arch": "topk", "n_features": 32, "k": 4, "steps": 20, "batch_size": 32, "log_every": 5, "val_fraction": 0.25,
        "shuffle_block": 8, "checkpoint_every": 0}}}
    return cfg


def test_workflow_plans_token_extraction_for_a_token_level_sae(workdir):
    from test_workflow import planned_jobs, write_config

    write_config(workdir, _token_study())
    assert planned_jobs(workdir) == {"prompts": 1, "extract": 1, "extract_tokens": 1, "sae": 1, "spatial": 1, "explorer": 1,
                                     "all": 1}


@pytest.mark.slow
def test_workflow_trains_a_token_level_sae_and_reruns_only_on_its_settings(workdir):
    from conftest import run_snakemake
    from test_workflow import planned_jobs, write_config

    cfg = _token_study()
    write_config(workdir, cfg)
    proc = run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml")
    assert "extract_tokens 1, sae 1" in proc.stderr, proc.stderr[-3000:]
    tokens = load_dataarray(workdir / "results/activations/tiny/minilm/resid.tokens.nc")
    sae_dir = workdir / "results/sae/tiny/minilm/resid/layer2/tok"
    feats = load_dataarray(sae_dir / "features.nc")
    assert feats.shape == (20, 32) and feats.attrs["level"] == "tokens" and feats.attrs["token_pooling"] == "max"
    assert int(feats.attrs["token_rows"]) == tokens.sizes["token"]
    assert int(feats.attrs["token_rows_excluded"]) == int(tokens["excluded"].sum()) == 20  # each prompt's first token ([CLS])
    assert (feats["split"].values == "validation").sum() == 5  # round(0.25 x 20) whole prompts
    assert feats["text"].values.tolist() == load_dataset(workdir / "results/prompts/tiny.nc")["text"].values.tolist()
    assert (workdir / "results/spatial/tiny/minilm/resid/layer2/sae-tok/moran.nc").exists()
    assert planned_jobs(workdir) == {}
    cfg["sae"]["token_pooling"] = "mean"
    write_config(workdir, cfg)
    assert planned_jobs(workdir) == {"sae": 1, "spatial": 1, "explorer": 1, "all": 1}


# ---- features.nc streamed batch by batch -------------------------------------------------------

def test_prompt_batches_never_split_a_prompt():
    from mechflow.sae.pipeline import prompt_batches

    owner = np.repeat(np.arange(6), [3, 1, 4, 2, 5, 3])
    for batch in (1, 2, 4, 5, 7, 100):
        bounds = prompt_batches(owner, batch)
        assert bounds[0][0] == 0 and bounds[-1][1] == owner.size
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, covering every row
        for i, j in bounds:
            assert i == 0 or owner[i] != owner[i - 1]  # each range starts at a prompt's first row
            assert j - i <= batch or owner[i] == owner[j - 1]  # over the batch only for one long prompt
    assert prompt_batches(owner, 100) == [(0, owner.size)]
    with pytest.raises(ValueError, match="not grouped by prompt"):
        prompt_batches(np.array([0, 1, 0]), 2)


@pytest.mark.parametrize("how", ["max", "mean"])
@pytest.mark.parametrize("batch", [1, 3, 5, 2048])
def test_write_features_streams_the_same_features_at_any_batch(tmp_path, how, batch):
    from mechflow.sae import build_sae
    from mechflow.sae.pipeline import features_coords, write_features

    da = _token_file(tmp_path / "t.nc")
    rows = token_rows(select_token_layer(da, 4))
    model = build_sae("topk", D, 16, k=3)
    model.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        tok = model.encode(torch.from_numpy(rows.source.read(0, rows.source.n_rows))).numpy()
    expected = pool_tokens(tok, rows.prompt_of, rows.n_prompts, how)
    coords = features_coords(16, rows.coords, np.array([1, 4]))
    path = write_features(model, rows.source, coords, {"level": "tokens"}, tmp_path / f"f{batch}.nc",
                          prompt_of=rows.prompt_of, token_pooling=how, batch=batch)
    feats = load_dataarray(path)
    np.testing.assert_allclose(feats.values, expected, rtol=1e-6, atol=1e-6)  # batched matmuls round differently
    assert feats.attrs["level"] == "tokens" and feats["split"].values.tolist().count("validation") == 2
    # pooled level: one row per prompt, in batches
    pooled = write_features(model, rows.source, features_coords(16, xr.Dataset(coords={"prompt": np.arange(rows.source.n_rows)})),
                            {}, tmp_path / f"p{batch}.nc", batch=batch)
    np.testing.assert_allclose(load_dataarray(pooled).values, tok, rtol=1e-6, atol=1e-6)
