"""Rule report: <results>/report/index.html from every result of the study."""

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
    study, options = dict(sm.params.study), dict(sm.params.report)
    manifest["study"] = {"title": options["title"], "config": study, "config_digest": digest(study),
                         "versions": _versions(), "top_n": options["top_n"], "max_map_sets": options["max_map_sets"]}
    bench = Path(sm.params.benchmarks)
    manifest["benchmarks"] = [
        {"rule": Path(Path(p).relative_to(bench).parts[0]).stem, "job": str(Path(p).relative_to(bench).with_suffix("")),
         "path": p}
        for p in sorted(glob.glob(f"{bench}/**/*.tsv", recursive=True))
    ]
    path = build_report(manifest, Path(sm.output.html).parent)
    print(f"report: {Path(path).resolve()}")


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
