"""Loss recovered: a reconstruction spliced into the residual stream, checked against a hand-written splice
(a pre-hook on the next block and cross-entropy by hand) on tiny random Llama and GPT-2 models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechflow.extract import _base_model
from mechflow.hooks import find_blocks
from mechflow.models import load_model, resolve_model
from mechflow.splice import replaced_residual, splice_losses

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
