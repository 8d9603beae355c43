"""SAELens interop: every architecture's export loads with sae_lens's ``SAE.load_from_disk`` and encodes and
decodes as mechflow does; the cfg.json metadata of an SAE trained by the workflow's entry point drives SAELens's
Hugging Face wrapper and ``ActivationsStore`` (skipped where sae_lens is not installed: ``make setup`` installs it,
``pip install mechflow[saelens]``)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import WORDS
from test_sae import _readme_code

from mechflow.sae import ARCHITECTURES, load_sae, sae_cfg, save_sae, train
from mechflow.sae.export import LEGACY_WEIGHTS_FILE, WEIGHTS_FILE
from mechflow.sae.synthetic import make_synthetic

sae_lens = pytest.importorskip("sae_lens")


@pytest.fixture(scope="module")
def data():
    x, _ = make_synthetic(3000, d=16, n_true=48, mean_active=3, seed=0)
    return x * 7 + 2  # off scale and off centre: the folded normalisation and b_dec matter


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_saelens_loads_the_export_and_agrees(tmp_path, data, arch):
    model = train(data, arch=arch, n_features=48, k=3, steps=150, batch_size=64, seed=0)
    cfg = sae_cfg(model, model_name="tiny", hook_name="resid", hook_layer=5, pooling="mean")
    save_sae(model, tmp_path, cfg)
    assert (tmp_path / WEIGHTS_FILE).exists() and not (tmp_path / LEGACY_WEIGHTS_FILE).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    x = data[:500]
    with torch.no_grad():
        ours = model.encode(x)
        theirs = lens.encode(x)
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lens.decode(ours), model.decode(ours), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lens(x), model(x), rtol=1e-5, atol=1e-5)
    meta = lens.cfg.metadata
    assert meta.hook_name == "blocks.5.hook_resid_post" and meta.model_name == "tiny"
    assert meta.pooling == "mean" and meta.hf_hook_name is None and meta.context_size is None  # not given
    assert meta.prepend_bos is None  # unknown: not claimed
    assert lens.cfg.normalize_activations == "none"
    expected = {"mp": "matching_pursuit", "topk": "topk", "relu": "standard"}.get(arch, "jumprelu")
    assert lens.cfg.architecture() == expected
    if arch == "mp":
        assert lens.cfg.max_iterations == model.steps and lens.cfg.residual_threshold == 0.0
    # mechflow reads it back bit-exactly
    back = load_sae(tmp_path)
    assert torch.equal(back.encode(x), model.encode(x))


def test_legacy_file_name_is_read(tmp_path, data):
    model = train(data, arch="topk", n_features=24, k=2, steps=5, batch_size=64)
    save_sae(model, tmp_path)
    (tmp_path / WEIGHTS_FILE).rename(tmp_path / LEGACY_WEIGHTS_FILE)
    assert torch.equal(load_sae(tmp_path).W_dec, model.W_dec)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["sae_lens_version"] == cfg["metadata"]["sae_lens_version"]


def _load_lens(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sae_lens.SAE.load_from_disk(str(path), device="cpu", **kw)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk"])
def test_fold_W_dec_norm_needs_the_readme_normalisation(tmp_path, data, arch):
    """The folded input scaling leaves decoder rows of norm 1/s: SAELens's fold_W_dec_norm rescales the features
    (TopK: refuses); after README's normalisation (tests/test_sae.py runs it) there is nothing left to fold."""
    model = train(data, arch=arch, n_features=48, k=3, steps=60, batch_size=64, seed=0)
    save_sae(model, tmp_path)
    x = data[:300]
    with torch.no_grad():
        if arch == "topk":
            with pytest.raises(NotImplementedError):
                _load_lens(tmp_path, fold_W_dec_norm=True)
        else:
            folded = _load_lens(tmp_path, fold_W_dec_norm=True)
            assert not torch.allclose(folded.encode(x), model.encode(x), rtol=1e-3, atol=1e-3)
        exec(_readme_code("To give the decoder unit rows"), {"folder": str(tmp_path)})
        plain = _load_lens(tmp_path)
        torch.testing.assert_close(plain.W_dec.norm(dim=1), torch.ones(48))
        torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)
        if arch != "topk":
            torch.testing.assert_close(_load_lens(tmp_path, fold_W_dec_norm=True).encode(x), plain.encode(x))

@pytest.mark.filterwarnings("ignore:Dataset is not tokenized", "ignore:The training dataset contains fewer samples")
def test_activations_store_reads_the_metadata_of_a_workflow_sae(tmp_path, tiny_llama):
    """An SAE trained by the sae rule's entry point on mechflow's token activations of the tiny Llama: its
    cfg.json names the module (hf_hook_name), context and BOS; SAELens's HookedProxyLM hooked there gives
    mechflow's activations, and ActivationsStore.from_sae builds batches from the cfg alone."""
    from datasets import Dataset
    from sae_lens.load_model import HookedProxyLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechflow.extract import ExtractSettings, extract_tokens_to_file
    from mechflow.io import load_dataarray
    from mechflow.models import load_model, resolve_model
    from mechflow.sae import train_from_file

    g = np.random.default_rng(0)
    texts = [" ".join(g.choice(WORDS[:-6], size=int(g.integers(3, 10)))) for _ in range(80)]
    prompts = xr.Dataset({"text": ("prompt", texts), "latitude": ("prompt", g.uniform(50, 58, 80)),
                          "longitude": ("prompt", g.uniform(-5, 1, 80)), "region": ("prompt", ["GB"] * 80)},
                         coords={"prompt": np.arange(80)})
    model, tokenizer = load_model(resolve_model(str(tiny_llama)), device="cpu")
    attrs = {"model": "tiny", "model_spec": str(tiny_llama), "dataset": "toy", "max_length": 12, "random_init": 0}
    extract_tokens_to_file(tmp_path / "tokens.nc", model, tokenizer, prompts,
                           ExtractSettings({"resid": [1]}, pooling=None, max_length=12, progress=False), attrs)
    run = {"arch": "topk", "n_features": 32, "k": 4, "steps": 40, "batch_size": 64, "seed": 0, "checkpoint_every": 0}
    train_from_file(tmp_path / "tokens.nc", 1, run, tmp_path / "sae", progress=False, level="tokens")

    lens = _load_lens(tmp_path / "sae")
    meta = lens.cfg.metadata
    assert (meta.hook_name, meta.hf_hook_name, meta.hf_hook_site) == ("blocks.1.hook_resid_post", "model.layers.1", "output")
    assert (meta.context_size, meta.prepend_bos, meta.dataset_path) == (12, False, "toy")
    assert meta.model_name == "tiny"  # the tiny folder names no Hugging Face id

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    proxy = HookedProxyLM(hf, AutoTokenizer.from_pretrained(tiny_llama), hook_names=[meta.hf_hook_name])
    tokens = load_dataarray(tmp_path / "tokens.nc")
    ours = torch.from_numpy(tokens.sel(layer=1).values[tokens["prompt_index"].values == 0])
    with torch.no_grad():
        _, cache = proxy.run_with_cache(torch.tensor([tokenizer(texts[0])["input_ids"]]), names_filter=[meta.hf_hook_name])
        torch.testing.assert_close(cache[meta.hf_hook_name][0], ours, rtol=1e-5, atol=1e-5)  # the same activations
        torch.testing.assert_close(lens.encode(ours), load_sae(tmp_path / "sae").encode(ours), rtol=1e-5, atol=1e-5)

    meta.hook_name = meta.hf_hook_name  # HookedProxyLM names hooks by module path
    store = sae_lens.ActivationsStore.from_sae(proxy, lens, dataset=Dataset.from_dict({"text": texts}), streaming=False,
                                               store_batch_size_prompts=4, train_batch_size_tokens=32,
                                               n_batches_in_buffer=2, total_tokens=480)
    assert (store.context_size, store.prepend_bos) == (12, False)
    batch = store.get_batch_tokens()
    assert batch.shape == (4, 12)
    assert store.get_activations(batch).shape == (4, 12, 16)
