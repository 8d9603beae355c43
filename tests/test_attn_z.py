"""The attn_z hook (per-head attention outputs before the output projection) and the head attribution of attn_z SAEs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from conftest import REPO, run_snakemake

from mechflow.extract import iter_pooled
from mechflow.extract.capture import capturing
from mechflow.hooks import HookPointError, output_projection
from mechflow.io import load_dataarray
from mechflow.models import hook_width, load_model, resolve_model
from mechflow.sae.heads import head_attribution

TEXTS = ["london , england", "rome italy", "new jersey city town", "bath wells ely"]
#: the o_proj-input module of block 1, named independently of mechflow.hooks
O_PROJ = {"llama": "model.layers.1.self_attn.o_proj", "gpt2": "transformer.h.1.attn.c_proj",
          "bert": "encoder.layer.1.attention.output.dense", "gpt_neox": "gpt_neox.layers.1.attention.dense"}
ATTN_OUT = {"llama": "model.layers.1.self_attn.o_proj", "gpt2": "transformer.h.1.attn.c_proj",
            "bert": "encoder.layer.1.attention.output.dense", "gpt_neox": "gpt_neox.layers.1.attention.dense"}


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "gpt_neox"])
def test_attn_z_is_the_output_projection_input_and_w_o_maps_it_to_attn_out(tiny_models, family):
    model, tok = load_model(resolve_model(str(tiny_models[family])), device="cpu")
    base = model.base_model if family != "bert" else model
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    manual: dict[str, torch.Tensor] = {}
    module = model.get_submodule(O_PROJ[family])
    handles = [module.register_forward_pre_hook(lambda m, args: manual.__setitem__("z", args[0].detach().clone())),
               module.register_forward_hook(lambda m, args, out: manual.__setitem__("out", out.detach().clone()))]
    with torch.inference_mode():
        base(**enc)
    for h in handles:
        h.remove()
    with torch.inference_mode(), capturing(model, {"attn_z": [1], "attn_out": [1]}) as capture:
        store = capture(enc)
        z, out = store["attn_z", 1].clone(), store["attn_out", 1].clone()
    heads = model.config.num_attention_heads
    assert z.shape[-1] == heads * (model.config.hidden_size // heads) == 16
    torch.testing.assert_close(z, manual["z"])
    w_o, n = output_projection(model, 1)
    assert n == heads and tuple(w_o.shape) == (model.config.hidden_size, 16)
    bias = module.bias if module.bias is not None else 0.0
    torch.testing.assert_close(z @ w_o.T + bias, out, atol=1e-5, rtol=1e-5)  # GPT-2's Conv1D transposed too
    pooled = np.concatenate([b for _, b in iter_pooled(model, tok, TEXTS, "attn_z", [0, 1], "mean", 2, progress=False)])
    assert pooled.shape == (len(TEXTS), 2, 16)
    assert hook_width(resolve_model(str(tiny_models[family])), "attn_z") == 16


def test_attn_z_width_follows_head_dim_where_the_config_gives_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 32, "num_attention_heads": 4,
                                                      "head_dim": 16, "intermediate_size": 64}))
    (tmp_path / "model.safetensors").write_bytes(b"")  # resolving needs a weights file; widths read only the config
    resolved = resolve_model(str(tmp_path))
    assert hook_width(resolved, "attn_z") == 64 and hook_width(resolved, "attn_out") == 32


def test_output_projection_errors_are_clear(tiny_llama):
    model, _ = load_model(resolve_model(str(tiny_llama)), device="cpu")
    with pytest.raises(HookPointError, match="out of range"):
        output_projection(model, 3)


def test_head_attribution_sums_to_one_and_matches_each_head_slice():
    rng = np.random.default_rng(0)
    n_heads, d_head, d_model = 3, 4, 7
    w_dec = rng.normal(size=(20, n_heads * d_head))
    w_dec[5] = 0.0                      # a dead decoder row: no share to give
    w_dec[6, 4:] = 0.0                  # a feature read only by head 0
    w_o = rng.normal(size=(d_model, n_heads * d_head))
    ds = head_attribution(w_dec, w_o, n_heads)
    share, direct = ds["head_share"].values, ds["head_direct"].values
    assert ds["head_share"].dims == ("feature", "head") and share.shape == (20, n_heads)
    alive = np.arange(20) != 5
    np.testing.assert_allclose(share[alive].sum(axis=1), 1.0, rtol=1e-12)
    assert np.isnan(share[5]).all() and (direct[5] == 0).all()
    np.testing.assert_allclose(share[6], [1.0, 0.0, 0.0])
    for f in (0, 6, 19):
        for h in range(n_heads):
            cols = slice(h * d_head, (h + 1) * d_head)
            assert direct[f, h] == pytest.approx(np.linalg.norm(w_o[:, cols] @ w_dec[f, cols]), rel=1e-10)
            assert share[f, h] == pytest.approx(np.linalg.norm(w_dec[f, cols]) / sum(
                np.linalg.norm(w_dec[f, k * d_head:(k + 1) * d_head]) for k in range(n_heads)), rel=1e-10)
    with pytest.raises(ValueError, match="multiple of 5 heads"):
        head_attribution(w_dec, w_o, 5)
    with pytest.raises(ValueError, match="does not read"):
        head_attribution(w_dec, w_o[:, :6], n_heads)


def test_attn_z_saelens_names(tiny_models):
    from mechflow.sae.export import hf_hook_site, transformer_lens_hook

    assert transformer_lens_hook("attn_z", 3) == "blocks.3.attn.hook_z"
    assert hf_hook_site(str(tiny_models["llama"]), "attn_z", 1) == ("model.layers.1.self_attn.o_proj", "input")
    assert hf_hook_site(str(tiny_models["gpt2"]), "attn_z", 0) == ("transformer.h.0.attn.c_proj", "input")
    assert hf_hook_site(str(tiny_models["bert"]), "attn_z", 1) == ("encoder.layer.1.attention.output.dense", "input")


@pytest.mark.slow
def test_tiny_study_trains_an_attn_z_sae_with_head_attribution(workdir):
    """configs/tiny.yaml with its SAE on attn_z (MiniLM: BERT's attention.output.dense input, 12 heads of 32):
    features.nc holds each feature's head share (sums to 1) and direct attribution through W_O."""
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["datasets"].pop("tiny-name")
    for section in ("spatial", "probes", "report"):
        cfg[section] = {"enabled": False}
    cfg["snmf"]["runs"] = {}
    cfg["sae"]["hook"] = "attn_z"
    (workdir / "study.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(workdir, "-c", "2", "--configfile", "study.yaml")  # prompts, extraction, the SAE
    (sae_dir,) = workdir.glob("results/**/sae/tiny/minilm/attn_z/layer4/topk")
    (act_file,) = workdir.glob("results/**/activations/tiny/minilm/attn_z.nc")
    act = load_dataarray(act_file)
    assert act.sizes["unit"] == 384
    with xr.open_dataset(sae_dir / "features.nc", engine="h5netcdf") as ds:
        share, direct = ds["head_share"].values, ds["head_direct"].values
        assert ds["head_share"].dims == ("feature", "head") and share.shape == (128, 12)
    np.testing.assert_allclose(share.sum(axis=1), 1.0, rtol=1e-9)
    assert (direct > 0).all()
    assert load_dataarray(sae_dir / "features.nc").dims == ("prompt", "feature")  # the features variable reads as before
    cfg_json = json.loads((sae_dir / "cfg.json").read_text())
    assert cfg_json["metadata"]["hook_name"] == "blocks.4.attn.hook_z"
    assert cfg_json["metadata"]["hf_hook_name"] == "encoder.layer.4.attention.output.dense"
    assert cfg_json["metadata"]["hf_hook_site"] == "input"
