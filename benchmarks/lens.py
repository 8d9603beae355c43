"""Prompts/s and peak memory of the all-layers lens read-out vs a per-layer loop, at SmolLM2's size.

Setup: residual streams ``h`` ``[layer=30, prompt=P, d=576]`` and a Llama read-out head (``LlamaRMSNorm``
+ ``nn.Linear(576, 49152)``, random weights: speed and memory do not depend on their values), three
target tokens per prompt. Every method returns the same statistics per layer and prompt: target
log-probabilities and ranks, entropy and the top-1 token.

- ``mechflow``: :func:`mechflow.lens.chunked.read_vocab` on ``norm(h)`` of every layer at once,
  vocabulary in chunks (64 MiB working set);
- ``per_layer_loop``: what a TransformerLens / nnsight user writes: for each layer,
  ``logits = model.lm_head(model.model.norm(h[l]))``, ``log_softmax``, gather, entropy, argmax, ranks;
- ``all_layers_full``: the same without the loop, ``[layer, prompt, vocab]`` at once (fast while it
  fits; skipped when it would need more than ``--full-limit-gb``).

Times are the best of ``--reps`` in this process (the methods alternate); peak memory is measured in a
fresh process per method (the peak resident set during the call minus the resident set before it, with
glibc's mmap threshold fixed so that freed tensors leave the resident set), so one method's high-water mark
never hides another's. Results agree to 1e-4 (checked).

    .venv/bin/python benchmarks/lens.py            # P = 16, 64, 256
    .venv/bin/python benchmarks/lens.py --quick    # P = 16, 64
Writes benchmarks/results/lens.json (lens_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _device import device_info, write_result  # benchmarks/_device.py
from torch import nn

from mechflow.lens.chunked import read_vocab

ROOT = Path(__file__).resolve().parents[1]
L, D, V, T = 30, 576, 49152, 3
METHODS = ("mechflow", "per_layer_loop", "all_layers_full")


def setup(P: int, device: str, seed: int = 0):
    """(norm, lm_head, h [L, P, D], targets [P, T]) at SmolLM2's shapes."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(seed)
    norm = LlamaRMSNorm(D, eps=1e-5).to(device)
    head = nn.Linear(D, V, bias=False).to(device)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.1)
        head.weight.normal_(0.0, 0.05)
    h = torch.randn(L, P, D, device=device) * 3
    targets = torch.randint(0, V, (P, T), device=device)
    return norm, head, h, targets


@torch.no_grad()
def run_mechflow(norm, head, h, targets):
    r = read_vocab(norm(h), head.weight, targets.unsqueeze(-1))
    return r.target_logprob, r.target_rank, r.entropy, r.top1


@torch.no_grad()
def run_per_layer_loop(norm, head, h, targets):
    out = []
    for layer in range(h.shape[0]):
        logits = head(norm(h[layer]))  # [P, V]
        lp = torch.log_softmax(logits, -1)
        t = lp.gather(-1, targets)
        rank = (logits.unsqueeze(1) > logits.gather(-1, targets).unsqueeze(-1)).sum(-1)
        out.append((t, rank, -(lp.exp() * lp).sum(-1), logits.argmax(-1)))
    return tuple(torch.stack(x) for x in zip(*out))


@torch.no_grad()
def run_all_layers_full(norm, head, h, targets):
    logits = head(norm(h))  # [L, P, V]
    lp = torch.log_softmax(logits, -1)
    idx = targets.expand(h.shape[0], -1, -1)
    rank = (logits.unsqueeze(2) > logits.gather(-1, idx).unsqueeze(-1)).sum(-1)
    return lp.gather(-1, idx), rank, -(lp.exp() * lp).sum(-1), logits.argmax(-1)


RUN = {"mechflow": run_mechflow, "per_layer_loop": run_per_layer_loop, "all_layers_full": run_all_layers_full}


def full_bytes(P: int) -> int:
    """Working set of the all-layers baseline: logits, log-softmax, exp and a product, [L, P, V] float32 each,
    plus the [L, P, T, V] rank comparison (bool)."""
    return L * P * V * (4 * 4 + T)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _status_kb(field: str) -> int:
    """A memory field of /proc/self/status (Linux), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _measure(method: str, P: int, device: str, threads: int) -> float:
    """Run in a fresh process: extra peak memory of one call beyond what the inputs hold, MiB.

    CPU: the peak resident set (VmHWM) is reset to the current one after the set-up (``/proc/self/clear_refs``;
    ``ru_maxrss`` would carry the parent's peak over an exec), so the set-up's own transients do not count.
    CUDA: ``max_memory_allocated`` above the allocation before the call.
    """
    torch.set_num_threads(threads)
    args = setup(P, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        RUN[method](*args)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    warm = torch.randn(8, D) @ torch.randn(D, 512)  # one-time library buffers (BLAS, thread pools) are nobody's working set
    torch.log_softmax(warm, -1).exp().argmax(-1)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    RUN[method](*args)
    return (_status_kb("VmHWM") - before) / 1024


def peak_mb(method: str, P: int, device: str) -> float:
    """:func:`_measure` in a fresh interpreter."""
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]\n"
            f"import lens; print(lens._measure({method!r}, {P}, {device!r}, {torch.get_num_threads()}))\n")
    # a fixed mmap threshold: glibc then returns every large block on free, so the resident set follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def time_case(P: int, device: str, reps: int, full_limit: float) -> dict:
    args = setup(P, device)
    methods = [m for m in METHODS if m != "all_layers_full" or full_bytes(P) <= full_limit * 2**30]
    ref = None
    best = {m: float("inf") for m in methods}
    for m in methods:  # warm-up and agreement
        out = RUN[m](*args)
        if ref is None:
            ref = out
        else:
            torch.testing.assert_close(out[0], ref[0], atol=1e-4, rtol=1e-4)
            assert torch.equal(out[3], ref[3]) and (out[1] - ref[1]).abs().max() <= 1
            torch.testing.assert_close(out[2], ref[2], atol=1e-3, rtol=1e-4)
    for _ in range(reps):
        for m in methods:
            _sync(device)
            t = time.perf_counter()
            RUN[m](*args)
            _sync(device)
            best[m] = min(best[m], time.perf_counter() - t)
    mem = {m: peak_mb(m, P, device) for m in methods}
    return {
        "prompts": P, "layers": L, "d_model": D, "vocab": V, "targets": T, "device": device, "reps": reps,
        "seconds": best, "prompts_per_s": {m: P / best[m] for m in methods},
        "speedup_vs_per_layer_loop": best["per_layer_loop"] / best["mechflow"],
        "speedup_vs_all_layers_full": best["all_layers_full"] / best["mechflow"] if "all_layers_full" in best else None,
        "peak_extra_mb": mem,
        "skipped": [m for m in METHODS if m not in methods],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="P = 16, 64 only")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; the best time counts")
    parser.add_argument("--full-limit-gb", type=float, default=4.0, help="skip the all-layers baseline above this working set")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [16, 64] if args.quick else [16, 64, 256]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs = []
    for device in devices:
        for P in sizes:
            r = time_case(P, device, args.reps, args.full_limit_gb)
            runs.append(r)
            pps = ", ".join(f"{m} {v:.1f}" for m, v in r["prompts_per_s"].items())
            mem = ", ".join(f"{m} {v:.0f}" for m, v in r["peak_extra_mb"].items())
            print(f"{device} P={P}: prompts/s {pps}; speed-up vs per-layer loop {r['speedup_vs_per_layer_loop']:.2f}x; "
                  f"peak extra MiB {mem}", flush=True)
    result = {
        "benchmark": "lens",
        "baseline": "per_layer_loop: lm_head(norm(h[l])) + log_softmax per layer (TransformerLens / nnsight style); "
                    "all_layers_full: the same for every layer at once, [layer, prompt, vocab] in memory",
        "metric": "prompts per second of the read-out of all 30 layers (best of reps, same process); peak extra memory "
                  "of one call in a fresh process (MiB)",
        "quick": args.quick,
        "device_info": device_info(),
        "runs": runs,
    }
    out = args.out or ROOT / "benchmarks" / "results" / ("lens_quick.json" if args.quick else "lens.json")
    write_result(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
