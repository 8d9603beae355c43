"""Rule report: results/report/index.html from every result of the study."""

import glob
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mechflow.io import digest
from mechflow.report import build_report
from mechflow.workflow import run_rule

PACKAGES = ("mechflow", "torch", "transformers", "snakemake", "xarray", "numpy", "libpysal", "esda", "triton")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def main(sm) -> None:
    manifest = dict(sm.params.manifest)
    config = dict(sm.params.config)
    manifest["study"] = {"title": sm.params.title, "config": config, "config_digest": digest(config),
                         "versions": _versions(), "top_n": sm.params.top_n}
    manifest["benchmarks"] = [
        {"rule": Path(Path(p).relative_to("results/benchmarks").parts[0]).stem,
         "job": str(Path(p).relative_to("results/benchmarks").with_suffix("")), "path": p}
        for p in sorted(glob.glob("results/benchmarks/**/*.tsv", recursive=True))
    ]
    path = build_report(manifest, Path(sm.output.html).parent)
    print(f"report: {Path(path).resolve()}")


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
