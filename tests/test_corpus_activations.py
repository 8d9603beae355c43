"""Corpus token activations streamed to shard files, and SAEs trained from the shards through the shuffle buffer.

The windows are built by hand (the windows contract of mechflow.corpus.build_windows); the oracle of the
activations is a plain ``model(input_ids, output_hidden_states=True)`` forward of each window alone.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from mechflow.corpus.activations import corpus_activations_to_file, shard_windows
from mechflow.io import load_dataset, open_dataset
from mechflow.sae.data import BatchStream, ShardedSource, TensorSource
from mechflow.sae.export import load_sae
from mechflow.sae.metrics import DENSITY_EDGES, density_histogram, evaluate
from mechflow.sae.pipeline import train_from_shards
from mechflow.sae.train import Trainer, train

CONTEXT = 12
RUN = {"arch": "topk", "n_features": 32, "k": 4, "steps": 24, "batch_size": 32, "seed": 3, "shuffle_block": 16,
       "shuffle_window": 64, "log_every": 4, "checkpoint_every": 0, "device": "cpu"}


def make_windows(n_windows: int = 24, seed: int = 0, vocab: int = 30) -> xr.Dataset:
    """Windows following the contract: ids >= 0 then -1 padding, a few short windows, splits interleaved."""
    rng = np.random.default_rng(seed)
    lengths = np.full(n_windows, CONTEXT, dtype=np.int32)
    for w, n in ((3, 5), (10, 1), (17, 2)):  # short last windows of documents, a window with the sink only
        if w < n_windows:
            lengths[w] = n
    tokens = np.full((n_windows, CONTEXT), -1, dtype=np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(3, vocab, n)
    split = np.where(np.arange(n_windows) % 4 == 2, "held_out", "train")
    return xr.Dataset(
        {"tokens": (("window", "position"), tokens), "length": ("window", lengths)},
        coords={"document": ("window", (np.arange(n_windows) // 3).astype(np.int32)), "split": ("window", split)},
        attrs={"context_size": CONTEXT, "prepend_bos": 0, "sink_position": 0, "padding": -1})


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


def oracle(model, windows: xr.Dataset, idx: np.ndarray, layer: int) -> np.ndarray:
    """Block ``layer``'s output at positions 1 .. length - 1 of each window, each window run alone."""
    rows = []
    for w in idx:
        n = int(windows["length"][w])
        if n < 2:
            continue
        ids = torch.from_numpy(windows["tokens"].values[w, :n].astype(np.int64))[None]
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        rows.append(hs[layer + 1][0, 1:n].numpy())
    return np.concatenate(rows)


def write_shards(tmp_path: Path, model, windows: xr.Dataset, split: str, n_shards: int, layer: int = 1,
                 batch_size: int = 5, **attrs) -> list[Path]:
    return [corpus_activations_to_file(tmp_path / f"{split}-{layer}-{s}.nc", model, windows, "resid", layer, s, n_shards,
                                       split, batch_size, {"model": "tiny", "model_digest": "m1", "dataset": "toy", **attrs})
            for s in range(n_shards)]


@pytest.mark.parametrize("layer", [0, 1])
def test_shards_hold_every_real_non_sink_token_of_the_split(tmp_path, llama, layer):
    windows = make_windows()
    paths = write_shards(tmp_path, llama, windows, "train", 2, layer)
    train = np.flatnonzero(windows["split"].values == "train")
    got_windows, got_positions, rows = [], [], []
    for s, path in enumerate(paths):
        ds = load_dataset(path)
        assert ds["activations"].dims == ("token", "unit") and ds["activations"].dtype == np.float32
        assert "token" not in ds.coords and ds.sizes["unit"] == 16
        assert (ds.attrs["hook"], int(ds.attrs["layer"]), ds.attrs["split"]) == ("resid", layer, "train")
        assert (int(ds.attrs["shard"]), int(ds.attrs["n_shards"]), int(ds.attrs["context_size"])) == (s, 2, CONTEXT)
        assert int(ds.attrs["sink_position"]) == 0 and ds.attrs["model_digest"] == "m1"
        np.testing.assert_array_equal(np.unique(ds["window"].values), np.unique(shard_windows(windows, "train", s, 2)))
        np.testing.assert_array_equal(ds["document"].values, windows["document"].values[ds["window"].values])
        got_windows.append(ds["window"].values)
        got_positions.append(ds["position"].values)
        rows.append(ds["activations"].values)
    want_w = np.concatenate([np.full(max(int(windows["length"][w]) - 1, 0), w) for w in train])
    want_p = np.concatenate([np.arange(1, int(windows["length"][w])) for w in train])
    np.testing.assert_array_equal(np.concatenate(got_windows), want_w)
    np.testing.assert_array_equal(np.concatenate(got_positions), want_p)
    # the forward pass stopped after block `layer`, on batches padded to their longest window: same values
    np.testing.assert_allclose(np.concatenate(rows), oracle(llama, windows, train, layer), rtol=0, atol=1e-5)


def test_the_forward_pass_stops_after_the_layer_and_reads_windows_lazily(tmp_path, llama):
    windows = make_windows()
    windows.to_netcdf(tmp_path / "windows.nc", engine="h5netcdf")
    calls = []
    handle = llama.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        with open_dataset(tmp_path / "windows.nc") as lazy:
            path = corpus_activations_to_file(tmp_path / "lazy.nc", llama, lazy, "resid", 0, 0, 1, "held_out", 4, {})
    finally:
        handle.remove()
    assert not calls  # block 1 never ran
    held = np.flatnonzero(windows["split"].values == "held_out")
    np.testing.assert_allclose(load_dataset(path)["activations"].values, oracle(llama, windows, held, 0), rtol=0, atol=1e-5)


def test_more_shards_than_windows_and_bad_windows(tmp_path, llama):
    windows = make_windows(6)  # one held-out window
    paths = write_shards(tmp_path, llama, windows, "held_out", 3)
    sizes = [load_dataset(p).sizes["token"] for p in paths]
    assert sorted(sizes) == [0, 0, CONTEXT - 1] and all(load_dataset(p).sizes["unit"] == 16 for p in paths)
    bad = windows.copy(deep=True)
    bad["tokens"][0, CONTEXT - 1] = -1  # padding inside a full window
    with pytest.raises(ValueError, match="windows \\[0\\]"):
        corpus_activations_to_file(tmp_path / "bad.nc", llama, bad, "resid", 0, 0, 1, "train", 4, {})
    assert not list(tmp_path.glob("*bad.nc*"))  # nothing left behind
    with pytest.raises(ValueError, match="sink_position"):
        corpus_activations_to_file(tmp_path / "x.nc", llama, windows.assign_attrs(sink_position=1), "resid", 0, 0, 1,
                                   "train", 4, {})
    with pytest.raises(ValueError, match="no window of split 'test'"):
        corpus_activations_to_file(tmp_path / "x.nc", llama, windows, "resid", 0, 0, 1, "test", 4, {})


def random_shards(tmp_path: Path, sizes: list[int], d: int = 8, seed: int = 0, name: str = "s") -> tuple[list[Path], np.ndarray]:
    """Shard files of the corpus layout with random rows (low-rank plus noise, so an SAE has something to learn)."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = (rng.standard_normal((n, 3)) @ rng.standard_normal((3, d)) + 0.1 * rng.standard_normal((n, d))).astype(np.float32)
    paths, start = [], 0
    for i, size in enumerate(sizes):
        path = tmp_path / f"{name}{i}.nc"
        xr.Dataset({"activations": (("token", "unit"), x[start : start + size])},
                   coords={"unit": np.arange(d), "window": ("token", np.arange(start, start + size))},
                   attrs={"hook": "resid", "layer": 1, "model": "tiny", "context_size": CONTEXT, "prepend_bos": 0,
                          "sink_position": 0}).to_netcdf(path, engine="h5netcdf")
        paths.append(path)
        start += size
    return paths, x


def test_sharded_source_reads_across_boundaries(tmp_path):
    paths, x = random_shards(tmp_path, [50, 0, 30, 70])
    with ShardedSource(paths) as src:
        assert (src.n_rows, src.d) == (150, 8) and src.offsets.tolist() == [0, 50, 50, 80, 150]
        for a, b in [(0, 150), (45, 55), (50, 80), (49, 81), (79, 80), (10, 10), (120, 150)]:
            np.testing.assert_array_equal(src.read(a, b), x[a:b])
        assert src.n_open <= 2
        with pytest.raises(ValueError, match="outside"):
            src.read(140, 151)
    mixed = ShardedSource([xr.DataArray(x[:20], dims=("token", "unit")), paths[2]])
    np.testing.assert_array_equal(mixed.read(15, 25), np.concatenate([x[15:20], x[50:55]]))
    wide, _ = random_shards(tmp_path, [10], d=9, name="w")
    with pytest.raises(ValueError, match="widths"):
        ShardedSource([paths[0], wide[0]])


def test_training_from_shards_equals_training_in_memory(tmp_path):
    paths, x = random_shards(tmp_path, [130, 77, 193])
    a = Trainer(ShardedSource(paths), RUN).fit()
    b = Trainer(TensorSource(x), RUN).fit()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    xr.testing.assert_identical(a.history, b.history)
    out = tmp_path / "sae"
    train_from_shards(paths, RUN, out, progress=False, config_digest="cd")
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors", "training.nc"]
    saved = load_sae(out)
    ref = train(x, **RUN)
    for name, t in ref.export_tensors().items():
        assert torch.equal(saved.export_tensors()[name], t), name
    tr = load_dataset(out / "training.nc")
    xr.testing.assert_equal(tr.drop_attrs(), ref.history)
    assert tr.attrs["level"] == "corpus" and int(tr.attrs["token_rows"]) == 400 and tr.attrs["config_digest"] == "cd"
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["context_size"] == CONTEXT and cfg["metadata"]["prepend_bos"] is False
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and cfg["mechflow"]["level"] == "corpus"


def _open_shard_files(folder: Path) -> int:
    """Files under ``folder`` this process holds open now."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
        except OSError:
            pass
    return n


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_reading_memory_and_open_files_do_not_grow_with_the_shards(tmp_path):
    d, n = 256, 8_192  # 8 MiB of rows; the stream holds windows of 512 rows (0.5 MiB)

    def peak(n_shards: int) -> tuple[int, int]:
        folder = tmp_path / f"k{n_shards}"
        folder.mkdir()
        paths, _ = random_shards(folder, [n // n_shards] * n_shards, d=d, name="s")
        src = ShardedSource(paths)
        stream = BatchStream(src, 256, seed=0, block=32, window=512)
        most_open = 0
        tracemalloc.start()
        for step in range(0, n // 256 + 4, 2):  # one epoch and the start of the next: every shard is read
            stream.batch(step)
            most_open = max(most_open, _open_shard_files(folder), src.n_open)
            assert len(stream._windows) <= 2
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        src.close()
        assert _open_shard_files(folder) == 0
        return top, most_open

    few, many = peak(2), peak(16)
    assert few[1] <= 2 and many[1] <= 2
    window_bytes = 512 * d * 4
    assert many[0] < 1.5 * few[0] + 2**20 and many[0] < 8 * window_bytes < n * d * 4, (few, many)


def test_held_out_metrics_come_from_the_held_out_shards(tmp_path, llama, tiny_llama):
    windows = make_windows(60, seed=1)
    train_paths = write_shards(tmp_path, llama, windows, "train", 2, model_spec=str(tiny_llama))
    held_paths = write_shards(tmp_path, llama, windows, "held_out", 1, model_spec=str(tiny_llama))
    out = tmp_path / "sae"
    run = {**RUN, "n_features": 24}
    train_from_shards(train_paths, run, out, held_out_paths=held_paths, progress=False)
    tr = load_dataset(out / "training.nc")
    model = load_sae(out)
    held = np.concatenate([load_dataset(p)["activations"].values for p in held_paths])
    trained_on = np.concatenate([load_dataset(p)["activations"].values for p in train_paths])
    on_held, on_train = evaluate(model, held), evaluate(model, trained_on)
    assert int(tr["heldout_tokens"]) == held.shape[0] == int(tr.attrs["heldout_token_rows"])
    for m in ("fvu", "l0", "dead_fraction", "dense_fraction"):
        assert float(tr[f"heldout_{m}"]) == pytest.approx(on_held[m], rel=1e-6, abs=1e-9), m
    assert float(tr["heldout_fvu"]) != pytest.approx(on_train["fvu"], rel=1e-3)
    fired = (model.encode(torch.from_numpy(held)) != 0).sum(0).numpy()
    np.testing.assert_allclose(tr["heldout_feature_density"].values, fired / held.shape[0])
    np.testing.assert_array_equal(tr["heldout_density_histogram"].values, density_histogram(fired, held.shape[0]))
    assert int(tr["heldout_density_histogram"].sum()) == 24 and tr.sizes["density_bin"] == DENSITY_EDGES.size - 1
    assert float(tr["heldout_dead_fraction"]) == pytest.approx(float((fired == 0).mean()))
    assert {"loss", "fvu", "l0", "dead_fraction", "dense_fraction", "lr"} <= set(tr.data_vars)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["mechflow"]["metrics"]["heldout"]["fvu"] == pytest.approx(on_held["fvu"], rel=1e-6)
    meta = cfg["metadata"]
    assert (meta["hf_hook_name"], meta["hf_hook_site"], meta["context_size"], meta["prepend_bos"], meta["dataset_path"]) \
        == ("model.layers.1", "output", CONTEXT, False, "toy")
    with pytest.raises(ValueError, match="both trained on and held out"):
        train_from_shards(train_paths, run, tmp_path / "x", held_out_paths=train_paths[:1], progress=False)


def test_density_histogram_bins_dead_and_always_on_latents():
    h = density_histogram(np.array([0, 0, 1, 1000, 500]), 1000)
    assert h.sum() == 5 and h[0] == 2 and h[-1] == 2  # dead -> first bin (log10 1e-10), density 1 -> last bin
