"""Benchmark: vectorised global Moran's I / Geary's C and local Moran's I vs loops of esda.

Ours runs every column at once with ``permutations`` replicates, in the same process and on the
same KNN weights as esda. esda is timed on a sample of columns (``--esda-cols``, ``--esda-local-cols``)
and scaled linearly to all F columns; the JSON says so per entry. esda runs with its default
arguments (``Moran_Local``: ``n_jobs=1``), after a warm-up call that compiles its numba kernels. Global timings (the default
``"fused"`` numba engine on CPU) exclude numba's JIT: the ``jit`` entry gives the one-off cost of the
first call in a fresh process, with an empty cache (compile) and with the on-disk cache (load), and
each case also gives its speedups with that one-off cost added.
Usage: python benchmarks/spatial.py [--quick] [--threads N] [--out benchmarks/results/spatial.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

import esda  # noqa: E402
from _device import write_result  # noqa: E402 (benchmarks/_device.py)

from mechflow.spatial import global_autocorrelation, global_moran, knn_weights, local_moran  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# a fresh interpreter's first fused-engine call on a tiny input: numba import + kernel compile or cache load
JIT_PROBE = """
import time, warnings
warnings.filterwarnings("ignore")
import numpy as np
from libpysal.weights import lat2W
from mechflow.spatial import global_autocorrelation
w = lat2W(8, 8)
y = np.random.default_rng(0).standard_normal((64, 3))
t = time.perf_counter()
global_autocorrelation(y, w, permutations=9, engine="fused")
first = time.perf_counter() - t
t = time.perf_counter()
global_autocorrelation(y, w, permutations=9, engine="fused")
print(first, time.perf_counter() - t)
"""


def device_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads_used": threads,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "esda": esda.__version__,
        "numba_installed": importlib.util.find_spec("numba") is not None,
        "python": platform.python_version(),
    }
    if info["numba_installed"]:
        import numba

        info["numba"] = numba.__version__
        info["numba_threading_layer"] = numba.threading_layer()
    try:
        info["load_average_at_end"] = os.getloadavg()
    except OSError:
        pass
    return info


def jit_cost() -> dict:
    """First fused-engine call in fresh interpreters: empty numba cache (compile) then warm cache (load)."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(REPO)}
        for key in ("cold_compile", "cached_load"):
            res = subprocess.run([sys.executable, "-c", JIT_PROBE], env=env, capture_output=True, text=True, check=True)
            first, again = map(float, res.stdout.split())
            out[f"{key}_first_call_s"] = first
        out["warm_call_s"] = again
    out["note"] = ("first global_autocorrelation(engine='fused') call in a fresh interpreter (numba import + "
                   "kernel compile with an empty cache, or loaded from the on-disk cache), on a tiny input; "
                   "warm_call_s is the same call again")
    return out


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


def run_case(n, F, permutations, esda_cols, esda_local_cols, device, threads, numpy_max_f, jit) -> dict:
    w, Y = make_data(n, F)
    Y64 = Y.astype(np.float64)
    # a tiny call first so that the timings below exclude numba's one-off JIT (reported in "jit")
    global_autocorrelation(Y[:, :2], w, permutations=1, device=device, num_threads=threads)
    t_g, _ = timed(lambda: global_autocorrelation(Y, w, permutations=permutations, seed=0, device=device,
                                                  num_threads=threads))
    t_m, _ = timed(lambda: global_moran(Y, w, permutations=permutations, seed=0, device=device, num_threads=threads))
    # local_moran at its default 1 thread, as lisa_dataset runs it (torch threads slowed it down on shared cores)
    t_l, _ = timed(lambda: local_moran(Y, w, permutations=permutations, seed=0, device=device))
    t_np = None
    if str(device) == "cpu" and F <= numpy_max_f:
        t_np, _ = timed(lambda: global_autocorrelation(Y, w, permutations=permutations, seed=0, engine="numpy"))
    cols = np.linspace(0, F - 1, esda_cols).astype(int)
    np.random.seed(0)
    t_e, _ = timed(lambda: [esda.Moran(Y64[:, j], w, permutations=permutations) for j in cols])
    t_eg, _ = timed(lambda: [esda.Geary(Y64[:, j], w, permutations=permutations) for j in cols])
    lcols = np.linspace(0, F - 1, esda_local_cols).astype(int)
    # with numba installed esda.Moran_Local runs numba kernels, compiled (uncached) on its first call: warm up
    esda.Moran_Local(Y64[:, 0], w, permutations=9, seed=1)
    t_el, _ = timed(lambda: [esda.Moran_Local(Y64[:, j], w, permutations=permutations, seed=1) for j in lcols])
    esda_moran = t_e / len(cols) * F
    esda_geary = t_eg / len(cols) * F
    esda_local = t_el / len(lcols) * F
    one_off = {"cold": jit.get("cold_compile_first_call_s", 0.0), "cached": jit.get("cached_load_first_call_s", 0.0)}
    r = {
        "n": n, "F": F, "permutations": permutations, "device": str(device or "auto"), "threads": threads,
        "local_threads": 1,
        "ours_global_s": t_g, "ours_global_what": "global_autocorrelation: Moran's I + Geary's C, default engine",
        "ours_moran_s": t_m, "ours_local_s": t_l,
        "numpy_engine_global_s": t_np,
        "esda_moran_s_per_col": t_e / len(cols), "esda_geary_s_per_col": t_eg / len(cols),
        "esda_global_cols_timed": len(cols),
        "esda_moran_s_scaled": esda_moran, "esda_geary_s_scaled": esda_geary,
        "esda_moran_local_s_per_col": t_el / len(lcols), "esda_moran_local_cols_timed": len(lcols),
        "esda_moran_local_s_scaled": esda_local,
        "speedup_global": (esda_moran + esda_geary) / t_g,
        "speedup_global_incl_cold_compile": (esda_moran + esda_geary) / (t_g + one_off["cold"]),
        "speedup_global_incl_cached_load": (esda_moran + esda_geary) / (t_g + one_off["cached"]),
        "speedup_moran": esda_moran / t_m,
        "speedup_moran_incl_cold_compile": esda_moran / (t_m + one_off["cold"]),
        "speedup_local": esda_local / t_l,
        "speedup_fused_vs_numpy_engine": (t_np / t_g) if t_np else None,
        "note": "esda timed on a sample of columns and scaled linearly to F; speedup_global: ours (Moran + Geary "
                "in one call) vs esda.Moran + esda.Geary per column; speedup_moran: global_moran vs esda.Moran",
    }
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (n=600, F=64, 199 permutations)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/spatial.json (spatial_quick.json with --quick)")
    ap.add_argument("--esda-cols", type=int, default=4)
    ap.add_argument("--esda-local-cols", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="num_threads of our permutation tests")
    ap.add_argument("--numpy-max-f", type=int, default=384,
                    help="also time the numpy reference engine on cases with at most this many columns")
    ap.add_argument("--no-jit-probe", action="store_true", help="skip the fresh-interpreter JIT timing")
    args = ap.parse_args()
    out = Path(args.out or ("benchmarks/results/spatial_quick.json" if args.quick else "benchmarks/results/spatial.json"))
    if args.quick:
        cases, perms = [(600, 64)], 199
    else:
        cases, perms = [(1500, 384), (3500, 4096), (11800, 384), (11800, 4096)], 999
    jit = {} if args.no_jit_probe else jit_cost()
    print(json.dumps({"jit": jit}), flush=True)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for dev in devices:
        for n, F in cases:
            r = run_case(n, F, perms, args.esda_cols, args.esda_local_cols, dev, args.threads, args.numpy_max_f, jit)
            print(json.dumps(r), flush=True)
            results.append(r)
    payload = {
        "benchmark": "spatial",
        "baseline": "loop of esda.Moran, esda.Geary / esda.Moran_Local (one column per call), same KNN W "
                    "(k=8, row-standardised), same process",
        "goal": {"global_speedup": 30, "local_speedup": 20,
                 "at": "n=1,500/F=384 and n=11,800/F=4,096, 999 permutations, CPU"},
        "device_info": device_info(args.threads),
        "jit": jit,
        "quick": args.quick,
        "results": results,
    }
    write_result(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
