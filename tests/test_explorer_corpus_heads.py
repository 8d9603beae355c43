"""The feature explorer for SAEs trained on a text corpus and on attention heads (attn_z): top corpus contexts from the
held-out windows only, ranked by activation (against a brute-force oracle on the tiny Llama's shards); each attn_z
feature's head attribution on its page and its top head in the index; attn_z decoder directions carried to the
residual stream through W_O; the explorer rule's corpus inputs for corpus-level SAEs only."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import REPO, WORDS

from mechflow.io import write_dataset

CRS = {"GB": "EPSG:27700", "NYMETRO": "EPSG:32618"}
BOXES = {"GB": (-4.0, 0.5, 50.5, 55.0), "NYMETRO": (-74.5, -73.3, 40.4, 41.2)}
DOCS = [" ".join(WORDS[(7 * d + 3 * i) % len(WORDS)] for i in range(23 + 5 * d)) for d in range(10)]


def _script_data(path: Path) -> list:
    m = re.fullmatch(r"MF\.\w+\((.*)\);\n", path.read_text(encoding="utf-8"), flags=re.S)
    return json.loads(f"[{m.group(1)}]")


def _pages(out: Path) -> dict[int, dict]:
    pages = {}
    for c in sorted((out / "data" / "chunks").glob("c*.js")):
        pages.update({int(k): v for k, v in _script_data(c)[1]["features"].items()})
    return pages


def _feature_set(model_path: Path, root: Path, hook: str, n_features: int = 16) -> dict:
    """20 placename prompts through the tiny Llama at ``hook`` layer 1 (token file), a random top-k SAE on that hook, its
    pooled features (with the head attribution at attn_z) and their Moran / LISA files: what the explorer rule reads."""
    import torch

    from mechflow.extract.capture import capturing
    from mechflow.hooks import output_projection
    from mechflow.models import load_model, resolve_model
    from mechflow.sae.archs import build_sae
    from mechflow.sae.export import save_sae
    from mechflow.sae.heads import HEAD_VARIABLES, head_attribution
    from mechflow.spatial.analysis import spatial_analysis

    rng = np.random.default_rng(0)
    regions = np.repeat(["GB", "NYMETRO"], 10)
    lon = np.array([rng.uniform(*BOXES[r][:2]) for r in regions])
    lat = np.array([rng.uniform(*BOXES[r][2:]) for r in regions])
    texts = [f"{WORDS[i % 15]} , {'england' if r == 'GB' else 'new jersey'}" for i, r in enumerate(regions)]
    model, tok = load_model(resolve_model(str(model_path)), "cpu")
    rows, keys = [], []
    with torch.inference_mode(), capturing(model, {hook: [1]}) as capture:
        for p, text in enumerate(texts):
            enc = tok(text, return_tensors="pt")
            rows.append(capture(dict(enc))[(hook, 1)][0].float().numpy())
            keys += [(p, i, tok.decode([t])) for i, t in enumerate(enc["input_ids"][0].tolist())]
    acts = np.concatenate(rows)[:, None, :].astype(np.float32)
    prompt = np.array([k[0] for k in keys])
    tokens = xr.Dataset({"activations": (("token", "layer", "unit"), acts)},
                        coords={"token": np.arange(len(keys)), "layer": [1], "unit": np.arange(acts.shape[2]),
                                "prompt_index": ("token", prompt), "position": ("token", [k[1] for k in keys]),
                                "token_str": ("token", [k[2] for k in keys]), "excluded": ("token", [k[1] == 0 for k in keys])})
    write_dataset(tokens, root / f"{hook}.tokens.nc")
    sae = build_sae("topk", acts.shape[2], n_features, 4)
    sae.init_weights(torch.Generator().manual_seed(0))
    save_sae(sae, root / "sae")
    pooled = np.stack([r[1:].mean(0) for r in rows]).astype(np.float32)
    with torch.no_grad():
        feats = sae.encode(torch.as_tensor(pooled)).numpy()
    coords = {"prompt": np.arange(20), "text": ("prompt", texts), "latitude": ("prompt", lat), "longitude": ("prompt", lon),
              "region": ("prompt", regions), "place_id": ("prompt", np.arange(20))}
    fa = xr.DataArray(feats, dims=("prompt", "feature"), coords={**coords, "feature": np.arange(n_features)}, name="features",
                      attrs={"hook": hook, "layer": 1})
    ds = fa.to_dataset()
    if hook == "attn_z":  # as mechflow.sae.pipeline writes it
        w_o, n_heads = output_projection(model, 1)
        heads = head_attribution(sae.W_dec.detach().numpy(), w_o.numpy(), n_heads)
        ds = ds.assign_coords({name: heads[name] for name in HEAD_VARIABLES})
    write_dataset(ds, root / "sae" / "features.nc")
    moran, lisa = spatial_analysis(fa, dict(k=4, transform="r", permutations=19, seed=0, crs=CRS, lisa_top_n=2,
                                            shuffled_control=False))
    write_dataset(moran, root / "moran.nc")
    write_dataset(lisa, root / "lisa.nc")
    return {"features": root / "sae" / "features.nc", "sae": root / "sae", "tokens": root / f"{hook}.tokens.nc",
            "moran": root / "moran.nc", "lisa": root / "lisa.nc", "n_features": n_features}


def _corpus(model_path: Path, root: Path, hook: str = "resid") -> dict:
    """DOCS cut into 6-token windows by the tiny Llama's tokenizer (4 of 10 documents held out) and the token
    activations of each split at ``hook`` layer 1: two held-out shards, one train shard."""
    from mechflow.corpus.activations import corpus_activations_to_file
    from mechflow.corpus.sources import Document
    from mechflow.corpus.windows import build_windows
    from mechflow.models import load_model, resolve_model

    model, tok = load_model(resolve_model(str(model_path)), "cpu")
    windows = build_windows([Document(f"doc{i}", t) for i, t in enumerate(DOCS)], tok, context_size=6, held_out=0.4, seed=0)
    write_dataset(windows, root / "windows.nc")
    held = [root / f"held_out.shard{i}.nc" for i in range(2)]
    for i, path in enumerate(held):
        corpus_activations_to_file(path, model, windows, hook, 1, i, 2, "held_out", 3, {"dataset": "texts"})
    corpus_activations_to_file(root / "train.shard0.nc", model, windows, hook, 1, 0, 1, "train", 3, {"dataset": "texts"})
    return {"windows": root / "windows.nc", "held_out": [str(p) for p in held], "train": str(root / "train.shard0.nc"),
            "tokenizer": tok}


@pytest.fixture(scope="module")
def corpus_set(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus_set")
    return {**_feature_set(tiny_llama, root, "resid"), **_corpus(tiny_llama, root), "model": tiny_llama}


def _encoder(sae_dir: Path):
    import torch

    from mechflow.sae.export import load_sae

    sae = load_sae(sae_dir)
    return lambda x: sae.encode(torch.as_tensor(np.asarray(x, dtype=np.float32))).detach().numpy()


# ---- corpus contexts ------------------------------------------------------------------------------------------------


def test_top_windows_equal_a_brute_force_ranking_whatever_the_blocks():
    from mechflow.explorer.corpus import TopWindows, _window_ends, window_blocks

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=40)
    window = np.repeat(np.arange(40) * 3, lengths)
    position = np.concatenate([np.arange(1, n + 1) for n in lengths])
    values = np.maximum(rng.normal(size=(window.size, 5)), 0).astype(np.float32)
    for block in (1, 7, 10_000):
        top = TopWindows(5, 4, before=2, after=1)
        for lo, hi in window_blocks(_window_ends(window), window.size, block):
            top.add(window[lo:hi], position[lo:hi], values[lo:hi])
        assert top.rows == window.size
        for f in range(5):
            best = sorted((-values[window == w, f].max(), w) for w in np.unique(window))[:4]
            assert top.window[:, f].tolist() == [w for _, w in best]
            for j, (v, w) in enumerate(best):
                m = window == w
                p = position[m][values[m, f].argmax()]
                assert top.value[j, f] == -v and top.position[j, f] == p
                want = [values[m, f][position[m] == q][0] if (position[m] == q).any() else np.nan for q in range(p - 2, p + 2)]
                np.testing.assert_array_equal(top.span[j, f], np.array(want, dtype=np.float32))


def test_corpus_contexts_come_from_held_out_windows_ranked_by_activation(corpus_set):
    from mechflow.explorer.corpus import corpus_contexts
    from mechflow.io import load_dataset

    encode, n = _encoder(corpus_set["sae"]), corpus_set["n_features"]
    tok = corpus_set["tokenizer"]

    def decode(ids):
        return [tok.decode([i]) for i in ids]

    got = corpus_contexts(corpus_set["held_out"], corpus_set["windows"], encode, n, decode, k=3, max_rows=None,
                          before=2, after=1, block_rows=5)
    # oracle: every held-out row encoded at once, each window's largest value per feature, ranked
    shards = [load_dataset(p) for p in corpus_set["held_out"]]
    window = np.concatenate([s["window"].values for s in shards])
    position = np.concatenate([s["position"].values for s in shards])
    values = encode(np.concatenate([s["activations"].values for s in shards]))
    windows = load_dataset(corpus_set["windows"])
    split = windows["split"].values.astype(str)
    assert set(split[np.unique(window)]) == {"held_out"} and (split == "train").any()
    assert got.info["rows"] == window.size == int(windows["length"].values[split == "held_out"].sum() - (split == "held_out").sum())
    np.testing.assert_allclose(got.density, (values > 0).mean(0))
    found = 0
    for f in range(n):
        best = sorted((-values[window == w, f].max(), w) for w in np.unique(window))
        best = [(v, w) for v, w in best if v < 0][:3]
        assert [c["window"] for c in got.contexts[f]] == [w for _, w in best]
        for c, (v, w) in zip(got.contexts[f], best):
            found += 1
            m = window == w
            p = int(position[m][values[m, f].argmax()])
            assert split[w] == "held_out" and c["position"] == p and c["max"] == pytest.approx(-v, rel=1e-2)
            lo, hi = max(0, p - 2), min(int(windows["length"].values[w]), p + 2)
            assert c["tokens"] == decode(windows["tokens"].values[w, lo:hi].tolist())
            want = [values[m, f][position[m] == q][0] if q > 0 else 0.0 for q in range(lo, hi)]
            np.testing.assert_allclose(c["values"], want, rtol=1e-2, atol=1e-6)
            assert c["excluded"] == ([0] if lo == 0 else []) and c["document"].startswith("doc")
    assert found > n, "most features have some held-out context"
    # a cap reads whole windows from the start of each shard; a train shard is refused
    capped = corpus_contexts(corpus_set["held_out"], corpus_set["windows"], encode, n, decode, k=3, max_rows=12)
    read = set()
    for s in shards:  # 6 rows from each shard's start, in whole windows
        w = s["window"].values
        ends = np.r_[np.flatnonzero(w[1:] != w[:-1]) + 1, w.size]
        read |= set(w[: ends[ends <= 6].max(initial=ends[0])].tolist())
    assert capped.info["rows"] == int(np.isin(window, list(read)).sum()) and capped.info["shards_read"] == 2
    shown = {c["window"] for fc in capped.contexts for c in fc}
    assert shown and shown <= read < set(window.tolist())
    with pytest.raises(ValueError, match="held-out windows only"):
        corpus_contexts([corpus_set["train"]], corpus_set["windows"], encode, n, decode)


def test_a_corpus_sae_explorer_shows_held_out_contexts_beside_placename_ones(corpus_set, tmp_path):
    from mechflow.explorer.build import ExplorerSettings, Inputs, build_explorer

    out = tmp_path / "explorer"
    model = {"spec": str(corpus_set["model"]), "device": "cpu", "dtype": "float32"}
    build_explorer(out, "sae-topk", corpus_set["features"], 1,
                   Inputs(tokens=str(corpus_set["tokens"]), moran=str(corpus_set["moran"]), lisa=str(corpus_set["lisa"]),
                          corpus_shards=corpus_set["held_out"], corpus_windows=str(corpus_set["windows"])),
                   CRS, ExplorerSettings(chunk_size=8, contexts=3), sae_dir=corpus_set["sae"], model_params=model,
                   labels={"dataset": "d", "model": "tiny", "hook": "resid"},
                   corpus={"name": "texts", "rows": None, "model": model})
    index = _script_data(out / "data" / "index.js")[0]
    assert "never trained on" in index["meta"]["corpus_from"] and "texts" in index["meta"]["corpus_from"]
    assert "corpus_density" in index["rows"]
    split = xr.open_dataset(corpus_set["windows"])["split"].values.astype(str)
    pages = _pages(out)
    shown = [c for p in pages.values() for c in p["corpus"]]
    assert shown and all(split[c["window"]] == "held_out" for c in shown)
    assert all(p["corpus"] == sorted(p["corpus"], key=lambda c: -c["max"]) for p in pages.values())
    assert any(p["contexts"] for p in pages.values())  # the placename contexts stay


# ---- attn_z: head attribution and W_O ---------------------------------------------------------------------------------


def test_attn_z_directions_reach_the_logits_through_w_o(tiny_llama):
    import torch

    from mechflow.explorer.directions import direction_logits, to_residual
    from mechflow.lens.model import load_causal_lm

    model, _, unembed, _ = load_causal_lm({"spec": str(tiny_llama), "device": "cpu"})
    with torch.no_grad():
        unembed.norm.weight.copy_(torch.linspace(0.5, 2.0, unembed.d_model))
    o_proj = model.model.layers[1].self_attn.o_proj
    d = torch.randn(5, o_proj.in_features)
    with torch.no_grad():
        want = o_proj(d)  # W_O d (no bias in Llama)
        resid = to_residual(model, "attn_z", 1, d)
        torch.testing.assert_close(resid, want)
        torch.testing.assert_close(direction_logits(unembed, resid), (want * unembed.norm.weight) @ unembed.weight.T)
    with pytest.raises(ValueError, match="units"):
        to_residual(model, "attn_z", 1, torch.randn(2, 3))


@pytest.fixture(scope="module")
def heads_site(tiny_llama, tmp_path_factory):
    from mechflow.explorer.build import ExplorerSettings, Inputs, build_explorer

    root = tmp_path_factory.mktemp("attn_z")
    fs = _feature_set(tiny_llama, root, "attn_z")
    out = root / "explorer"
    build_explorer(out, "sae-topk", fs["features"], 1, Inputs(tokens=str(fs["tokens"]), moran=str(fs["moran"]),
                                                              lisa=str(fs["lisa"])),
                   CRS, ExplorerSettings(chunk_size=8), sae_dir=fs["sae"],
                   model_params={"spec": str(tiny_llama), "device": "cpu", "dtype": "float32"},
                   labels={"dataset": "d", "model": "tiny", "hook": "attn_z"})
    return out, fs


def test_an_attn_z_explorer_shows_head_attribution_and_promoted_tokens(heads_site):
    out, fs = heads_site
    share = xr.open_dataset(fs["features"])["head_share"].values
    index = _script_data(out / "data" / "index.js")[0]
    assert index["meta"]["n_heads"] == 2
    assert index["rows"]["top_head"] == np.argmax(share, axis=1).tolist()
    np.testing.assert_allclose(index["rows"]["top_head_share"], share.max(1), rtol=1e-3)
    pages = _pages(out)
    assert sorted(pages) == list(range(fs["n_features"]))
    for page in pages.values():
        assert len(page["heads"]["share"]) == 2 and sum(page["heads"]["share"]) == pytest.approx(1, abs=2e-3)
        assert all(v >= 0 for v in page["heads"]["direct"]) and len(page["up"]) == 10


def test_attn_z_head_bars_and_top_head_filter_in_chromium(heads_site):
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_explorer import CHROMIUM, FLAGS, HAVE_CHROMIUM

    if not HAVE_CHROMIUM:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    out, fs = heads_site
    top = np.argmax(xr.open_dataset(fs["features"])["head_share"].values, axis=1)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "index.html").as_uri())
            page.select_option("#filter-head", "1")
            shown = [int(r.get_attribute("data-feature")) for r in page.locator("tbody tr").all()]
            assert shown == np.flatnonzero(top == 1).tolist()
            page.goto((out / "feature.html").as_uri() + "#3")
            page.wait_for_selector("#feature[data-ready='3']")
            assert page.locator("#heads rect[data-kind=share]").count() == 2
            assert page.locator("#heads rect[data-kind=direct]").count() == 2
            assert not errors, errors
        finally:
            browser.close()


# ---- the explorer step ------------------------------------------------------------------------------------------------


def test_the_explorer_reads_corpus_files_only_for_corpus_saes(tmp_path, monkeypatch):
    from mechflow.resolve import resolve
    from mechflow.steps import explorer as explorer_step

    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("the king went up to the city", encoding="utf-8")
    (tmp_path / "texts" / "b.txt").write_text("and the people followed him", encoding="utf-8")
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.pop("results")
    cfg["datasets"]["texts"] = {"source": "text", "path": "texts/*.txt", "split_documents": "file", "context_size": 8,
                                "held_out": 0.5}
    cfg["sae"].update(level="corpus", corpus="texts", corpus_shards=2)
    schema = REPO / "config.schema.yaml"
    resolved = resolve(copy.deepcopy(cfg), base_dir=tmp_path, schema_path=schema, data_checks=False)
    study, facts = resolved.study, resolved.facts
    w = {"dataset": "tiny", "model": "minilm", "hook": "resid", "layer": "4"}
    sae_in = explorer_step.inputs(study, facts, dict(w, source="sae-topk"))
    assert sae_in["corpus_shards"] == [f"results/corpus/texts/minilm/resid/layer4/held_out.shard{i}.nc" for i in range(2)]
    assert sae_in["corpus_windows"] == ["results/corpus/texts/minilm/windows.nc"]
    assert explorer_step.params(study, facts, "minilm", "sae-topk")["corpus"]["rows"] == 50_000
    units_in = explorer_step.inputs(study, facts, dict(w, source="units"))
    assert units_in["corpus_shards"] == [] == units_in["corpus_windows"]
    assert explorer_step.params(study, facts, "minilm", "units")["corpus"] is None
    cfg["sae"].pop("level"), cfg["sae"].pop("corpus"), cfg["sae"].pop("corpus_shards")
    pooled = resolve(cfg, base_dir=tmp_path, schema_path=schema, data_checks=False)
    assert explorer_step.inputs(pooled.study, pooled.facts, dict(w, source="sae-topk"))["corpus_shards"] == []
