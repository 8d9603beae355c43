"""The ``mechflow init | archive | verify`` subcommands (parsers and what each runs); :mod:`mechflow.cli` adds them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("init", "archive", "verify")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the three subcommands to the ``mechflow`` parser's subparsers."""
    p = sub.add_parser("init", help="write a study file to start from (the default study, every key explained) into a folder")
    p.add_argument("folder", help="folder for the study (created); results will land in its results/")
    p.add_argument("--name", default="study.yaml", help="the study file's name (default study.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing study file")
    p = sub.add_parser("archive", help="pack a finished run of a study: the resolved study, versions and lock files, "
                                       "model and data digests, a digest of every result array, the result files")
    p.add_argument("out", help="the archive to write (.tar.gz)")
    p.add_argument("--configfile", default=None, help="the study file that ran (default: the default study config.yaml)")
    p.add_argument("--digests-only", action="store_true", help="pack digests, not the result files (verify then "
                                                               "cannot tell 'within tolerance' from 'different')")
    p = sub.add_parser("verify", help="rerun an archived study (or read a results folder) and report, per result file, "
                                      "identical / within tolerance / different, and why")
    p.add_argument("archive", help="a study archive written by `mechflow archive`")
    p.add_argument("--results", default=None, help="compare this results folder instead of rerunning the study")
    p.add_argument("--configfile", default=None, help="the study that made the results (default: the archived study); "
                                                      "without --results it is the study rerun")
    p.add_argument("--workdir", default=None, help="folder for the rerun (default: a new temporary folder)")
    p.add_argument("--cores", "-c", default="1", help="cores of the rerun (default 1)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of floating-point arrays (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance of floating-point arrays (default 1e-8)")


def _init(args: argparse.Namespace) -> int:
    from mechflow.share.starter import write_study

    try:
        path = write_study(args.folder, args.name, force=args.force)
    except FileExistsError as e:
        print(f"mechflow init: {e} (--force to overwrite)", file=sys.stderr)
        return 1
    print(f"wrote {path}: the default study, every key explained; edit it, then run it:\n"
          f"  cd {Path(args.folder)}\n  mechflow run --configfile {args.name}")
    return 0


def _archive(args: argparse.Namespace) -> int:
    from mechflow.share.archive import archive_study

    record = archive_study(args.configfile, args.out, digests_only=args.digests_only)
    n_arrays = sum(len(v) for v in record["results"].values())
    print(f"wrote {args.out}: {len(record['results'])} result files ({n_arrays} digests), "
          f"{len(record['models'])} model(s), {len(record['data'])} prompt set(s) / corpora, "
          f"{len(record['environment']['versions'])} installed versions")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from mechflow.share.verify import format_verification, verify_archive

    if args.results is None:
        print("mechflow verify: rerunning the archived study" + (f" ({args.configfile})" if args.configfile else "")
              + (f" in {args.workdir}" if args.workdir else "") + " ...", file=sys.stderr)
    v = verify_archive(args.archive, results=args.results, configfile=args.configfile, workdir=args.workdir,
                       cores=args.cores, rtol=args.rtol, atol=args.atol)
    print(format_verification(v), end="")
    return 0 if v.ok else 1


def run(args: argparse.Namespace) -> int:
    """Run ``args.command`` (one of :data:`COMMANDS`); a one-line error for a bad study or archive."""
    from mechflow.share.archive import ArchiveError
    from mechflow.study import ConfigError

    try:
        return {"init": _init, "archive": _archive, "verify": _verify}[args.command](args)
    except ConfigError as e:
        print(f"mechflow: {e}", file=sys.stderr)
    except ArchiveError as e:
        print(f"mechflow {args.command}: {e}", file=sys.stderr)
    return 1
