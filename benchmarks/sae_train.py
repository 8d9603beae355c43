"""TopK SAE training throughput: mechflow (sparse kernels) vs a dense PyTorch TopK SAE baseline.

Baseline "dense-topk" is written as in Gao et al. 2024: top-k of the pre-activations, dense
scatter of the k values into a [batch, n_features] matrix, then a dense decoder matmul. Both do
the same full training step (forward, FVU loss, backward, decoder-parallel gradient removal,
Adam, row renormalisation) on identical data, shapes and initial weights. Reports samples/s and
the ratio ours / baseline; writes benchmarks/results/sae_train.json (CPU) and, when CUDA is
present, a GPU section as well.

    python benchmarks/sae_train.py [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from _device import write_result  # benchmarks/_device.py

from mechflow.sae.archs import TopKSAE, batch_fvu


def dense_topk_step_fn(params, k):
    """The baseline's loss: dense [batch, n_features] activations and a dense decoder matmul."""
    W_enc, b_enc, W_dec, b_dec = params

    def loss(x):
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return batch_fvu(x, acts @ W_dec + b_dec)

    return loss


def make_step(params, loss_fn, lr=1e-3):
    opt = torch.optim.Adam(params, lr=lr)
    W_dec = params[2]

    def step(x):
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g = W_dec.grad
            g -= (g * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        return loss

    return step


def time_steps(step, batches, device, warmup=3, repeats=3):
    for x in batches[:warmup]:
        step(x)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in batches:
            step(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(device: torch.device, d: int, n_features: int, k: int, batch: int, n_batches: int) -> dict:
    torch.manual_seed(0)
    data = [torch.randn(batch, d, device=device) for _ in range(n_batches)]
    ours = TopKSAE(d, n_features, k, auxk_coef=0.0)
    ours.init_weights(torch.Generator().manual_seed(0), torch.zeros(d))
    ours.to(device)
    base_params = [p.detach().clone().requires_grad_(True) for p in (ours.W_enc, ours.b_enc, ours.W_dec, ours.b_dec)]
    dead = torch.zeros(n_features, dtype=torch.bool, device=device)
    ours_step = make_step(list(ours.parameters()), lambda x: ours.training_loss(x, 0, 1, dead).loss)
    base_step = make_step(base_params, dense_topk_step_fn(base_params, k))
    # same loss on the same data at the same weights
    x0 = data[0]
    same = float(ours.training_loss(x0, 0, 1, dead).loss.detach())
    ref = float(dense_topk_step_fn(base_params, k)(x0).detach())
    t_ours = time_steps(ours_step, data, device)
    t_base = time_steps(base_step, data, device)
    samples = batch * n_batches
    return {
        "sizes": {"d_in": d, "n_features": n_features, "k": k, "batch": batch, "batches_timed": n_batches},
        "initial_loss": {"ours": same, "baseline": ref},
        "seconds": {"ours": t_ours, "baseline": t_base},
        "samples_per_s": {"ours": samples / t_ours, "baseline": samples / t_base},
        "ratio_ours_over_baseline": t_base / t_ours,
    }


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "numpy": np.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        from mechflow.kernels import backend_for

        info["kernel_backend"] = backend_for(torch.empty(1, device=device))
    except ImportError:
        info["kernel_backend"] = "reference"
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sae_train.json"))
    args = ap.parse_args(argv)
    if args.quick:
        cpu_sizes = [dict(d=64, n_features=2048, k=16, batch=256, n_batches=10)]
        gpu_sizes = [dict(d=576, n_features=16384, k=32, batch=1024, n_batches=10)]
    else:
        cpu_sizes = [dict(d=576, n_features=4608, k=32, batch=512, n_batches=10),
                     dict(d=576, n_features=9216, k=32, batch=512, n_batches=5)]
        gpu_sizes = [dict(d=576, n_features=16384, k=32, batch=4096, n_batches=20),
                     dict(d=2048, n_features=65536, k=64, batch=4096, n_batches=10)]
    result = {"benchmark": "sae_train",
              "baseline": "dense-topk (dense scatter of top-k into [batch, n_features] + dense decoder matmul, Gao et al. 2024)",
              "ours": "mechflow TopKSAE (mechflow.kernels topk_encode + sparse_decode)", "quick": args.quick, "runs": []}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        for sizes in (gpu_sizes if device.type == "cuda" else cpu_sizes):
            r = bench(device, **sizes)
            r["device_info"] = device_info(device)
            result["runs"].append(r)
            print(f"{device.type} {r['sizes']}: ours {r['samples_per_s']['ours']:,.0f}/s, baseline "
                  f"{r['samples_per_s']['baseline']:,.0f}/s, ratio {r['ratio_ours_over_baseline']:.2f}", flush=True)
    if not torch.cuda.is_available():
        result["gpu"] = "skipped: CUDA not available"
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
