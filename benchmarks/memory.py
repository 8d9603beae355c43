"""Bounded memory: data 4x larger than a memory bound through extraction + gather, SAE training, semi-NMF and global Moran.

Each stage runs in its own process under ``/usr/bin/time -v``; its peak resident memory (maximum RSS,
and the kernel's VmHWM read by the stage itself at exit) is compared with the bound. The data are
synthetic but laid out as the workflow writes them:

1. ``extract_shards``: activations ``[prompt, layer=1, unit]`` float32 of ``4 x bound`` bytes written as
   ``shards`` shard files by :class:`mechflow.extract.ActivationWriter` (region writes of one window of
   prompts at a time, as extraction writes them);
2. ``gather``: :func:`mechflow.extract.gather_shards` into one activations file (the rule
   ``gather_activations``; it copies windows of at most 256 MiB of rows, whatever the shard size);
3. ``sae_train``: :func:`mechflow.sae.train` (TopK) on the lazily opened layer of that file (rows
   streamed through two shuffle windows);
4. ``sae_encode``: the trained SAE (``UNITS`` features) encodes every row of that file into an SAE
   ``features.nc`` [prompt, feature] as large as the activations, streamed batch by batch
   (:func:`mechflow.sae.pipeline.write_features`, the ``sae`` rule's writer);
5. ``snmf``: :func:`mechflow.snmf.fit` (16 factors, SVD init, 5 iterations) of that layer, read from disk in
   sample blocks at every pass as the ``snmf`` rule does with ``snmf.out_of_core: true`` (and when a layer
   exceeds its ``mem_mb``, as this one does); it holds one block and ``G`` [samples, factors] (``3 x 8 x n x K``
   bytes, 384 MB here: G grows with the samples, 32x slower than the data at 1,024 units);
6. ``write_features``: a feature set ``features [prompt, feature]`` float32 of ``4 x bound`` bytes (an SAE
   features file's layout: contiguous, with the prompt coordinates), written by row blocks;
7. ``spatial``: the spatial rule's path, :class:`mechflow.io.FeatureColumns` +
   :func:`mechflow.spatial.analysis.spatial_analysis` with ``memory_mb = bound`` (global Moran's I and
   Geary's C with permutations, the residualised and shuffled controls (200 shuffles) unless ``--quick``, LISA of
   the top features), and
   the moran/lisa files written;
8. ``corpus_shards``: token activations of a text corpus as the ``corpus_activations`` rule writes them,
   ``[token, unit]`` float32 of ``4 x bound`` bytes in ``shards`` shard files (the last one held out);
9. ``sae_corpus``: :func:`mechflow.sae.pipeline.train_from_shards` (the ``sae`` rule at ``sae.level: corpus``):
   a TopK SAE trained from the training shards through the shuffle stream (``ShardedSource``: at most two
   shuffle windows and two open files), evaluated on every held-out token, the SAE directory written.

    .venv/bin/python benchmarks/memory.py                 # bound 1024 MB: 4.1 GB per data file (~10 min, 2 cores)
    .venv/bin/python benchmarks/memory.py --quick         # a smoke test: 256 MB of data, the same bound
    .venv/bin/python benchmarks/memory.py --bound-mb 2048 --tmp /scratch
    .venv/bin/python benchmarks/memory.py --stages corpus_shards,sae_corpus   # some stages (in order; each needs
                                                                              # the files of the stages before it)

The bound must exceed what a stage's interpreter holds before it reads any data (torch, xarray,
libpysal imported: about 350 MB for extraction and SAE, 580 MB for the spatial step). ``--quick``
cannot meet 4 x a bound above that in seconds, so it runs the same stages on 256 MB of data (less
than its bound): it checks the machinery, not the claim. The spatial stage runs 1 permutation by
default: the memory of the permutation test does not grow with their number (replicates go in
batches of at most 2^21 / features, each [batch, block columns]), only its time does.

MB = 10^6 bytes (Snakemake's ``mem_mb``). Writes benchmarks/results/memory.json (memory_quick.json).
Needs about 3 x 4 x bound of free disk under ``--tmp`` (the files are deleted as soon as they are used).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 10**6
UNITS = 1024  # activation width (d): one prompt row of one layer is 4 kB
N_SPATIAL = 8000  # places of the feature set (two regions)
CRS = {"GB": "EPSG:27700", "IT": "EPSG:25832"}


def vm_hwm_bytes() -> int:
    """This process's peak resident memory (``VmHWM`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _places(n: int, seed: int):
    """Longitude, latitude, region of ``n`` places in GB and IT, admin-1 code and token count per place."""
    rng = np.random.default_rng(seed)
    half = n // 2
    lon = np.r_[rng.uniform(-4.0, 0.5, half), rng.uniform(8.0, 15.0, n - half)]
    lat = np.r_[rng.uniform(51.0, 55.0, half), rng.uniform(38.0, 46.0, n - half)]
    region = np.array(["GB"] * half + ["IT"] * (n - half))
    admin1 = np.where(region == "GB", np.where(lon < -1.75, "WLS", "ENG"), np.where(lat < 42.0, "SUD", "NOR"))
    return lon, lat, region, admin1, rng.integers(3, 9, n)


def _prompts(n: int):
    import xarray as xr

    lon, lat, region, _, n_tokens = _places(n, 0)
    return xr.Dataset(coords={"prompt": np.arange(n), "latitude": ("prompt", lat), "longitude": ("prompt", lon),
                              "region": ("prompt", region), "n_tokens": ("prompt", n_tokens)})


# ---- stages (each runs in its own process) ------------------------------------------------------------


def stage_extract_shards(wd: Path, cfg: dict) -> dict:
    """Shard files of synthetic pooled activations, one window of prompts written at a time."""
    from mechflow.extract import ActivationWriter, shard_slice

    n, shards, window = cfg["n_prompts"], cfg["shards"], cfg["window"]
    prompts = _prompts(n)
    rng = np.random.default_rng(1)
    # a pool of sparse combinations of 256 directions (an SAE has something to find); windows draw rows from it
    directions = rng.standard_normal((256, UNITS)).astype(np.float32) / 4
    codes = np.maximum(rng.standard_normal((8192, 256), dtype=np.float32) - 1.5, 0)
    pool = codes @ directions + 0.05 * rng.standard_normal((8192, UNITS), dtype=np.float32)
    for s in range(shards):
        sl = shard_slice(n, s, shards)
        with ActivationWriter(wd / f"shard{s}.nc", prompts.isel(prompt=sl), [5], {"hook": "resid", "pooling": "mean"}) as w:
            for a in range(0, sl.stop - sl.start, window):
                b = min(a + window, sl.stop - sl.start)
                rows = pool[rng.integers(0, len(pool), b - a)] * rng.uniform(0.5, 1.5, (b - a, 1)).astype(np.float32)
                w.write_rows(a, rows[:, None, :])
    return {"files_bytes": sum((wd / f"shard{s}.nc").stat().st_size for s in range(shards))}


def stage_gather(wd: Path, cfg: dict) -> dict:
    from mechflow.extract import gather_shards

    shards = [wd / f"shard{s}.nc" for s in range(cfg["shards"])]
    out = gather_shards(shards, wd / "resid.nc", _prompts(cfg["n_prompts"]), {"shards": len(shards)})
    for s in shards:
        s.unlink()
    return {"file_bytes": out.stat().st_size}


def stage_sae_train(wd: Path, cfg: dict) -> dict:
    import torch

    from mechflow.io import open_dataarray
    from mechflow.sae import train
    from mechflow.sae.pipeline import select_layer

    da = open_dataarray(wd / "resid.nc")
    try:
        layer = select_layer(da, 5)
        model = train(layer, arch="topk", n_features=cfg["sae_features"], k=32, steps=cfg["sae_steps"],
                      batch_size=cfg["sae_batch"], shuffle_window=cfg["sae_window"], log_every=max(1, cfg["sae_steps"] // 10))
        fvu = float(model.history["fvu"].values[-1])
        torch.save(model.state_dict(), wd / "sae.pt")
    finally:
        da.close()
    return {"final_fvu": fvu, "rows": int(layer.shape[0]), "d": int(layer.shape[1])}


def stage_sae_encode(wd: Path, cfg: dict) -> dict:
    """The trained SAE encodes every row of the activations file into ``features.nc`` [prompt, feature]
    (``sae_features`` = ``UNITS``: as large as the activations, 4 x the bound), streamed batch by batch by
    :func:`mechflow.sae.pipeline.write_features` as the ``sae`` rule writes it."""
    import torch

    from mechflow.io import open_dataarray
    from mechflow.sae import build_sae
    from mechflow.sae.data import DataArraySource
    from mechflow.sae.pipeline import features_coords, select_layer, write_features

    model = build_sae("topk", UNITS, cfg["sae_features"], k=32)
    model.load_state_dict(torch.load(wd / "sae.pt"))
    da = open_dataarray(wd / "resid.nc")
    try:
        layer = select_layer(da, 5)
        path = write_features(model, DataArraySource(layer), features_coords(cfg["sae_features"], layer), {"hook": "resid"},
                              wd / "sae_features.nc")
    finally:
        da.close()
    size = path.stat().st_size
    path.unlink()
    return {"file_bytes": size, "n": int(layer.shape[0]), "n_features": cfg["sae_features"]}


def stage_snmf(wd: Path, cfg: dict) -> dict:
    """Semi-NMF of the activations file's layer (``snmf_factors`` factors, SVD init), as the ``snmf`` rule
    runs it when the layer does not fit its ``mem_mb``: the lazily opened layer is read from disk in
    sample blocks at every pass (:mod:`mechflow.snmf.blocks`); F, G and the loss are written."""
    from mechflow import snmf
    from mechflow.io import FeatureColumns, write_dataset
    from mechflow.snmf.blocks import block_samples, plan_this_process

    with FeatureColumns(wd / "resid.nc", "units", 5) as features:
        layer = features.lazy()
        n, d = layer.shape
        # as the snmf rule decides, with the study key snmf.out_of_core (the layer would not fit the bound anyway)
        in_memory = plan_this_process(d, n, cfg["snmf_factors"], cfg["bound_mb"], out_of_core=cfg["snmf_out_of_core"])
        t = time.perf_counter()
        result = snmf.fit(layer, n_factors=cfg["snmf_factors"], init="svd", max_iter=cfg["snmf_iter"], tol=0, in_memory=in_memory)
        seconds = time.perf_counter() - t
    write_dataset(result.to_dataset(attrs={"hook": "resid"}), wd / "snmf.nc")
    (wd / "resid.nc").unlink()
    (wd / "snmf.nc").unlink()
    return {"out_of_core": cfg["snmf_out_of_core"], "in_memory": in_memory, "samples": n, "units": d, "n_factors": cfg["snmf_factors"],
            "block_samples": block_samples(d), "iterations": result.n_iter, "loss_first": float(result.loss[0]),
            "loss_last": float(result.loss[-1]), "fit_s": round(seconds, 1)}


def stage_write_features(wd: Path, cfg: dict) -> dict:
    """``features`` [prompt, feature] float32 with an SAE features file's coordinates, written by row blocks
    (:class:`mechflow.io.RowWriter`); the spatial stage's input."""
    import xarray as xr

    from mechflow.io import RowWriter

    n, F = N_SPATIAL, cfg["n_features"]
    lon, lat, region, admin1, n_tokens = _places(n, 2)
    skeleton = xr.Dataset(coords={
        "prompt": np.arange(n), "feature": np.arange(F), "latitude": ("prompt", lat), "longitude": ("prompt", lon),
        "region": ("prompt", region), "admin1_code": ("prompt", admin1), "n_tokens": ("prompt", n_tokens),
        "split": ("prompt", np.full(n, "train"))}, attrs={"model": "synthetic", "hook": "resid"})
    path = wd / "features.nc"
    rng = np.random.default_rng(3)
    freq = rng.uniform(0.5, 3.0, 256).astype(np.float32)
    pool = np.maximum(rng.standard_normal((64, F), dtype=np.float32), 0)  # noise rows, drawn per place
    with RowWriter(path, skeleton, ("prompt", "feature"), {"features": skeleton.attrs}, skeleton.attrs) as w:
        rows = max(1, (64 * MB) // (4 * F))
        for a in range(0, n, rows):
            b = min(n, a + rows)
            block = pool[rng.integers(0, len(pool), b - a)]
            block[:, :256] += np.sin(lat[a:b, None].astype(np.float32) * freq)  # spatially structured features
            w.write(a, features=block)
    return {"file_bytes": path.stat().st_size, "n": n, "n_features": F}


def stage_corpus_shards(wd: Path, cfg: dict) -> dict:
    """Corpus token-activation shards [token, unit] (the corpus_activations rule's file contract), written in blocks."""
    import xarray as xr

    from mechflow.extract import shard_slice
    from mechflow.io import RowWriter

    n, shards, window = cfg["n_prompts"], cfg["shards"], cfg["window"]
    rng = np.random.default_rng(2)
    directions = rng.standard_normal((256, UNITS)).astype(np.float32) / 4
    codes = np.maximum(rng.standard_normal((8192, 256), dtype=np.float32) - 1.5, 0)
    pool = codes @ directions + 0.05 * rng.standard_normal((8192, UNITS), dtype=np.float32)
    attrs = {"hook": "resid", "layer": 5, "context_size": 128, "prepend_bos": 0, "sink_position": 0, "model": "synthetic"}
    for s in range(shards):
        sl = shard_slice(n, s, shards)
        m = sl.stop - sl.start
        coords = xr.Dataset(coords={"window": ("token", np.arange(sl.start, sl.stop) // 127),
                                    "position": ("token", np.arange(sl.start, sl.stop) % 127 + 1),
                                    "unit": np.arange(UNITS)})
        split = "held_out" if s == shards - 1 else "train"
        with RowWriter(wd / f"corpus{s}.nc", coords, ("token", "unit"), {"activations": {}},
                       {**attrs, "split": split, "shard": s, "n_shards": shards}) as w:
            for a in range(0, m, window):
                b = min(a + window, m)
                w.write(a, activations=pool[rng.integers(0, len(pool), b - a)])
    return {"files_bytes": sum((wd / f"corpus{s}.nc").stat().st_size for s in range(shards)), "tokens": n}


def stage_sae_corpus(wd: Path, cfg: dict) -> dict:
    """An SAE trained from the corpus shards (all but the last) and evaluated on the last, held out."""
    import xarray as xr

    from mechflow.sae.pipeline import train_from_shards

    paths = [wd / f"corpus{s}.nc" for s in range(cfg["shards"])]
    run = {"arch": "topk", "n_features": cfg["sae_features"], "k": 32, "steps": cfg["sae_steps"],
           "batch_size": cfg["sae_batch"], "shuffle_window": cfg["sae_window"], "log_every": max(1, cfg["sae_steps"] // 10)}
    train_from_shards(paths[:-1], run, wd / "corpus_sae", held_out_paths=paths[-1:], progress=False)
    with xr.open_dataset(wd / "corpus_sae" / "training.nc", engine="h5netcdf") as t:
        fvu, held = float(t["heldout_fvu"]), int(t["heldout_tokens"])
    for p in paths:
        p.unlink()
    return {"heldout_fvu": fvu, "heldout_tokens": held, "train_shards": len(paths) - 1}


def stage_spatial(wd: Path, cfg: dict) -> dict:
    from mechflow.io import FeatureColumns, write_dataset
    from mechflow.spatial.analysis import columns_per_block, spatial_analysis

    params = {"k": 8, "transform": "r", "permutations": cfg["permutations"], "seed": 0, "lisa_top_n": 3,
              "shuffled_control": bool(cfg["controls"]), "shuffles": 200, "residualise": cfg["controls"],
              "crs": CRS}
    shuffles = params["shuffles"] if params["shuffled_control"] else 0
    with FeatureColumns(wd / "features.nc", "sae") as fc:
        n, F = fc.shape
        width = columns_per_block(n, F, cfg["bound_mb"], n_regions=2, n_controls=2 * int(cfg["controls"]),
                                  permutations=cfg["permutations"], shuffles=shuffles)
        moran, lisa = spatial_analysis(fc, params, num_threads=cfg["threads"], memory_mb=cfg["bound_mb"])
    write_dataset(moran, wd / "moran.nc")
    write_dataset(lisa, wd / "lisa.nc")
    structured = moran["I"].sel(feature=slice(0, 255))  # the features given a spatial pattern
    (wd / "features.nc").unlink()
    return {"block_columns": width, "blocks": -(-F // width), "median_I_structured": float(structured.median()),
            "median_I_noise": float(moran["I"].isel(feature=slice(256, None)).median()), "lisa_features": lisa.sizes["feature"]}


STAGES = {"extract_shards": stage_extract_shards, "gather": stage_gather, "sae_train": stage_sae_train,
          "sae_encode": stage_sae_encode, "snmf": stage_snmf, "write_features": stage_write_features,
          "spatial": stage_spatial, "corpus_shards": stage_corpus_shards, "sae_corpus": stage_sae_corpus}


def run_stage(name: str, wd: Path, cfg: dict) -> dict:
    """One stage in a fresh process under /usr/bin/time -v: peak RSS, VmHWM, wall time, the stage's own numbers."""
    cmd = [sys.executable, __file__, "--stage", name, "--workdir", str(wd), "--config", json.dumps(cfg)]
    timer = shutil.which("time") or "/usr/bin/time"
    if Path(timer).exists():
        cmd = [timer, "-v", *cmd]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    peak = int(m.group(1)) * 1024 if m else report["vm_hwm_bytes"]
    bound = cfg["bound_mb"] * MB
    out = {"peak_rss_mb": round(peak / MB, 1), "vm_hwm_mb": round(report.pop("vm_hwm_bytes") / MB, 1),
           "bound_mb": cfg["bound_mb"], "under_bound": peak <= bound, "wall_s": round(wall, 1), **report}
    print(f"{name:15s} peak RSS {out['peak_rss_mb']:8.1f} MB (bound {cfg['bound_mb']} MB, "
          f"{'under' if out['under_bound'] else 'OVER'}), {wall:6.1f} s  {report}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bound-mb", type=int, default=1024, help="the memory bound (MB = 10^6 bytes)")
    ap.add_argument("--quick", action="store_true", help="256 MB of data (less than the bound), 20 SAE steps, no spatial controls")
    ap.add_argument("--permutations", type=int, default=1, help="of the spatial stage (its memory does not depend on it)")
    ap.add_argument("--tmp", default=None, help="folder for the data files (default: the system's temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run (default: all, in order)")
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:  # inside one stage's process
        report = STAGES[args.stage](Path(args.workdir), json.loads(args.config))
        print(json.dumps({**report, "vm_hwm_bytes": vm_hwm_bytes()}))
        return
    bound = args.bound_mb
    data = 256 * MB if args.quick else 4 * bound * MB
    cfg = {
        "bound_mb": bound, "threads": args.threads,
        "n_prompts": data // (4 * UNITS), "shards": 16, "window": 1024,
        "sae_features": UNITS, "sae_steps": 20 if args.quick else 100, "sae_batch": 1024, "sae_window": 8192,
        "snmf_factors": 16, "snmf_iter": 2 if args.quick else 5, "snmf_out_of_core": True,
        "n_features": data // (4 * N_SPATIAL), "permutations": args.permutations, "controls": not args.quick,
    }
    from _device import device_info, write_result  # benchmarks/_device.py

    wd = Path(tempfile.mkdtemp(prefix="mechflow-memory-", dir=args.tmp))
    print(f"bound {bound} MB; activations {cfg['n_prompts']} prompts x 1 layer x {UNITS} units = {data / MB:.0f} MB "
          f"in {cfg['shards']} shards; features {N_SPATIAL} x {cfg['n_features']} = {data / MB:.0f} MB; data in {wd}",
          flush=True)
    try:
        chosen = [name for name in STAGES if name in args.stages.split(",")]
        stages = {name: run_stage(name, wd, cfg) for name in chosen}
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    result = {
        "benchmark": "memory",
        "claim": "every stage's peak resident memory stays under the bound while its data are 4x the bound",
        "bound_mb": bound, "data_mb": data / MB, "data_over_bound": round(data / (bound * MB), 2),
        "mb": "10^6 bytes (Snakemake's mem_mb)",
        "measured_with": "/usr/bin/time -v (maximum resident set size) per stage process; vm_hwm_mb: /proc VmHWM at exit",
        "config": cfg, "stages": stages, "all_under_bound": all(s["under_bound"] for s in stages.values()),
        "device": device_info(),
    }
    part = "" if list(stages) == list(STAGES) else "_" + "_".join(stages)  # some stages: their own file
    out = ROOT / "benchmarks" / "results" / (("memory_quick" if args.quick else "memory") + part + ".json")
    write_result(out, result)
    print(f"all under the bound: {result['all_under_bound']}; wrote {out}")


if __name__ == "__main__":
    main()
