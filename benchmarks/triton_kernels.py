"""Benchmark a full TopK SAE training step (forward + backward + Adam) with the fused kernels.

Variants, timed in the same process on the same data:

* ``fused``: ``mechflow.kernels.topk_encode`` + ``sparse_decode`` on the Triton backend (never writes the
  dense [batch, n_features] activations; sparse backward).
* ``dense_reference`` (the baseline): dense pre-activations ``x @ W_enc + b_enc``, ``topk``, dense scatter
  into [batch, n_features], dense decoder matmul; autograd backward.
* ``library_sparse_decoder``: dense encoder + top-k as the baseline, but the decoder of an SAE library
  (EleutherAI ``sparsify``'s ``decoder_impl``, package ``eai-sparsify``) when it is installed; otherwise the
  JSON records that it is not installed.

The roofline bound is the larger of (FLOPs / peak FLOP/s) and (bytes / peak bandwidth) for the minimum work
of a sparse step (see ``roofline``), with the device peaks of ``PEAKS`` (vendor datasheet, dense, no sparsity).

Usage: ``python benchmarks/triton_kernels.py`` (GPU; ``--quick`` for small sizes); without CUDA it prints a
message and writes nothing. ``--cpu-interpret`` runs a tiny smoke test of the same code path on CPU in the
Triton interpreter and writes ``benchmarks/results/kernels_cpu_interpret.json`` (not performance numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from _device import write_result  # benchmarks/_device.py

RESULTS = Path(__file__).resolve().parent / "results"

# Vendor datasheet peaks (dense tensor-core FLOP/s without sparsity; fp32 = non-tensor-core; HBM bytes/s).
PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "bandwidth": 4.8e12},
    "H100 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "bandwidth": 3.35e12},
    "H100 NVL": {"bf16": 835.0e12, "tf32": 417.5e12, "fp32": 60.0e12, "bandwidth": 3.9e12},
    "H100 PCIe": {"bf16": 756.5e12, "tf32": 378.0e12, "fp32": 51.2e12, "bandwidth": 2.0e12},
    "A100 SXM 80GB": {"bf16": 312.0e12, "tf32": 156.0e12, "fp32": 19.5e12, "bandwidth": 2.039e12},
    "A100 40GB": {"bf16": 312.0e12, "tf32": 156.0e12, "fp32": 19.5e12, "bandwidth": 1.555e12},
}

CONFIGS = [  # d_in, n_features, k, batch
    (768, 24576, 32, 4096),
    (4096, 65536, 64, 4096),
]
QUICK_CONFIGS = [(768, 24576, 32, 1024), (1024, 16384, 64, 1024)]
INTERPRET_CONFIGS = [(16, 48, 4, 8), (24, 70, 7, 11)]


def peak_for(device_name: str) -> tuple[str | None, dict[str, float] | None]:
    """Match a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3') to an entry of PEAKS."""
    name = device_name.upper()
    if "H200" in name:
        key = "H200"
    elif "H100" in name and "NVL" in name:
        key = "H100 NVL"
    elif "H100" in name and "PCIE" in name:
        key = "H100 PCIe"
    elif "H100" in name:
        key = "H100 SXM"
    elif "A100" in name and "80GB" in name:
        key = "A100 SXM 80GB"
    elif "A100" in name:
        key = "A100 40GB"
    else:
        return None, None
    return key, PEAKS[key]


def roofline(d: int, F: int, k: int, B: int, bytes_per: int, peak: dict[str, float], compute: str) -> dict:
    """Lower bound on one sparse TopK SAE step.

    FLOPs: encoder 2*B*d*F (dense, unavoidable) + decoder forward and the four sparse backward products
    (grad codes, grad W_dec rows, grad x, grad W_enc columns), 2*B*k*d each.
    Bytes: read W_enc once, write the dense W_enc/W_dec gradients once, and Adam (read param, grad, two
    moments; write param, two moments) over all parameters.
    """
    n_params = 2 * d * F + F + d
    flops = 2 * B * d * F + 5 * 2 * B * k * d
    bytes_ = bytes_per * (d * F + 2 * d * F + 7 * n_params + 2 * B * d)
    t_compute = flops / peak[compute]
    t_memory = bytes_ / peak["bandwidth"]
    return {"flops": flops, "bytes": bytes_, "compute_class": compute, "t_compute_s": t_compute,
            "t_memory_s": t_memory, "bound_s": max(t_compute, t_memory)}


def _library_decoder():
    """EleutherAI sparsify's decoder, or (None, reason)."""
    try:
        from sparsify.utils import decoder_impl  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return None, f"eai-sparsify not installed or incompatible ({type(exc).__name__}: {exc})"
    return decoder_impl, "sparsify.utils.decoder_impl (eai-sparsify)"


def make_step(variant: str, params: dict, k: int, opt, K, decoder=None):
    """One training step closure for ``variant``; returns the loss tensor."""
    import torch

    W_enc, b_enc, W_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]

    def dense_codes(xc):
        pre = xc @ W_enc + b_enc
        values, indices = pre.topk(k, dim=-1, sorted=False)
        return values.relu(), indices, pre

    def step(x):
        xc = x - b_dec
        if variant == "fused":
            values, indices = K.topk_encode(xc, W_enc, b_enc, k)
            recon = K.sparse_decode(values, indices, W_dec, b_dec)
        elif variant == "dense_reference":
            values, indices, pre = dense_codes(xc)
            codes = torch.zeros_like(pre).scatter(-1, indices, values)
            recon = codes @ W_dec + b_dec
        else:
            values, indices, _ = dense_codes(xc)
            recon = decoder(indices, values, W_dec.mT) + b_dec
        loss = (recon - x).pow(2).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _init_params(d: int, F: int, dtype, device, seed: int = 0) -> dict:
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    W_dec = torch.randn(F, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {"W_enc": W_dec.T.contiguous(), "b_enc": torch.zeros(F), "W_dec": W_dec, "b_dec": torch.zeros(d)}
    return {n: p.to(device, dtype).requires_grad_(True) for n, p in params.items()}


def time_variant(variant, d, F, k, B, dtype, device, steps, warmup, K, decoder=None) -> dict:
    import torch

    params = _init_params(d, F, dtype, device)
    opt = torch.optim.Adam(params.values(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    step = make_step(variant, params, k, opt, K, decoder)
    with K.use_backend("triton" if variant == "fused" else "reference"):
        for _ in range(warmup):
            step(x)
        times = []
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = step(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "steps": steps, "final_loss": float(loss.detach())}


def first_loss(variant, d, F, k, B, dtype, device, K, decoder=None) -> float:
    """Loss of the first step from identical initial params (checks the variants agree)."""
    import torch

    params = _init_params(d, F, dtype, device)
    opt = torch.optim.SGD(params.values(), lr=0.0)
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    with K.use_backend("triton" if variant == "fused" else "reference"):
        return float(make_step(variant, params, k, opt, K, decoder)(x).detach())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--cpu-interpret", action="store_true", help="tiny CPU smoke run in the Triton interpreter")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="parameter dtype (fp32 uses TF32 matmuls)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.cpu_interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first used
    import numpy as np
    import torch

    import mechflow.kernels as K

    if args.cpu_interpret:
        device, configs, steps, warmup = torch.device("cpu"), INTERPRET_CONFIGS, 2, 1
        dtype = torch.float32
        out = args.out or RESULTS / "kernels_cpu_interpret.json"
    elif not torch.cuda.is_available():
        print("benchmarks/triton_kernels.py: no CUDA device; GPU benchmark skipped, nothing written "
              "(use --cpu-interpret for a CPU smoke run of the code path)")
        return 0
    else:
        device, steps, warmup = torch.device("cuda"), args.steps, args.warmup
        configs = QUICK_CONFIGS if args.quick else CONFIGS
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        torch.backends.cuda.matmul.allow_tf32 = True
        out = args.out or RESULTS / "kernels.json"

    decoder, decoder_note = _library_decoder()
    if decoder is not None:  # check the assumed signature decoder(indices, values, W_dec [d, F]) on a tiny case
        try:
            v, i = torch.rand(3, 2, device=device), torch.tensor([[0, 4], [1, 2], [3, 3]], device=device)
            W = torch.randn(5, 8, device=device)
            torch.testing.assert_close(decoder(i, v, W.mT), K.sparse_decode_ref(v, i, W, torch.zeros(8, device=device)))
        except Exception as exc:  # noqa: BLE001
            decoder, decoder_note = None, f"library decoder failed its check ({type(exc).__name__}: {exc})"
    import triton

    info = {
        "benchmark": "topk_sae_training_step",
        "baseline": "dense_reference",
        "smoke_cpu_interpreter": bool(args.cpu_interpret),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0], "cuda": torch.version.cuda},
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "tf32": bool(device.type == "cuda" and dtype == torch.float32),
        "library_decoder": decoder_note if decoder is not None else None,
        "library_decoder_skipped": None if decoder is not None else decoder_note,
        "peaks_table": PEAKS,
        "results": [],
    }
    peak_key, peak = (peak_for(info["device"]) if device.type == "cuda" else (None, None))
    info["peak_entry"] = peak_key
    if args.cpu_interpret:
        info["note"] = "Triton interpreter on CPU: exercises the code path; timings are not performance numbers."
    variants = ["fused", "dense_reference"] + (["library_sparse_decoder"] if decoder is not None else [])
    for d, F, k, B in configs:
        row: dict = {"d_in": d, "n_features": F, "k": k, "batch": B, "timings": {}}
        losses = {v: first_loss(v, d, F, k, B, dtype, device, K, decoder) for v in variants}
        row["first_step_loss"] = losses
        for v in variants:
            row["timings"][v] = time_variant(v, d, F, k, B, dtype, device, steps, warmup, K, decoder)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        base = row["timings"]["dense_reference"]["median_s"]
        row["speedup_vs_dense_reference"] = {v: base / t["median_s"] for v, t in row["timings"].items()}
        if peak is not None:
            compute = "bf16" if dtype == torch.bfloat16 else "tf32"
            rf = roofline(d, F, k, B, 2 if dtype == torch.bfloat16 else 4, peak, compute)
            rf["fused_fraction_of_bound"] = rf["bound_s"] / row["timings"]["fused"]["median_s"]
            row["roofline"] = rf
        info["results"].append(row)
        print(json.dumps({key: row[key] for key in ("d_in", "n_features", "k", "batch", "speedup_vs_dense_reference")}))
    write_result(out, info)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
