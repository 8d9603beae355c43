"""GGUF models convert once into a Hugging Face folder (mechflow.models.converted_gguf) that every later load
reads: same weights and tokenizer, one conversion however many jobs ask, nothing left by a failed one."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import mechflow.models as models
from mechflow.models import CONVERTED_MANIFEST, ResolvedModel, converted_gguf, load_model


@pytest.fixture()
def fake_gguf(tiny_llama, tmp_path, monkeypatch):
    """A ResolvedModel of a .gguf file whose 'parse' loads the tiny llama folder (and is counted)."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    gguf = folder / "tiny.Q4.gguf"
    gguf.write_bytes(b"GGUF-fake-weights")
    real_load = models._load
    calls = []

    def load(directory, gguf_file, spec, *args, **kwargs):
        if gguf_file:  # parsing the GGUF: stands in for transformers' (slow) GGUF loader
            calls.append(gguf_file)
            return real_load(tiny_llama, None, spec, *args, **kwargs)
        return real_load(directory, gguf_file, spec, *args, **kwargs)

    monkeypatch.setattr(models, "_load", load)
    monkeypatch.setenv(models.MODEL_CACHE_ENV, str(tmp_path / "cache"))
    return ResolvedModel(str(gguf), folder, gguf.name, (gguf,)), calls


def test_a_gguf_converts_once_and_loads_the_same_model(fake_gguf, tiny_llama):
    resolved, calls = fake_gguf
    model, tok = load_model(resolved, device="cpu")
    again, tok2 = load_model(resolved, device="cpu")
    assert calls == ["tiny.Q4.gguf"]  # converted once, then read from the folder
    direct, tok_direct = models._load(tiny_llama, None, "tiny", "cpu")
    for name, tensor in direct.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor) and torch.equal(again.state_dict()[name], tensor)
    text = ["a small town", "the city of"]
    assert tok(text)["input_ids"] == tok_direct(text)["input_ids"] == tok2(text)["input_ids"]
    folder = converted_gguf(resolved)
    manifest = json.loads((folder / CONVERTED_MANIFEST).read_text())
    assert manifest["model_digest"] == models.model_digest(resolved) and manifest["gguf_file"] == "tiny.Q4.gguf"
    assert manifest["model_digest"][:16] in folder.name
    # the random-init control builds from the converted config: the same weights as from the source
    rnd, _ = load_model(resolved, device="cpu", random_init=True, init_seed=3)
    rnd_direct, _ = models._load(tiny_llama, None, "tiny", "cpu", random_init=True, init_seed=3)
    assert all(torch.equal(a, b) for a, b in zip(rnd.state_dict().values(), rnd_direct.state_dict().values()))


def test_concurrent_conversions_convert_once(fake_gguf):
    """Three callers at once (threads standing in for jobs): one converts, the others wait on the lock and
    find the folder. (Only the conversion runs in threads: transformers' model loading is not thread-safe.)"""
    resolved, calls = fake_gguf
    errors, folders = [], []

    def job():
        try:
            folders.append(converted_gguf(resolved))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and calls == ["tiny.Q4.gguf"] and len(set(folders)) == 1 and len(folders) == 3


def test_a_changed_gguf_gets_its_own_folder_and_off_parses_every_time(fake_gguf, monkeypatch):
    resolved, calls = fake_gguf
    first = converted_gguf(resolved)
    (resolved.directory / resolved.gguf_file).write_bytes(b"GGUF-other-weights")
    second = converted_gguf(resolved)
    assert first != second and len(calls) == 2
    monkeypatch.setenv(models.MODEL_CACHE_ENV, "off")
    load_model(resolved, device="cpu")
    load_model(resolved, device="cpu")
    assert len(calls) == 4


def test_a_failed_conversion_leaves_no_folder(fake_gguf, monkeypatch, tmp_path):
    resolved, calls = fake_gguf

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        converted_gguf(resolved)
    cache = tmp_path / "cache"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    load_model(resolved, device="cpu")  # the job goes on, parsing the GGUF (the same model, slower)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_an_unwritable_cache_falls_back_to_the_gguf(fake_gguf, monkeypatch, tmp_path, caplog):
    resolved, calls = fake_gguf
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(models.MODEL_CACHE_ENV, str(blocker / "cache"))  # cannot be created
    model, _ = load_model(resolved, device="cpu")
    assert calls == ["tiny.Q4.gguf"] and "parsing the GGUF file instead" in caplog.text
    assert all(not p.is_meta for p in model.parameters())


def test_model_digest_hashes_once_until_the_weights_change(tmp_path, monkeypatch):
    import types

    import mechflow.io as mio

    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"a" * 10)
    resolved = types.SimpleNamespace(weight_files=[weights])
    calls, real = [], mio.files_sha256
    monkeypatch.setattr(mio, "files_sha256", lambda paths: calls.append(1) or real(paths))
    first = models.model_digest(resolved)
    assert models.model_digest(resolved) == first and len(calls) == 1
    weights.write_bytes(b"b" * 11)
    assert models.model_digest(resolved) == real([weights]) != first and len(calls) == 2
