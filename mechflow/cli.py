"""The ``mechflow`` command: inspect result files, show the environment, resolve a study, run the workflow."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from mechflow import explore
from mechflow.layout import WORKFLOW_ROOT
from mechflow.share import commands as share_commands
from mechflow.share.runner import snakemake_command

REPO = Path(__file__).resolve().parents[1]  # a checkout (README.md); the workflow files: WORKFLOW_ROOT


def _fmt_attr(value) -> str:
    text = str(value.tolist() if hasattr(value, "tolist") else value)
    return text if len(text) <= 200 else text[:197] + "..."


def inspect_file(path: str) -> str:
    """A readable summary of a mechflow file: variables with dims, shapes, dtypes; coords; attrs."""
    from mechflow.io import open_dataset

    with open_dataset(path) as ds:
        lines = [f"{path}", "dimensions: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items())]
        lines.append("variables:")
        for name, var in ds.data_vars.items():
            lines.append(f"  {name} [{', '.join(var.dims)}] {var.dtype} {tuple(var.shape)}")
        lines.append("coordinates:")
        for name, var in ds.coords.items():
            sample = var.values[:3].tolist() if var.ndim == 1 else ""
            lines.append(f"  {name} [{', '.join(var.dims)}] {var.dtype} e.g. {sample}")
        attrs = {**ds.attrs}
        for var in ds.data_vars.values():
            attrs.update({k: v for k, v in var.attrs.items() if k not in attrs})
        lines.append("attributes:")
        lines += [f"  {k}: {_fmt_attr(v)}" for k, v in sorted(attrs.items())]
    return "\n".join(lines)


def info() -> dict:
    """Versions and devices relevant to a run."""
    import torch

    from mechflow import __version__

    return {
        "mechflow": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "threads": torch.get_num_threads(),
    }


def print_info(configfile: str | None, versions_only: bool = False, as_json: bool = False) -> int:
    """``mechflow info``: versions and devices, then the study's plan (:mod:`mechflow.plan`)."""
    import dataclasses

    versions = info()
    if versions_only:
        print(json.dumps(versions, indent=2))
        return 0
    from mechflow.plan import PlanError, format_plan, study_plan
    from mechflow.study import ConfigError

    try:
        plan = study_plan(configfile)
    except (ConfigError, PlanError) as e:
        print(f"mechflow: {e}" if not str(e).startswith("mechflow:") else str(e), file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"versions": versions, "plan": dataclasses.asdict(plan)}, indent=2, default=str))
    else:
        print(", ".join(f"{k} {v}" for k, v in versions.items() if k != "gpus" or v))
        print(format_plan(plan), end="")
    return 0


def resolved_study(path: str | None) -> str:
    """The complete study a config file stands for (schema defaults filled, keys sorted), as YAML."""
    import yaml

    from mechflow.config import DEFAULT_STUDY, SCHEMA_FILE, load_study
    from mechflow.resolve import resolve

    resolved = resolve(load_study(path or WORKFLOW_ROOT / DEFAULT_STUDY), base_dir=Path.cwd(),
                       schema_path=WORKFLOW_ROOT / SCHEMA_FILE)
    for warning in resolved.warnings:  # duplicated places dropped or kept
        print(f"mechflow: warning at {warning}", file=sys.stderr)
    return yaml.safe_dump(resolved.study, sort_keys=True, default_flow_style=False, allow_unicode=True)


README_MARKERS = ("<!-- config-reference:start -->\n", "<!-- config-reference:end -->")


def config_reference_text() -> str:
    from mechflow.config import SCHEMA_FILE, config_reference, load_schema

    return config_reference(load_schema(WORKFLOW_ROOT / SCHEMA_FILE))


def write_readme_reference(readme: Path, text: str) -> None:
    """Replace the generated config reference between the README's markers."""
    from mechflow.io import atomic_write_text

    start, end = README_MARKERS
    content = readme.read_text(encoding="utf-8")
    if start not in content or end not in content:
        raise SystemExit(f"{readme}: no {start.strip()} ... {end} block to rewrite")
    head, rest = content.split(start, 1)
    atomic_write_text(readme, head + start + text + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mechflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="print a result file's dims, coords and attrs")
    p_inspect.add_argument("files", nargs="+")
    p_info = sub.add_parser("info", help="versions and devices, and the plan of a study: jobs per rule, each rule's "
                                         "resources, the expected size of every intermediate (before a run)")
    p_info.add_argument("--configfile", default=None, help="a study file (default: the default study config.yaml)")
    p_info.add_argument("--versions", action="store_true", help="versions and devices only (no plan)")
    p_info.add_argument("--json", action="store_true", help="print versions and plan as JSON")
    p_config = sub.add_parser("config", help="validate a study config; --resolved prints the whole study it stands for")
    p_config.add_argument("configfile", nargs="?", default=None, help="a study file (default: the default study config.yaml)")
    p_config.add_argument("--resolved", action="store_true", help="print the resolved study as YAML")
    p_config.add_argument("--reference", action="store_true", help="print the config reference (markdown) from the schema")
    p_config.add_argument("--write-readme", action="store_true", help="with --reference: rewrite README.md's reference block")
    p_run = sub.add_parser("run", help="run the workflow (arguments after -- go to snakemake)")
    p_run.add_argument("--configfile", default=None)
    p_run.add_argument("--cores", "-c", default="all")
    p_run.add_argument("snakemake_args", nargs=argparse.REMAINDER)
    share_commands.add_parsers(sub)
    explore.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "explore":
        return explore.run(args)
    if args.command in share_commands.COMMANDS:
        return share_commands.run(args)
    if args.command == "inspect":
        for i, f in enumerate(args.files):
            if i:
                print()
            try:
                print(inspect_file(f))
            except (FileNotFoundError, OSError, ValueError) as e:
                print(f"mechflow inspect: {e}", file=sys.stderr)
                return 1
        return 0
    if args.command == "config" and args.reference:
        text = config_reference_text()
        if args.write_readme:
            write_readme_reference(REPO / "README.md", text)
        else:
            print(text, end="")
        return 0
    if args.command == "config":
        from mechflow.study import ConfigError

        try:
            text = resolved_study(args.configfile)
        except ConfigError as e:
            print(f"mechflow: {e}", file=sys.stderr)
            return 1
        print(text if args.resolved else f"{args.configfile or 'config.yaml'}: valid", end="" if args.resolved else "\n")
        return 0
    if args.command == "info":
        return print_info(args.configfile, versions_only=args.versions, as_json=args.json)
    cmd = snakemake_command(cores=args.cores)  # snakemake beside this Python, else `python -m snakemake`
    if args.configfile:
        cmd += ["--configfile", args.configfile]
    extra = [a for a in args.snakemake_args if a != "--"]
    from mechflow.config import check_study_files
    from mechflow.study import ConfigError

    try:  # before Snakemake reads them with a loader that builds objects from !!python/... tags
        check_study_files(([args.configfile] if args.configfile else []) + configfile_args(extra))
    except ConfigError as e:
        print(f"mechflow: {e}", file=sys.stderr)
        return 1
    return subprocess.call(cmd + extra, env=os.environ.copy())


def configfile_args(args: list[str]) -> list[str]:
    """The study files named by ``--configfile`` / ``--configfiles`` in Snakemake arguments (each option takes
    every value up to the next option; ``--configfile=a.yaml`` too)."""
    files, taking = [], False
    for arg in args:
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            taking = name in ("--configfile", "--configfiles")
            if taking and eq:
                files.append(value)
                taking = False
        elif taking:
            files.append(arg)
    return files


if __name__ == "__main__":
    raise SystemExit(main())
