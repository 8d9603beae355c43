"""Wall time and peak memory of every rule of a study, from Snakemake's own ``benchmark:`` files.

    .venv/bin/python benchmarks/pipeline.py --run                 # run the default study into a fresh folder, then summarise
    .venv/bin/python benchmarks/pipeline.py --run --configfile configs/tiny.yaml --cores 2
    .venv/bin/python benchmarks/pipeline.py --results results     # summarise a finished run's results/benchmarks
    .venv/bin/python benchmarks/pipeline.py --quick               # configs/tiny.yaml (what `make bench` runs)

Every job of the workflow writes ``<results>/benchmarks/<rule>/...tsv`` (seconds ``s``, peak resident
memory ``max_rss`` in MB, CPU time). This script groups them by rule (jobs, total and longest wall
time, largest peak RSS), adds the measured wall time of the whole ``snakemake`` command when it ran
it, and writes ``benchmarks/results/pipeline.json`` (``pipeline_<name>.json`` for another study) and
a markdown table. The target the project holds itself to (issue 18): the default study's pipeline
in under 8 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _device import device_info, write_result  # benchmarks/_device.py

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 8 * 60


def job_table(bench_dir: Path) -> pd.DataFrame:
    """One row per benchmark file: rule, job (path below the rule folder), s, max_rss (MB), cpu_time (s)."""
    rows = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        rel = path.relative_to(bench_dir)
        df = pd.read_csv(path, sep="\t", na_values=["-", "NA", ""])
        if "s" not in df.columns or df.empty:
            continue
        last = df.iloc[-1]
        rows.append({"rule": rel.parts[0].removesuffix(".tsv"), "job": str(rel.with_suffix("")), "s": float(last["s"]),
                     "max_rss_mb": float(last.get("max_rss", float("nan"))),
                     "cpu_time_s": float(last.get("cpu_time", float("nan")))})
    if not rows:
        raise SystemExit(f"no Snakemake benchmark files under {bench_dir}")
    return pd.DataFrame(rows)


def rule_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, total and longest wall time (s), largest peak RSS (MB), total CPU time (s)."""
    g = jobs.groupby("rule", sort=False)
    out = pd.DataFrame({"jobs": g.size(), "total_s": g["s"].sum(), "longest_s": g["s"].max(),
                        "max_rss_mb": g["max_rss_mb"].max(), "cpu_time_s": g["cpu_time_s"].sum()})
    return out.sort_values("total_s", ascending=False)


def markdown(rules: pd.DataFrame) -> str:
    lines = ["| rule | jobs | total s | longest s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for rule, r in rules.iterrows():
        lines.append(f"| {rule} | {int(r.jobs)} | {r.total_s:.0f} | {r.longest_s:.0f} | {r.max_rss_mb:.0f} |")
    return "\n".join(lines)


def run_study(configfile: str | None, cores: int, results: Path, model_cache: Path | None = None) -> float:
    """Run the study into ``results`` with Snakemake from the repo root; return the command's wall time (s).
    ``model_cache``: the converted-GGUF folder to use (an empty one measures a fresh machine)."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-c", str(cores), "--config", f"results={results}"]
    if configfile:
        cmd += ["--configfile", configfile]
    env = dict(os.environ) if model_cache is None else {**os.environ, "MECHFLOW_MODEL_CACHE": str(model_cache)}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the study into a fresh temporary results folder first")
    ap.add_argument("--configfile", default=None, help="the study (default: config.yaml, the default study)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--results", type=Path, default=None, help="a finished run's results folder (without --run)")
    ap.add_argument("--keep", action="store_true", help="with --run: keep the results folder (its path is printed)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="--run on configs/tiny.yaml (seconds; what `make bench` runs)")
    ap.add_argument("--warm-model-cache", action="store_true",
                    help="with --run: use the usual converted-model cache (default: an empty one, as on a fresh machine)")
    ap.add_argument("--wall-s", type=float, default=None,
                    help="with --results: the measured wall time of the run that made them (e.g. `time make run`)")
    ap.add_argument("--note", default="", help="how the run was made (recorded in the JSON)")
    args = ap.parse_args()
    if args.quick:
        args.run, args.configfile = True, args.configfile or "configs/tiny.yaml"
    wall = args.wall_s
    tmp = None
    if args.run:
        tmp = Path(tempfile.mkdtemp(prefix="mechflow-pipeline-"))
        results = tmp / "results"
        wall = run_study(args.configfile, args.cores, results, None if args.warm_model_cache else tmp / "model-cache")
    elif args.results is None:
        raise SystemExit("give --run, or --results <folder of a finished run>")
    else:
        results = args.results
    jobs = job_table(results / "benchmarks")
    rules = rule_table(jobs)
    name = Path(args.configfile).stem if args.configfile else "default"
    out = args.out or ROOT / "benchmarks" / "results" / ("pipeline.json" if name == "default" else f"pipeline_{name}.json")
    record = {
        "benchmark": "pipeline",
        "study": args.configfile or "config.yaml",
        "target_s": TARGET_S if name == "default" else None,
        "snakemake_wall_s": wall,
        "model_cache": ("warm" if args.warm_model_cache else "cold (empty)") if args.run else None,
        "note": args.note,
        "sum_of_job_s": float(jobs["s"].sum()),
        "cores": args.cores,
        "device_info": device_info(),
        "rules": [{"rule": rule, **{k: (int(v) if k == "jobs" else round(float(v), 2)) for k, v in r.items()}}
                  for rule, r in rules.iterrows()],
        "jobs": jobs.round(2).to_dict(orient="records"),
    }
    write_result(out, record)
    print(markdown(rules))
    if wall is not None:
        print(f"\nsnakemake wall time: {wall:.0f} s ({wall / 60:.1f} min); sum of job times {jobs['s'].sum():.0f} s")
    print(f"wrote {out}")
    if tmp is not None:
        if args.keep:
            print(f"results kept under {results}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
