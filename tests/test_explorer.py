"""The feature explorer: its computations against independent oracles, the static site of a small real study (the
tiny Llama, a top-k SAE on its residual stream, places in GB and NYMETRO), the live server's answers to good and bad
requests, and both driven through headless Chromium (no request leaves 127.0.0.1)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import WORDS

from mechflow.io import write_dataset

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync"]
CRS = {"GB": "EPSG:27700", "NYMETRO": "EPSG:32618"}
BOXES = {"GB": (-4.0, 0.5, 50.5, 55.0), "NYMETRO": (-74.5, -73.3, 40.4, 41.2)}
PLACES = WORDS[:20]


def _basemap():
    try:
        from mechflow.explorer.build import shipped_basemap
        from mechflow.spatial.basemap import basemap_layers  # noqa: F401 (the shipped basemap is installed)
    except ImportError:
        return None
    return shipped_basemap


@pytest.fixture(scope="module")
def study(tiny_llama, tmp_path_factory):
    """Token activations of the tiny Llama at resid layer 1 for 40 prompts, a top-k SAE on them, its pooled features,
    Moran and LISA files: what the explorer rule reads."""
    import torch

    from mechflow.extract.capture import capturing
    from mechflow.models import load_model, resolve_model
    from mechflow.sae.archs import build_sae
    from mechflow.sae.export import save_sae
    from mechflow.spatial.analysis import spatial_analysis

    root = tmp_path_factory.mktemp("explorer_study")
    rng = np.random.default_rng(0)
    regions = np.repeat(["GB", "NYMETRO"], 20)
    lon = np.array([rng.uniform(*BOXES[r][:2]) for r in regions])
    lat = np.array([rng.uniform(*BOXES[r][2:]) for r in regions])
    texts = [f"{PLACES[i % 20]} , {'england' if r == 'GB' else 'new jersey'}" for i, r in enumerate(regions)]
    model, tok = load_model(resolve_model(str(tiny_llama)), "cpu")
    rows, keys = [], []
    with torch.inference_mode(), capturing(model, {"resid": [1]}) as capture:
        for p, text in enumerate(texts):
            enc = tok(text, return_tensors="pt")
            acts = capture(dict(enc))[("resid", 1)][0].float().numpy()
            ids = enc["input_ids"][0].tolist()
            rows.append(acts)
            keys += [(p, i, tok.decode([t])) for i, t in enumerate(ids)]
    acts = np.concatenate(rows)[:, None, :]
    place = {"text": ("token", np.array([texts[k[0]] for k in keys])), "latitude": ("token", lat[[k[0] for k in keys]]),
             "longitude": ("token", lon[[k[0] for k in keys]]), "region": ("token", regions[[k[0] for k in keys]])}
    tokens = xr.Dataset({"activations": (("token", "layer", "unit"), acts.astype(np.float32))},
                        coords={"token": np.arange(len(keys)), "layer": [1], "unit": np.arange(acts.shape[2]),
                                "prompt_index": ("token", [k[0] for k in keys]), "position": ("token", [k[1] for k in keys]),
                                "token_str": ("token", [k[2] for k in keys]), "excluded": ("token", [k[1] == 0 for k in keys]),
                                **place})
    write_dataset(tokens, root / "resid.tokens.nc")
    sae = build_sae("topk", acts.shape[2], 32, 4)
    sae.init_weights(torch.Generator().manual_seed(0))
    save_sae(sae, root / "sae")
    pooled = np.stack([r[1:].mean(0) for r in rows]).astype(np.float32)
    with torch.no_grad():
        feats = sae.encode(torch.as_tensor(pooled)).numpy()
    coords = {"prompt": np.arange(40), "text": ("prompt", texts), "latitude": ("prompt", lat), "longitude": ("prompt", lon),
              "region": ("prompt", regions), "place_id": ("prompt", np.arange(40))}
    fa = xr.DataArray(feats, dims=("prompt", "feature"), coords={**coords, "feature": np.arange(32)}, name="features",
                      attrs={"hook": "resid", "layer": 1})
    write_dataset(fa.to_dataset(), root / "sae" / "features.nc")
    params = dict(k=5, transform="r", permutations=19, seed=0, crs=CRS, lisa_top_n=3, shuffled_control=False)
    moran, lisa = spatial_analysis(fa, params)
    write_dataset(moran, root / "moran.nc")
    write_dataset(lisa, root / "lisa.nc")
    return {"root": root, "model": tiny_llama, "features": root / "sae" / "features.nc", "sae": root / "sae",
            "tokens": root / "resid.tokens.nc", "moran": root / "moran.nc", "lisa": root / "lisa.nc", "texts": texts}


@pytest.fixture(scope="module")
def site(study, tmp_path_factory):
    from mechflow.explorer.build import ExplorerSettings, Inputs, build_explorer

    out = tmp_path_factory.mktemp("site") / "explorer"
    info = build_explorer(out, "sae-topk", study["features"], 1,
                          Inputs(tokens=str(study["tokens"]), moran=str(study["moran"]), lisa=str(study["lisa"])),
                          CRS, ExplorerSettings(chunk_size=8), sae_dir=study["sae"],
                          model_params={"spec": str(study["model"]), "device": "cpu", "dtype": "float32"},
                          labels={"dataset": "d", "model": "tiny", "hook": "resid"}, basemap=_basemap())
    return out, info


def _script_data(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    m = re.fullmatch(r"MF\.\w+\((.*)\);\n", text, flags=re.S)
    return json.loads(f"[{m.group(1)}]")


# ---- computations -------------------------------------------------------------------------------------------------


def test_nearest_matches_brute_force_cosine():
    from mechflow.explorer.directions import nearest

    d = np.random.default_rng(1).normal(size=(50, 7)).astype(np.float32)
    idx, cos = nearest(d, 3, block=16)
    u = d / np.linalg.norm(d, axis=1, keepdims=True)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    want = np.argsort(-sim, axis=1)[:, :3]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(cos, np.take_along_axis(sim, want, 1), rtol=1e-5)


def test_direction_logits_apply_the_final_norm_scale(tiny_llama):
    import torch

    from mechflow.explorer.directions import direction_logits, logit_tokens
    from mechflow.lens.model import load_causal_lm

    _, _, unembed, _ = load_causal_lm({"spec": str(tiny_llama), "device": "cpu"})
    with torch.no_grad():
        unembed.norm.weight.copy_(torch.linspace(0.5, 2.0, unembed.d_model))
    d = torch.randn(3, unembed.d_model)
    want = (d * unembed.norm.weight) @ unembed.weight.T  # RMSNorm: no centring
    torch.testing.assert_close(direction_logits(unembed, d), want)
    up, upv, down, downv = logit_tokens(unembed, d, 4)
    assert (upv[:, :-1] >= upv[:, 1:]).all() and (downv[:, :-1] <= downv[:, 1:]).all()
    np.testing.assert_array_equal(up[:, 0], want.argmax(1).numpy())
    np.testing.assert_array_equal(down[:, 0], want.argmin(1).numpy())


def test_feature_tokens_ranks_prompts_by_their_largest_token():
    from mechflow.explorer.tokens import TokenTable, feature_tokens

    prompt = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    vals = np.array([[9.0], [0.0], [1.0], [0.0], [3.0], [0.0], [2.0], [5.0]], dtype=np.float32)  # row 0 is a sink
    excluded = np.array([True, False, False, True, False, True, False, False])
    import scipy.sparse as sp

    for values in (vals, sp.csc_matrix(vals)):
        table = TokenTable(prompt, np.array([0, 1, 2, 0, 1, 0, 1, 2]), np.array(list("abcdefgh")), excluded, values,
                           np.array([0, 3, 5, 8]))
        ft = feature_tokens(table, 0, n_contexts=2, bins=4)
        assert [c["prompt"] for c in ft.contexts] == [2, 1]
        assert ft.contexts[0]["values"] == [0.0, 2.0, 5.0] and ft.contexts[0]["excluded"] == [0]
        assert ft.max == 5.0 and ft.density == pytest.approx(4 / 5)
        assert sum(ft.hist["counts"]) == 4  # the sink's 9 is never counted


# ---- the static site -----------------------------------------------------------------------------------------------


def test_site_holds_every_feature_lazily(site, study):
    out, info = site
    assert (out / "index.html").exists() and (out / "feature.html").exists()
    index = _script_data(out / "data" / "index.js")[0]
    assert index["meta"]["n_features"] == 32 and index["rows"]["feature"] == list(range(32))
    assert {"I_GB", "I_NYMETRO", "lisa_GB", "density", "max"} <= set(index["rows"])
    chunks = sorted((out / "data" / "chunks").glob("c*.js"))
    assert len(chunks) == 4 and info["chunk_files"] == 4
    pages = {}
    for c in chunks:
        n, data = _script_data(c)
        pages.update({int(k): v for k, v in data["features"].items()})
        assert all(int(k) // 8 == n for k in data["features"])
    assert sorted(pages) == list(range(32))
    live = [f for f, p in pages.items() if p["contexts"]]
    assert live, "some feature is active on some prompt"
    for f in live:
        c = pages[f]["contexts"][0]
        assert c["tokens"][0] and max(c["values"]) == pytest.approx(pages[f]["max"], rel=1e-2)
        assert len(pages[f]["up"]) == 10 and len(pages[f]["near"]) == 8
    html = "".join(p.read_text() for p in out.rglob("*.html")) + (out / "assets" / "explorer.js").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "no external resource"


def test_live_session_answers_and_refuses(study):
    from starlette.testclient import TestClient

    from mechflow.explorer.live import LiveSession, SetSpec
    from mechflow.explorer.server import make_app

    spec = SetSpec("d/tiny/resid/layer1/sae-topk", "sae-topk", "tiny", "resid", 1, str(study["features"]), str(study["sae"]),
                   {"spec": str(study["model"]), "device": "cpu", "dtype": "float32"}, True)
    client = TestClient(make_app(LiveSession([spec])))
    assert client.get("/api/sets").json()["sets"][0]["id"] == spec.id
    ok = client.post("/api/activations", json={"set": spec.id, "text": "london , england", "feature": 3})
    assert ok.status_code == 200 and ok.json()["tokens"] == ["london", ",", "england"] and len(ok.json()["values"]) == 3
    bad = [({"set": "nope", "text": "x"}, 404), ({"set": spec.id, "text": "london", "feature": 999}, 400),
           ({"set": spec.id, "text": " ".join(["london"] * 80)}, 413), ({"set": spec.id, "text": ""}, 400)]
    for body, status in bad:
        r = client.post("/api/activations", json=body)
        assert r.status_code == status and r.json()["error"]
    r = client.post("/api/activations", content=b'{"set": "\xff\xfe"}')
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    assert client.post("/api/activations", json={"set": spec.id, "text": "rome , italy"}).status_code == 200
    zero = client.post("/api/steer", json={"set": spec.id, "text": "london , england", "feature": 3, "scale": 0}).json()
    assert zero["kl"] == pytest.approx(0, abs=1e-6) and zero["clean"] == zero["steered"]
    big = client.post("/api/steer", json={"set": spec.id, "text": "london , england", "feature": 3, "scale": 8}).json()
    assert big["kl"] > 1e-4 and len(big["steered"]) == 10
    assert client.post("/api/steer", json={"set": spec.id, "text": "x", "feature": 3, "scale": "big"}).status_code == 400


# ---- in the browser ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not HAVE_CHROMIUM:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _wait(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` (the page's CSP forbids the string evaluation wait_for_function uses)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _local_only(requests: list[str]) -> None:
    outside = [u for u in requests if not (u.startswith("file://") or u.startswith("http://127.0.0.1:"))]
    assert not outside, f"requests left 127.0.0.1: {outside}"


def test_explorer_in_chromium(site, browser):
    out, _ = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((out / "index.html").as_uri())
    page.click("th[data-key=I_GB]")
    shown = [float(t) for t in page.locator("tbody tr td:nth-child(2)").all_inner_texts() if t != "\u2014"]
    assert shown and shown == sorted(shown, reverse=True)
    first = page.locator("tbody tr").first.get_attribute("data-feature")
    page.click("tbody tr:first-child a")
    page.wait_for_selector(f"#feature[data-ready='{first}']")
    canvas = page.locator("canvas[data-region=GB]")
    assert int(canvas.get_attribute("data-points")) == 20
    if _basemap() is not None:
        assert "coastline" in canvas.get_attribute("data-basemap-layers")
        assert int(canvas.get_attribute("data-basemap-segments")) > 10
    page.hover("canvas[data-region=GB]")
    assert page.locator("#contexts .ctx").count() >= 1 and page.locator("#contexts .tok.hot").count() >= 1
    for f in range(32):  # any feature page, opened fresh: under 1 s
        t0 = time.perf_counter()
        page.goto((out / "feature.html").as_uri() + f"#{f}")
        page.wait_for_selector(f"#feature[data-ready='{f}']", timeout=5000)
        assert time.perf_counter() - t0 < 1.0, f"feature {f} took {time.perf_counter() - t0:.2f} s"
    assert not errors, errors
    _local_only(requests)


def test_live_explorer_in_chromium(study, browser):
    import uvicorn

    from mechflow.explorer.live import LiveSession, SetSpec
    from mechflow.explorer.server import HOST, make_app

    spec = SetSpec("d/tiny/resid/layer1/sae-topk", "sae-topk", "tiny", "resid", 1, str(study["features"]), str(study["sae"]),
                   {"spec": str(study["model"]), "device": "cpu", "dtype": "float32"}, True)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(LiveSession([spec])), host=HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        page = browser.new_page()
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"http://{HOST}:{port}/")
        page.wait_for_selector("body[data-sets='1']")
        page.fill("#text", "london , england")
        page.fill("#feature", "3")
        page.click("#run")
        page.wait_for_selector("#tokens[data-ready='3']")
        assert page.locator("#tokens .tok").all_inner_texts() == ["london", ",", "england"]
        page.fill("#feature", "999")
        page.click("#run")
        _wait(lambda: page.inner_text("#error") != "")
        assert "unknown feature" in page.inner_text("#error")
        page.fill("#feature", "3")
        page.fill("#text", "rome , italy")
        page.click("#run")
        _wait(lambda: page.inner_text("#error") == "" and "rome" in page.inner_text("#tokens"))
        page.click("#steer")
        page.wait_for_selector("#next[data-ready='1']")
        _local_only(requests)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
