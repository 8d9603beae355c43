"""Ridge location probes: mechflow's all-layers solve vs a per-layer scikit-learn loop.

Both fit the same thing: per layer and fold, standardise the training fold, choose one ridge penalty per
target by exact leave-one-out error from ``alphas``, predict the held-out fold (``tests/test_probes.py``
checks the predictions agree to 1e-10). Baseline: ``StandardScaler + RidgeCV(alphas, alpha_per_target=True)``
fitted in a Python loop over layers and folds, as a scikit-learn user writes it, on one BLAS thread. mechflow:
``mechflow.probes.cross_val_predict_layers`` on the ``[layer, n, d]`` stack (one eigendecomposition per layer
and fold, reused over every alpha and target, all layers in the same batched operations) on 1 and on
``--threads`` threads (layers split between threads, one BLAS thread each: what the probes rule does with its
``threads:``). Same data, same folds, same process; best of ``--reps``.

    .venv/bin/python benchmarks/probes.py            # d=576, 15 layers; n = 1,000 and 4,000 prompts per region
    .venv/bin/python benchmarks/probes.py --quick    # small sizes, seconds
Writes benchmarks/results/probes.json (probes_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _device import device_info, write_result  # benchmarks/_device.py
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mechflow.probes import DEFAULT_ALPHAS, cross_val_predict_layers, random_folds

ROOT = Path(__file__).resolve().parents[1]


def sklearn_loop(X: np.ndarray, Y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions ``[L, n, t]``: one scikit-learn fit per layer and fold."""
    pred = np.empty((X.shape[0], *Y.shape))
    for li in range(X.shape[0]):
        for f in np.unique(folds):
            te, tr = folds == f, folds != f
            my, sy = Y[tr].mean(0), Y[tr].std(0)
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=DEFAULT_ALPHAS, alpha_per_target=True))
            model.fit(X[li, tr], (Y[tr] - my) / sy)
            pred[li, te] = model.predict(X[li, te]) * sy + my
    return pred


def data(n: int, layers: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Activations ``[layers, n, d]`` that encode 4 targets ``[n, 4]`` more strongly in later layers, plus noise."""
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n, 4))
    M = rng.standard_normal((4, d))
    w = np.linspace(0.05, 1.0, layers)[:, None, None]
    X = w * (Y @ M)[None] + rng.standard_normal((layers, n, d))
    return X, Y


def best_of(fn, args: tuple, reps: int) -> tuple[float, np.ndarray]:
    """Best wall time of ``fn(*args)`` over ``reps`` calls, and its result."""
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="threads of mechflow's second timing")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    sizes = [(300, 6, 64)] if args.quick else [(1000, 15, 576), (3000, 15, 576)]
    rows = []
    for n, layers, d in sizes:
        X, Y = data(n, layers, d)
        folds = random_folds(n, 5, seed=0)
        t_one, (ours, _) = best_of(cross_val_predict_layers, (X, Y, folds, DEFAULT_ALPHAS, 1), args.reps)
        t_par, (par, _) = best_of(cross_val_predict_layers, (X, Y, folds, DEFAULT_ALPHAS, args.threads), args.reps)
        with threadpool_limits(limits=1):
            t_base, base = best_of(sklearn_loop, (X, Y, folds), args.reps)
        row = {"n": n, "layers": layers, "d": d, "folds": 5, "targets": 4, "alphas": len(DEFAULT_ALPHAS),
               "mechflow_1_thread_s": round(t_one, 3), f"mechflow_{args.threads}_threads_s": round(t_par, 3),
               "sklearn_loop_1_thread_s": round(t_base, 3), "speedup_1_thread": round(t_base / t_one, 2),
               f"speedup_{args.threads}_threads": round(t_base / t_par, 2),
               "max_abs_diff_vs_sklearn": float(np.abs(ours - base).max()),
               "threads_identical": bool(np.array_equal(ours, par))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = ROOT / "benchmarks" / "results" / ("probes_quick.json" if args.quick else "probes.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "probes", "baseline": "StandardScaler + RidgeCV(alpha_per_target) per layer and fold",
              "threads": args.threads, "load_average": list(os.getloadavg()), "reps": args.reps, "date": time.strftime("%Y-%m-%d"),
              "device_info": device_info(), "rows": rows}
    write_result(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
