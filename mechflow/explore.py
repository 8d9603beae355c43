"""``mechflow explore --configfile my.yaml``: the live prompt explorer of a study's feature sets on 127.0.0.1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="serve the live prompt explorer of a study's SAE / semi-NMF / unit sets on 127.0.0.1")
    p.add_argument("--configfile", default=None, help="a study file (default: the default study config.yaml)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")


def run(args: argparse.Namespace) -> int:
    from mechflow.config import DEFAULT_STUDY, SCHEMA_FILE, load_study
    from mechflow.explorer.live import LiveSession, SetSpec
    from mechflow.explorer.server import serve
    from mechflow.layout import WORKFLOW_ROOT
    from mechflow.resolve import resolve
    from mechflow.steps.explorer import live_sets
    from mechflow.study import ConfigError

    try:
        resolved = resolve(load_study(args.configfile or WORKFLOW_ROOT / DEFAULT_STUDY), base_dir=Path.cwd(),
                           schema_path=WORKFLOW_ROOT / SCHEMA_FILE)
    except ConfigError as e:
        print(f"mechflow: {e}", file=sys.stderr)
        return 1
    specs = [SetSpec(**s) for s in live_sets(resolved.study, resolved.facts)]
    if not specs:
        print("mechflow explore: the study has no feature set (SAE runs, semi-NMF runs, spatial.units)", file=sys.stderr)
        return 1
    serve(LiveSession(specs), port=args.port)
    return 0
