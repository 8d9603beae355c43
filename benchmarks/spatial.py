"""Benchmark: vectorised global/local Moran's I vs loops of esda.Moran / esda.Moran_Local.

Ours runs every column at once with ``permutations`` replicates. esda is timed on a sample of
columns (``--esda-cols``) and scaled linearly to all F columns; the JSON says so per entry.
Usage: python benchmarks/spatial.py [--quick] [--out benchmarks/results/spatial.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

import esda  # noqa: E402

from mechflow.spatial import global_moran, knn_weights, local_moran  # noqa: E402


def device_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "esda": esda.__version__,
        "numba_installed": importlib.util.find_spec("numba") is not None,
        "python": platform.python_version(),
    }


def make_data(n: int, F: int, seed: int = 0):
    """GB-like points and F columns of correlated random fields plus noise (float32)."""
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-5.5, 1.5, n), rng.uniform(50.0, 57.5, n)
    w = knn_weights(lon, lat, k=8, crs="EPSG:27700")
    xy = (w.xy - w.xy.mean(0)) / 1e5
    freq = rng.standard_normal((2, F)) * rng.uniform(0.2, 3.0, F)
    Y = np.cos(xy @ freq + rng.uniform(0, 2 * np.pi, F)) + rng.uniform(0.2, 2.0, F) * rng.standard_normal((n, F))
    return w, Y.astype(np.float32)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_case(n, F, permutations, esda_cols, esda_local_cols, device) -> dict:
    w, Y = make_data(n, F)
    Y64 = Y.astype(np.float64)
    t_g, _ = timed(lambda: global_moran(Y, w, permutations=permutations, seed=0, device=device))
    t_l, _ = timed(lambda: local_moran(Y, w, permutations=permutations, seed=0, device=device))
    cols = np.linspace(0, F - 1, esda_cols).astype(int)
    np.random.seed(0)
    t_e, _ = timed(lambda: [esda.Moran(Y64[:, j], w, permutations=permutations) for j in cols])
    lcols = np.linspace(0, F - 1, esda_local_cols).astype(int)
    t_el, _ = timed(lambda: [esda.Moran_Local(Y64[:, j], w, permutations=permutations, seed=1) for j in lcols])
    esda_global = t_e / len(cols) * F
    esda_local = t_el / len(lcols) * F
    return {
        "n": n, "F": F, "permutations": permutations, "device": str(device or "auto"),
        "ours_global_s": t_g, "ours_local_s": t_l,
        "esda_moran_s_per_col": t_e / len(cols), "esda_moran_cols_timed": len(cols),
        "esda_moran_s_scaled": esda_global,
        "esda_moran_local_s_per_col": t_el / len(lcols), "esda_moran_local_cols_timed": len(lcols),
        "esda_moran_local_s_scaled": esda_local,
        "speedup_global": esda_global / t_g, "speedup_local": esda_local / t_l,
        "note": "esda timed on a sample of columns and scaled linearly to F",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (n=600, F=64, 199 permutations)")
    ap.add_argument("--out", default="benchmarks/results/spatial.json")
    ap.add_argument("--esda-cols", type=int, default=4)
    ap.add_argument("--esda-local-cols", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        cases, perms = [(600, 64)], 199
    else:
        cases, perms = [(3500, 384), (3500, 4096), (11800, 384), (11800, 4096)], 999
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for dev in devices:
        for n, F in cases:
            r = run_case(n, F, perms, args.esda_cols, args.esda_local_cols, dev)
            print(json.dumps(r), flush=True)
            results.append(r)
    payload = {
        "benchmark": "spatial",
        "baseline": "loop of esda.Moran / esda.Moran_Local (one column per call), same KNN W (k=8, row-standardised)",
        "goal": {"global_speedup_at_F4096": 100, "local_speedup_at_F4096": 20},
        "device_info": device_info(),
        "quick": args.quick,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
