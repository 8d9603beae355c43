"""Steering vectors on a tiny random Llama built from a config: the hook (exactness at scale 0, removal), KL against
the scale on a case where it must grow, the difference of means against a hand computation, the held-out split,
generation through the cache against a loop without it, the file contract, config checks and the rule."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from conftest import REPO, build_tiny_model, run_snakemake

from mechflow.config import load_schema, validate_schema
from mechflow.extract import _base_model
from mechflow.facts import StudyFacts, gather_facts
from mechflow.hooks import capture_sites, find_blocks
from mechflow.io import load_dataset, write_dataset
from mechflow.models import load_model, resolve_model
from mechflow.steering.hook import positions_from, steering
from mechflow.steering.measure import encode_left, first_token_ids, greedy_generations, steering_effects
from mechflow.steering.pipeline import run_steering
from mechflow.steering.prompts import eval_rows, heldout_mask, render, side_texts
from mechflow.steering.result import steering_dataset
from mechflow.steering.vectors import mean_difference, sae_decoder_row, snmf_factor, top_moran_feature
from mechflow.steps import steering as steering_step
from mechflow.study import ConfigError

TEXTS = ["london , england", "rome , lazio , italy", "bath", "new jersey city , town . york", "milan , lombardy",
         "york is a town in", "pisa is a city in"]
POSITIVE = ["rome , lazio", "milan , lombardy , italy", "naples , puglia", "siena"]
NEGATIVE = ["london , england", "oxford , england", "york", "leeds , wells , bath , england", "ely"]
HOOKS = ("resid", "mlp_hidden", "attn_out")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model, tok = load_model(resolve_model(str(build_tiny_model(tmp_path_factory.mktemp("steer_llama"), "llama"))), device="cpu")
    return model, tok


def _logits(model, tok, texts):
    ids, mask = encode_left(tok, texts, 64)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits


def _hooks_attached(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _width(model, hook):
    return model.config.intermediate_size if hook == "mlp_hidden" else model.config.hidden_size


@pytest.mark.parametrize("hook", HOOKS)
def test_scale_zero_leaves_logits_unchanged_exactly(llama, hook):
    model, tok = llama
    clean = _logits(model, tok, TEXTS)
    v = torch.randn(_width(model, hook), generator=torch.Generator().manual_seed(1)) * 10
    with steering(model, hook, 1, v, 0.0):
        zero = _logits(model, tok, TEXTS)
    assert torch.equal(zero, clean)
    with steering(model, hook, 1, v, 0.5):
        moved = _logits(model, tok, TEXTS)
    assert not torch.allclose(moved, clean)
    eff = steering_effects(model, tok, TEXTS, hook, 1, v.numpy(), [0.0, 0.5], first_token_ids(tok, [" italy", " england"]),
                           batch_size=3)
    assert (eff.kl[0] == 0).all() and (eff.target_logprob[0] == eff.clean_target_logprob).all()
    assert (eff.entropy[0] == eff.clean_entropy).all() and (eff.kl[1] > 0).all()


def test_the_hook_is_gone_after_the_call_and_after_an_exception(llama):
    model, tok = llama
    before, n = _logits(model, tok, TEXTS), _hooks_attached(model)
    v = torch.ones(model.config.hidden_size)
    steering_effects(model, tok, TEXTS, "resid", 0, v, [-1.0, 2.0], [5, 6], batch_size=2)
    greedy_generations(model, tok, TEXTS[:2], "mlp_hidden", 1, torch.ones(model.config.intermediate_size), [1.0], 3)
    assert _hooks_attached(model) == n
    with pytest.raises(KeyError, match="body"):
        with steering(model, "mlp_hidden", 2, torch.ones(model.config.intermediate_size), 3.0):
            raise KeyError("body")
    assert _hooks_attached(model) == n
    with pytest.raises(ValueError, match="does not fit"):  # raised inside the hook, during the forward pass
        with steering(model, "resid", 0, v, 1.0, where=torch.ones(1, 1, dtype=torch.bool)):
            _logits(model, tok, TEXTS)
    assert _hooks_attached(model) == n
    assert torch.equal(_logits(model, tok, TEXTS), before)


def test_kl_grows_monotonically_with_the_scale_on_a_constructed_case(tiny_llama):
    """Steer the last block's output of a model whose final norm is the identity: the last position's logits are
    ``z + s u`` (u = W_U v), so KL(p || softmax(z + s u)) = lse(z + s u) - lse(z) - s E_p[u] is convex in s with its
    minimum 0 at s = 0: it grows strictly with |s| on either side (u is not constant over the vocabulary)."""
    model, tok = load_model(resolve_model(str(tiny_llama)), device="cpu")
    _base_model(model).norm = torch.nn.Identity()
    last = len(find_blocks(_base_model(model))) - 1
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    scales = [-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    eff = steering_effects(model, tok, TEXTS, "resid", last, v, scales, [5, 6], batch_size=4)
    zero = scales.index(0.0)
    assert (eff.kl[zero] == 0).all()
    assert (np.diff(eff.kl[zero:], axis=0) > 0).all()  # 0 < 0.25 < ... < 4
    assert (np.diff(eff.kl[: zero + 1][::-1], axis=0) > 0).all()  # 0 < -0.25 < ... < -4


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_difference_of_means_equals_a_hand_computation(llama, pooling):
    """Each prompt alone (no padding), block 1's output from ``output_hidden_states`` (entry 2: entry 0 is the
    embeddings), pooled at the last token or over every token but the first, averaged per side by hand."""
    model, tok = llama

    def pooled(text):
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[2][0].double()
        return h[-1] if pooling == "last" else (h[1:].mean(0) if h.shape[0] > 1 else h[0])

    hand = torch.stack([pooled(t) for t in POSITIVE]).mean(0) - torch.stack([pooled(t) for t in NEGATIVE]).mean(0)
    diff, pos, neg = mean_difference(model, tok, POSITIVE, NEGATIVE, "resid", 1, pooling, batch_size=2)
    np.testing.assert_allclose(diff, hand.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(diff, pos - neg)


def test_mlp_hidden_steering_adds_to_the_down_projection_input(llama):
    """What block 2's down projection receives and returns, clean and steered: its input plus the vector where asked."""
    model, tok = llama
    site = capture_sites(_base_model(model), "mlp_hidden")[2].module
    ids, mask = encode_left(tok, TEXTS[:3], 64)
    where = positions_from(mask, 2)
    v = torch.randn(model.config.intermediate_size, generator=torch.Generator().manual_seed(2))
    ins, outs = [], []
    handles = [site.register_forward_pre_hook(lambda mod, args: ins.append(args[0].clone())),  # runs before steering's
               site.register_forward_hook(lambda mod, args, out: outs.append(out.clone()))]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
            with steering(model, "mlp_hidden", 2, v, 1.5, where):
                model(input_ids=ids, attention_mask=mask)
            expected = site(ins[0] + 1.5 * where[..., None] * v)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ins[1], ins[0], rtol=0, atol=0)  # upstream of the hook: unchanged
    torch.testing.assert_close(outs[1], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs[1], outs[0])


def test_positions_from_counts_from_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert positions_from(mask, 0).tolist() == mask.bool().tolist()
    assert positions_from(mask, 2).int().tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1], [0, 0, 1, 0, 0]]


def test_batched_effects_equal_one_prompt_at_a_time(llama):
    """Left padding with position ids: a prompt's numbers do not depend on its batch."""
    model, tok = llama
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    args = ("resid", 1, v, [-1.0, 0.0, 2.0], first_token_ids(tok, [" italy", " england"]), 1)
    batched = steering_effects(model, tok, TEXTS, *args, batch_size=len(TEXTS))
    alone = steering_effects(model, tok, TEXTS, *args, batch_size=1)
    for name in ("kl", "entropy", "target_logprob", "clean_target_logprob"):
        np.testing.assert_allclose(getattr(batched, name), getattr(alone, name), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("from_position", [0, 2])
def test_greedy_generation_through_the_cache_equals_a_loop_without_it(llama, from_position):
    model, tok = llama
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(5)) * 3
    coefs, texts, n_new = [-1.0, 0.0, 1.0], TEXTS[:3], 5
    got = greedy_generations(model, tok, texts, "resid", 1, v, coefs, n_new, from_position)
    for s, c in enumerate(coefs):
        for g, text in enumerate(texts):
            ids = tok([text], return_tensors="pt")["input_ids"]
            new = []
            for _ in range(n_new):
                where = torch.arange(ids.shape[1])[None] >= from_position
                with torch.no_grad(), steering(model, "resid", 1, v, c, where):
                    nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            assert got[s, g] == tok.decode(new, skip_special_tokens=True), (c, text)


def _places(n_per_region=10) -> xr.Dataset:
    names = {"GB": "london oxford york leeds bath ely wells london york bath".split(),
             "IT": "rome milan turin naples bari lecce siena pisa rome milan".split()}
    rows = [(r, names[r][i % 10]) for r in ("GB", "IT") for i in range(n_per_region)]
    return xr.Dataset(coords={
        "prompt": np.arange(len(rows)), "text": ("prompt", [f"{n} , {r.lower()}" for r, n in rows]),
        "name": ("prompt", [n for _, n in rows]), "region": ("prompt", [r for r, _ in rows]),
        "latitude": ("prompt", np.linspace(40, 55, len(rows))), "longitude": ("prompt", np.linspace(-2, 15, len(rows)))})


def test_the_split_never_measures_a_prompt_the_vector_was_made_from():
    prompts = _places(10)
    held = heldout_mask(prompts["region"].values, 0.3, 0)
    assert held[:10].sum() == 3 and held[10:].sum() == 3  # stratified by region
    assert (heldout_mask(prompts["region"].values, 0.3, 0) == held).all()  # seeded
    _, it_ids = side_texts("IT", prompts, ~held, None, None, 0)
    texts, gb_ids = side_texts("GB", prompts, ~held, "{name} is a town in", 4, 1)
    assert len(gb_ids) == 4 and all(t.endswith(" is a town in") for t in texts)
    rows = eval_rows(prompts, held, "GB", 10, 0)
    measured = set(prompts["prompt"].values[rows].tolist())
    assert len(measured) == 3 and not measured & (set(it_ids.tolist()) | set(gb_ids.tolist()))
    assert render(prompts, rows[:1], "{name} is a town in")[0] == f"{prompts['name'].values[rows[0]]} is a town in"
    with pytest.raises(ValueError, match="region 'FR' is not in the prompt set"):
        side_texts("FR", prompts, ~held, None, None, 0)
    with pytest.raises(ValueError, match="lacks"):
        render(prompts, rows, "{admin1_name}")


def test_sae_row_snmf_factor_and_top_moran(tmp_path):
    from safetensors.numpy import save_file

    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    save_file({"W_dec": w, "b_dec": np.zeros(3, np.float32)}, str(tmp_path / "sae_weights.safetensors"))
    np.testing.assert_array_equal(sae_decoder_row(tmp_path / "sae_weights.safetensors", 2), w[2])
    with pytest.raises(ValueError, match="feature 4 does not exist"):
        sae_decoder_row(tmp_path / "sae_weights.safetensors", 4)
    F = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(snmf_factor(xr.Dataset({"F": (("unit", "factor"), F)}), 1), F[:, 1])
    moran = xr.Dataset({"I": (("region", "feature"), [[0.1, 0.5, np.nan], [0.7, 0.2, 0.3]])},
                       coords={"region": ["GB", "IT"], "feature": [10, 11, 12]})
    assert top_moran_feature(moran) == (10, "IT", 0.7)


def test_the_steering_file_round_trips(llama, tmp_path):
    model, tok = llama
    prompts = _places(4)
    rows = np.array([0, 2, 5])
    texts = render(prompts, rows, "{name} is a town in")
    v = np.random.default_rng(0).normal(size=model.config.hidden_size)
    targets = [" italy", " england"]
    ids = first_token_ids(tok, targets)
    scales = [-1.0, 0.0, 1.0]
    eff = steering_effects(model, tok, texts, "resid", 1, v, scales, ids)
    gens = greedy_generations(model, tok, texts[:2], "resid", 1, v, scales, 3)
    train = {"positive": (["rome , it"], np.array([4])), "negative": (["york , gb", "ely"], np.array([1, -1]))}
    ds = steering_dataset(eff, scales, scales, prompts.isel(prompt=rows), texts, targets, ids, lambda i: tok.decode([i]),
                          gens, [0, 1], v, train, {"layer": 1})
    write_dataset(ds, tmp_path / "s.nc")
    back = load_dataset(tmp_path / "s.nc")
    assert back["kl"].dims == ("scale", "prompt") and back["target_logprob"].dims == ("scale", "prompt", "target")
    assert back["generation"].dims == ("scale", "sample") and back["generation"].values[0, 0] == gens[0, 0]
    assert back["prompt"].values.tolist() == [0, 2, 5] and back["text"].values[0] == texts[0]
    assert back["target_token"].values.tolist() == ["italy", "england"]
    assert back["train_side"].values.tolist() == ["positive", "negative", "negative"]
    assert (back["delta_log_odds"].sel(scale=0.0) == 0).all() and (back["kl"].sel(scale=0.0) == 0).all()
    assert back["added_norm"].values[1] == 0 and back["vector"].shape == (model.config.hidden_size,)


# ---- the step in a study -----------------------------------------------------------------------------


def _study(model_dir, **vector) -> dict:
    spec = {"layer": 1, "positive": "IT", "negative": "GB", "targets": [" italy", " england"], **vector}
    cfg = {"datasets": {"mini": {"source": "csv", "path": "mini.csv"}},
           "models": {"llama": {"spec": str(model_dir)}},
           "sae": {"layers": [1], "runs": {"r": {"arch": "topk", "n_features": 32, "k": 4, "steps": 5}}},
           "steering": {"enabled": True, "vectors": {"v": spec}}}
    return validate_schema(cfg, load_schema(REPO / "config.schema.yaml"))


def _facts(cfg, regions=None):
    """The study's model facts (read from the tiny models' configs), with the prompt sets' regions given."""
    return StudyFacts(gather_facts(cfg, REPO, prompts=False).models, regions)


@pytest.mark.parametrize("vector, key, message", [
    ({"layer": 7}, "layer", r"layer 7 does not exist in model 'llama' \(3 layers"),
    ({"positive": "FR"}, "positive", r"region 'FR' is not in prompt set 'mini'"),
    ({"positive": "nowhere.csv"}, "positive", r"nowhere.csv does not exist"),
    ({"template": "{nme}"}, "template", r"unknown field\(s\) \['nme'\]"),
    ({"source": "sae", "run": "q"}, "run", r"'q' is not a SAE run of the study"),
    ({"source": "sae", "run": "r", "layer": 2}, "layer", r"trained at layers \[1\]"),
    ({"source": "sae", "run": "r", "feature": 32}, "feature", r"32 does not exist in SAE run 'r' \(32 features"),
    ({"source": "snmf", "run": "r"}, "run", r"'r' is not a semi-NMF run"),
])
def test_bad_steering_configs_fail_before_any_job(tiny_llama, vector, key, message):
    cfg = _study(tiny_llama, **vector)
    with pytest.raises(ConfigError, match=message) as err:
        steering_step.check(cfg, _facts(cfg, {"mini": {"GB": 5, "IT": 5}}), REPO)
    assert str(err.value).startswith(f"config error at steering.vectors.v.{key}: ")


def test_steering_plans_one_job_per_causal_model_and_refuses_an_encoder(tiny_llama, tiny_models):
    cfg = _study(tiny_llama)
    cfg["models"]["bert"] = {"spec": str(tiny_models["bert"]), "dtype": "float32", "device": "auto"}
    jobs = steering_step.jobs(dict(cfg, results="out"), _facts(cfg))
    assert [(j["model"], j["name"], j["path"]) for j in jobs] == [("llama", "v", "out/steering/mini/llama/v.nc")]
    bad = copy.deepcopy(cfg)
    bad["steering"]["models"] = ["bert"]
    with pytest.raises(ConfigError, match="steering.models: 'bert' is not a causal LM"):
        steering_step.check(bad, _facts(bad), REPO)
    cfg["steering"]["enabled"] = False
    assert steering_step.jobs(dict(cfg, results="out"), _facts(cfg)) == []


def test_run_steering_makes_each_kind_of_vector_and_measures_it_on_prompts_it_was_not_made_from(tiny_llama, tmp_path):
    """The rule's entry point without Snakemake: a difference of means measured on held-out GB prompts, an SAE row
    measured on the SAE run's validation prompts, and a zero semi-NMF factor refused."""
    from safetensors.numpy import save_file

    prompts = _places(10)
    write_dataset(prompts, tmp_path / "prompts.nc")
    split = np.where(np.arange(20) % 4 == 0, "validation", "train")
    write_dataset(xr.Dataset(coords={"prompt": np.arange(20), "split": ("prompt", split)}), tmp_path / "features.nc")
    w_dec = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    save_file({"W_dec": w_dec, "b_dec": np.zeros(16, np.float32)}, str(tmp_path / "sae_weights.safetensors"))
    write_dataset(xr.Dataset({"F": (("unit", "factor"), np.zeros((24, 3)))}), tmp_path / "snmf.nc")
    section = _study(tiny_llama, eval_region="GB", eval_template="{name} is a town in")["steering"]  # schema defaults
    section.update(scales=[-1.0, 0.0, 1.0], eval_prompts=4, generations=2, max_new_tokens=2)
    v = section["vectors"]["v"]
    vectors = {"v": v, "feat": {**v, "source": "sae", "run": "r", "feature": 5},
               "factor": {**v, "source": "snmf", "hook": "mlp_hidden", "run": "k", "feature": 1}}

    def run(name, **inputs):  # the job's params: the section's settings, the model and the vector
        params = {**section, "model": {"spec": str(tiny_llama)}, "vector": vectors[name]}
        return run_steering(params, {"prompts": str(tmp_path / "prompts.nc"), **inputs}, name, "mini", "llama",
                            config_digest="d1g")

    ds = run("v")
    held = heldout_mask(prompts["region"].values, section["holdout"], section["seed"]) & (prompts["region"] == "GB").values
    assert ds.sizes["scale"] == 3 and 0 < ds.sizes["prompt"] and set(ds["prompt"].values) <= set(np.flatnonzero(held))
    assert ds["text"].values.tolist() == [f"{n} is a town in" for n in ds["name"].values]
    assert not set(ds["prompt"].values.tolist()) & set(ds["train_prompt"].values.tolist())
    assert (ds["kl"].sel(scale=0.0) == 0).all() and (ds["kl"].sel(scale=1.0) > 0).all()
    assert ds.sizes["sample"] == 2 and ds.sizes["unit"] == 16
    assert {k: ds.attrs[k] for k in ("config_digest", "dataset", "model", "name", "source", "hook", "layer")} == {
        "config_digest": "d1g", "dataset": "mini", "model": "llama", "name": "v", "source": "means", "hook": "resid",
        "layer": 1}
    feat = run("feat", weights=[str(tmp_path / "sae_weights.safetensors")], features=[str(tmp_path / "features.nc")])
    np.testing.assert_array_equal(feat["vector"].values, w_dec[5])
    assert set(feat["prompt"].values.tolist()) <= set(np.flatnonzero(split == "validation").tolist())
    assert feat.attrs["feature"] == 5 and "validation" in feat.attrs["eval_from"] and feat.sizes.get("train", 0) == 0
    with pytest.raises(ValueError, match="steering vector 'factor' is zero"):
        run("factor", snmf=str(tmp_path / "snmf.nc"))


@pytest.mark.slow
def test_the_steer_rule_writes_its_file_and_the_report_shows_it(tmp_path, tiny_llama):
    gb = "london oxford york leeds bath ely wells".split()
    it = "rome milan turin naples bari lecce siena pisa".split()
    rows = ["text,latitude,longitude,region"]
    rows += [f'"{n} , england",{51 + i * 0.1:.2f},{-1 + i * 0.1:.2f},GB' for i, n in enumerate(gb * 3)]
    rows += [f'"{n} , italy",{42 + i * 0.1:.2f},{12 + i * 0.1:.2f},IT' for i, n in enumerate(it * 3)]
    (tmp_path / "mini.csv").write_text("\n".join(rows) + "\n")
    targets = [" italy", " england"]
    study = {"datasets": {"mini": {"source": "csv", "path": "mini.csv"}},
             "models": {"llama": {"spec": str(tiny_llama)}},
             "extract": {"layers": [1], "hook_layers": {"mlp_hidden": [1]}}, "spatial": {"enabled": False},
             "probes": {"enabled": False},
             "sae": {"layers": [1], "runs": {"r": {"arch": "topk", "n_features": 32, "k": 4, "steps": 5, "batch_size": 8,
                                                   "val_fraction": 0.25, "shuffle_block": 4}}},
             "snmf": {"layers": [1], "runs": {"k": {"n_factors": 3, "max_iter": 5}}},
             "steering": {"enabled": True, "eval_prompts": 4, "generations": 2, "max_new_tokens": 3, "scales": [-1, 0, 1],
                          "vectors": {"it": {"layer": 1, "positive": "IT", "negative": "GB", "targets": targets,
                                             "eval_region": "GB", "eval_template": "{text} is a town in"},
                                      "feat": {"source": "sae", "run": "r", "layer": 1, "feature": 3, "targets": targets},
                                      "factor": {"source": "snmf", "run": "k", "layer": 1, "feature": 2, "targets": targets}}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    proc = run_snakemake(tmp_path, "-c", "1", "--configfile", "study.yaml")
    assert "steer 3" in proc.stderr
    feat = load_dataset(tmp_path / "results/steering/mini/llama/feat.nc")
    assert feat.attrs["hook"] == "resid" and feat.attrs["feature"] == 3 and "validation" in feat.attrs["eval_from"]
    sae_rows = load_dataset(tmp_path / "results/sae/mini/llama/resid/layer1/r/features.nc")["split"]
    assert set(feat["prompt"].values.tolist()) <= set(sae_rows["prompt"].values[sae_rows.values == "validation"].tolist())
    factor = load_dataset(tmp_path / "results/steering/mini/llama/factor.nc")
    assert factor.attrs["hook"] == "mlp_hidden" and factor.sizes["unit"] == 24  # the MLP's hidden width
    np.testing.assert_allclose(factor["vector"].values,
                               load_dataset(tmp_path / "results/snmf/mini/llama/mlp_hidden/layer1/k.nc")["F"].values[:, 2])
    ds = load_dataset(tmp_path / "results/steering/mini/llama/it.nc")
    assert ds.sizes["scale"] == 3 and ds.sizes["prompt"] == 4 and set(ds["region"].values) == {"GB"}
    assert all(t.endswith(" , england is a town in") for t in ds["text"].values)
    assert (ds["kl"].sel(scale=0.0) == 0).all() and (ds["kl"].sel(scale=1.0) > 0).all()
    assert not set(ds["prompt"].values.tolist()) & set(ds["train_prompt"].values.tolist())
    for key in ("mechflow_version", "created", "config_digest", "model_digest", "hook", "layer", "holdout"):
        assert key in ds.attrs, key
    html = (tmp_path / "results/report/index.html").read_text()
    assert "Steering it: mini / llama" in html and "Greedy generations" in html
