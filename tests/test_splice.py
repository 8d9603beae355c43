"""Loss recovered: a reconstruction spliced into the residual stream, checked against a hand-written splice
(a pre-hook on the next block and cross-entropy by hand) on tiny random Llama and GPT-2 models; the same splice
over a corpus's token windows checked against the prompt splice of the same tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from mechflow import splice
from mechflow.extract import _base_model
from mechflow.hooks import find_blocks
from mechflow.models import load_model, resolve_model
from mechflow.splice import held_out_windows, replaced_residual, splice_losses, splice_token_losses, splice_windows

TEXTS = ["london , england", "rome , lazio , italy", "bath", "new jersey city , town . york", "milan , lombardy"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_tok(request, tiny_models):
    return load_model(resolve_model(str(tiny_models[request.param])), device="cpu")


def _hand_ce(model, tok, layer, fn, exclude_first):
    """Splice with a pre-hook on block layer + 1 (another mechanism) and score by hand, token by token."""
    total, count = 0.0, 0
    blocks = find_blocks(_base_model(model))
    for text in TEXTS:
        enc = tok([text], return_tensors="pt")  # one prompt alone: no padding
        ids = enc["input_ids"][0]

        def pre(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            h = h.clone()
            start = 1 if exclude_first and h.shape[1] > 1 else 0
            h[0, start:] = fn(h[0, start:])
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        handle = blocks[layer + 1].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = model(**enc).logits[0].double()
        finally:
            handle.remove()
        logp = torch.log_softmax(logits, -1)
        for t in range(len(ids) - 1):
            total -= float(logp[t, ids[t + 1]])
            count += 1
    return total / count


def test_identity_recovers_everything_and_zeros_nothing(model_tok):
    model, tok = model_tok
    out = splice_losses(model, tok, TEXTS, layer=0, reconstruct=lambda h: h, batch_size=2, exclude="none")
    assert out["ce_spliced"] == pytest.approx(out["ce_clean"], abs=1e-9) and out["kl_spliced"] == pytest.approx(0, abs=1e-9)
    assert out["loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    zero = splice_losses(model, tok, TEXTS, layer=0, reconstruct=torch.zeros_like, batch_size=3, exclude="none")
    assert zero["ce_spliced"] == pytest.approx(zero["ce_zero"]) and zero["loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    assert out["n_tokens"] == sum(len(tok(t)["input_ids"]) - 1 for t in TEXTS)  # padding never scored


@pytest.mark.parametrize("exclude", ["none", "first"])
def test_spliced_cross_entropy_equals_a_hand_written_splice(model_tok, exclude):
    model, tok = model_tok
    g = torch.Generator().manual_seed(0)
    d = model.config.hidden_size
    A = torch.randn(d, d, generator=g) / d**0.5

    def lossy(h):
        return 0.5 * h + h @ A.to(h.dtype)

    out = splice_losses(model, tok, TEXTS, layer=0, reconstruct=lossy, batch_size=2, exclude=exclude)
    assert out["ce_spliced"] == pytest.approx(_hand_ce(model, tok, 0, lossy, exclude == "first"), rel=1e-5)
    assert out["ce_zero"] == pytest.approx(_hand_ce(model, tok, 0, torch.zeros_like, exclude == "first"), rel=1e-5)
    assert out["kl_zero"] > 0 and out["kl_spliced"] > 0
    assert np.isfinite(out["per_prompt"]["ce_spliced"]).all()


def test_the_hook_is_gone_after_the_call_and_after_an_exception(model_tok):
    model, tok = model_tok
    enc = tok(TEXTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**enc).logits
    splice_losses(model, tok, TEXTS, layer=0, reconstruct=torch.zeros_like, exclude="none")

    def boom(h):
        raise RuntimeError("inside the splice")

    with pytest.raises(RuntimeError, match="inside the splice"):
        splice_losses(model, tok, TEXTS, layer=0, reconstruct=boom, exclude="none")
    with pytest.raises(KeyError):
        with replaced_residual(model, 0, torch.zeros_like):
            raise KeyError("body")
    with torch.no_grad():
        after = model(**enc).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def _windows_of(tok, texts, context=8, split=None) -> xr.Dataset:
    """A windows file (the contract of mechflow.corpus.build_windows) holding each text's ids as one window."""
    ids = [tok(t)["input_ids"][:context] for t in texts]
    tokens = np.full((len(ids), context), -1, dtype=np.int32)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = row
    split = split if split is not None else ["held_out"] * len(ids)
    return xr.Dataset({"tokens": (("window", "position"), tokens), "length": ("window", np.array([len(r) for r in ids]))},
                      coords={"document": ("window", np.arange(len(ids), dtype=np.int32)), "split": ("window", split)},
                      attrs={"context_size": context, "sink_position": 0, "padding": -1, "dataset": "toy"})


def test_the_window_splice_of_an_identity_recovers_everything_and_zeros_lose(model_tok):
    model, tok = model_tok
    tokens = _windows_of(tok, TEXTS)["tokens"].values
    out = splice_token_losses(model, tokens, layer=0, reconstruct=lambda h: h, batch_size=2)
    assert out["ce_spliced"] == pytest.approx(out["ce_clean"], abs=1e-9) and out["kl_spliced"] == pytest.approx(0, abs=1e-9)
    assert out["loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert out["ce_zero"] > out["ce_clean"] and out["kl_zero"] > 0  # deleting the layer's output loses
    per_window = ((tokens >= 0).sum(1) - 1).clip(0)  # every real next token (the one from the sink too), no padding
    assert out["per_window"]["count"].tolist() == per_window.tolist() and out["n_tokens"] == per_window.sum()
    assert out["pool_excluded"] == "first" and 0 in per_window  # a one-token window scores nothing


@pytest.mark.parametrize("reconstruct", ["lossy", "zeros"])
def test_the_window_splice_equals_the_prompt_splice_of_the_same_tokens(model_tok, reconstruct, monkeypatch):
    """Windows holding the prompts' ids (-1 padded) score exactly what the prompt splice scores when it leaves out
    the first token (exclude first): the same sums per row, whatever the batch, scored one row at a time or not."""
    model, tok = model_tok
    d = model.config.hidden_size
    A = torch.randn(d, d, generator=torch.Generator().manual_seed(1)) / d**0.5
    fn = (lambda h: 0.5 * h + h @ A.to(h.dtype)) if reconstruct == "lossy" else torch.zeros_like
    prompts = splice_losses(model, tok, TEXTS, layer=0, reconstruct=fn, batch_size=2, exclude="first")
    monkeypatch.setattr(splice, "SCORE_MB", 1e-6)  # the float64 scoring one window at a time
    windows = splice_token_losses(model, _windows_of(tok, TEXTS)["tokens"].values, layer=0, reconstruct=fn, batch_size=3)
    for key in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero", "loss_recovered", "n_tokens"):
        assert windows[key] == pytest.approx(prompts[key], rel=1e-6, abs=1e-9), key
    for key in ("ce_spliced", "kl_spliced", "count"):
        np.testing.assert_allclose(windows["per_window"][key], prompts["per_prompt"][key], rtol=1e-6, atol=1e-9)


def test_splice_windows_scores_held_out_windows_only_and_writes_splice_variables(model_tok):
    model, tok = model_tok
    texts = TEXTS * 3
    split = ["train" if i % 3 == 0 else "held_out" for i in range(len(texts))]
    windows = _windows_of(tok, texts, split=split)
    held = np.flatnonzero(np.array(split) == "held_out")
    assert held_out_windows(windows, 100).tolist() == held.tolist()
    picked = held_out_windows(windows, 4)
    assert picked.tolist() == held_out_windows(windows, 4).tolist() and len(picked) == 4 and set(picked) <= set(held)
    ds = splice_windows(model, windows, layer=0, reconstruct=torch.zeros_like, batch_size=3, max_windows=4,
                        attrs={"sae_run": "r"})
    assert ds["window"].values.tolist() == picked.tolist() and ds["document"].values.tolist() == picked.tolist()
    assert ds.attrs["split"] == "held_out" and ds.attrs["source"] == "corpus" and ds.attrs["corpus"] == "toy"
    assert ds.attrs["sae_run"] == "r" and ds.attrs["n_held_out_windows"] == len(held) and "sample of 4" in ds.attrs["windows_selected"]
    assert float(ds["loss_recovered"]) == pytest.approx(0.0, abs=1e-9)
    assert int(ds["n_predictions"]) == int(ds["n_scored"].sum()) and ds["ce_zero_sum"].dims == ("window",)
    with pytest.raises(ValueError, match="no held-out window"):
        splice_windows(model, windows.assign_coords(split=("window", ["train"] * len(texts))), 0, torch.zeros_like)
    bad = windows.copy(deep=True)
    bad["tokens"][1, 1] = -1  # a hole inside the real tokens
    with pytest.raises(ValueError, match="-1 \\(padding\\) after them"):
        splice_token_losses(model, bad["tokens"].values, 0, torch.zeros_like)
