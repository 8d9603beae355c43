"""Compile-time report of the Triton kernels for the A100 (sm_80) and the H100 (sm_90), made without a GPU.

Every configuration the launchers of ``mechflow/kernels/_triton_kernels.py`` can choose (each block size
at the base flags, and the bf16 / TF32 / mask / no-bias variants at each kernel's smallest blocks;
:func:`mechflow.kernels.aot.launch_configs`) is compiled ahead of time by ``triton.compile`` with a
``GPUTarget`` and Triton's bundled ``ptxas``, each in its own process with a time limit. For each it
records what ptxas reports (registers per thread, spill stores and loads, stack frame), the shared
memory Triton launches it with, the compile's wall and CPU time on this machine (``cpu_s`` includes
importing torch and triton, about 4 s; wall times depend on the machine's load), and checks against the GPU's limits
(launchable; blocks resident per SM by registers, shared memory and threads; occupancy).

These are compile-time numbers from a CPU-only machine, not GPU measurements: no kernel runs, and the
time a kernel takes on a GPU is not estimated.

    .venv/bin/python benchmarks/triton_aot.py                  # every config; writes benchmarks/results/triton_aot.json
    .venv/bin/python benchmarks/triton_aot.py --quick          # each kernel's extreme block sizes (triton_aot_quick.json)
    .venv/bin/python benchmarks/triton_aot.py --timeout-s 900  # per compile (default 300 s)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def one(index: int, arch: int, quick: bool) -> None:
    """Inside a child process: compile config ``index`` for ``arch``, print its row as JSON."""
    import resource

    from mechflow.kernels import aot

    config = aot.launch_configs(extremes_only=quick)[index]
    row = aot.compile_config(config, arch).to_dict()
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # this process and ptxas: the compile's CPU time
    print(json.dumps({"arch": f"sm_{arch}", "gpu": aot.LIMITS[arch].gpu, **row, "cpu_s": round(cpu, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="each kernel's smallest and largest block sizes only")
    ap.add_argument("--timeout-s", type=float, default=300.0, help="time limit of one compile (one config, one arch)")
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(*args.one, quick=args.quick)
        return
    import triton
    from _device import device_info, write_result  # benchmarks/_device.py

    from mechflow.kernels import aot

    configs = aot.launch_configs(extremes_only=args.quick)
    env = {**os.environ, "TRITON_DEFAULT_FP_FUSION": os.environ.get("TRITON_DEFAULT_FP_FUSION", "1")}
    rows = []
    for i, config in enumerate(configs):
        for arch in aot.ARCHS:
            cmd = [sys.executable, __file__, "--one", str(i), str(arch), *(["--quick"] if args.quick else [])]
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=env)
            except subprocess.TimeoutExpired:
                row = {"arch": f"sm_{arch}", "gpu": aot.LIMITS[arch].gpu, "kernel": config.kernel, "config": config.name,
                       "variant": config.variant, "compiled": False,
                       "error": f"did not finish compiling in {args.timeout_s:g} s on this machine"}
            else:
                if proc.returncode != 0:
                    raise SystemExit(f"{config.name} does not compile for sm_{arch}:\n{proc.stderr[-4000:]}")
                row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "compiled": True}
            rows.append(row)
            shown = (f"{row['registers_per_thread']:3d} regs, spills {row['spill_stores_bytes']:6d} B, shared "
                     f"{row['shared_bytes']:6d} B, occupancy {row['occupancy']:.3f}" if row["compiled"] else row["error"])
            print(f"sm_{arch} {config.name:95s} {shown} ({time.perf_counter() - t:.0f} s)", flush=True)
    compiled = [r for r in rows if r["compiled"]]
    result = {
        "benchmark": "triton_aot",
        "what": "compile-time report made on a CPU-only machine (ahead-of-time compilation with Triton's bundled ptxas "
                "for sm_80 and sm_90); not a GPU measurement: no kernel ran",
        "triton": triton.__version__,
        "load_average_at_end": os.getloadavg(),
        "limits": {f"sm_{a}": vars(aot.LIMITS[a]) for a in aot.ARCHS},
        "signature": "contiguous tensors as the JIT specialises them: pointers 16-byte aligned, unit strides constant 1",
        "summary": {
            "compiled": len(compiled), "timed_out": len(rows) - len(compiled),
            "not_launchable": sorted(f"{r['arch']} {r['config']}" for r in compiled if not r["launchable"]),
            "spilling": sorted(f"{r['arch']} {r['config']}" for r in compiled if r["spills"]),
        },
        "kernels": rows,
        "device": device_info(),
    }
    out = RESULTS / ("triton_aot_quick.json" if args.quick else "triton_aot.json")
    write_result(out, result)
    print(f"{len(compiled)} of {len(rows)} compiled; wrote {out}")


if __name__ == "__main__":
    main()
