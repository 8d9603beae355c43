"""Time the explorer adds for the top corpus contexts of an SAE trained on a text corpus (mechflow.explorer.corpus).

Synthetic held-out shards in the layout of :mod:`mechflow.corpus.activations` (HDF5 chunks of 256 rows, windows of
``--context`` tokens less the sink), random activations of width ``--d``, a random-init top-k SAE of ``--features``
features; ``corpus_contexts`` reads ``--rows`` of them (explorer.corpus_rows) and keeps the top ``--contexts`` windows
per feature. The default is the default study's SAE: SmolLM2-135M's d_model 576, 2,304 features, k 32::

    .venv/bin/python benchmarks/explorer_corpus.py --rows 50000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr


def shards(out: Path, rows: int, d: int, context: int, n_shards: int) -> tuple[list[Path], Path]:
    rng = np.random.default_rng(0)
    per = -(-rows // n_shards)
    n_windows = n_shards * -(-per // (context - 1))
    tokens = rng.integers(0, 49_152, size=(n_windows, context)).astype(np.int32)
    windows = xr.Dataset({"tokens": (("window", "position"), tokens), "length": ("window", np.full(n_windows, context, np.int32))},
                         coords={"split": ("window", np.full(n_windows, "held_out")),
                                 "document": ("window", np.arange(n_windows, dtype=np.int32) // 8),
                                 "document_id": ("doc", np.array([f"doc{i}" for i in range(-(-n_windows // 8))]))})
    windows.to_netcdf(out / "windows.nc")
    paths, w0 = [], 0
    for s in range(n_shards):
        nw = n_windows // n_shards
        window = np.repeat(np.arange(w0, w0 + nw), context - 1)
        position = np.tile(np.arange(1, context), nw)
        acts = rng.normal(size=(window.size, d)).astype(np.float32)
        ds = xr.Dataset({"activations": (("token", "unit"), acts)},
                        coords={"window": ("token", window), "position": ("token", position), "unit": np.arange(d)},
                        attrs={"split": "held_out", "dataset": "synthetic"})
        path = out / f"held_out.shard{s}.nc"
        ds.to_netcdf(path, encoding={"activations": {"chunksizes": (256, d)}})
        paths.append(path)
        w0 += nw
    return paths, out / "windows.nc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="held-out tokens read (explorer.corpus_rows)")
    ap.add_argument("--features", type=int, default=2304)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--k", type=int, default=32, help="the SAE's top-k")
    ap.add_argument("--context", type=int, default=128, help="tokens per window")
    ap.add_argument("--shards", type=int, default=4, help="held-out shards the rows are spread over")
    ap.add_argument("--contexts", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args()
    import torch

    from mechflow.explorer.corpus import corpus_contexts
    from mechflow.sae.archs import build_sae

    torch.set_num_threads(args.threads)
    sae = build_sae("topk", args.d, args.features, args.k)
    sae.init_weights(torch.Generator().manual_seed(0))

    @torch.no_grad()
    def encode(x: np.ndarray) -> np.ndarray:
        return sae.encode(torch.as_tensor(x)).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        paths, windows = shards(Path(tmp), args.rows, args.d, args.context, args.shards)
        t0, c0 = time.perf_counter(), time.process_time()
        got = corpus_contexts(paths, windows, encode, args.features, lambda ids: [str(i) for i in ids], k=args.contexts,
                              max_rows=args.rows)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    shown = sum(len(c) for c in got.contexts)
    result = {"rows": got.info["rows"], "features": args.features, "d": args.d, "k": args.k, "threads": args.threads,
              "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "contexts_shown": shown,
              "bytes_json": len(json.dumps(got.contexts, separators=(",", ":"))),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
