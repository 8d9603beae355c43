"""Write envs/mechflow.yaml's pip list from requirements/cpu.txt (run by `make lock`): the conda environment of
`snakemake --software-deployment-method conda` gets exactly the versions of the lock, and torch's CPU build.

    python scripts/dev/envs_from_lock.py [--check]     # --check: exit 1 when envs/mechflow.yaml is out of step
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK, NO_DEPS, ENV = REPO / "requirements/cpu.txt", REPO / "requirements/no-deps.txt", REPO / "envs/mechflow.yaml"
TORCH = "torch==2.13.0"
HEADER = """\
# Conda environment for `snakemake --software-deployment-method conda`: the versions of requirements/cpu.txt
# (the CPU lock; written from it by `make lock`, scripts/dev/envs_from_lock.py: do not edit by hand) and torch's
# CPU build. The rule scripts import mechflow from the workflow's checkout or installed copy.
channels:
  - conda-forge
  - nodefaults
dependencies:
  - python=3.11
  - pip
  - pip:
      - --extra-index-url https://download.pytorch.org/whl/cpu
"""


def pins(path: Path) -> list[str]:
    """The ``name==version`` lines of a requirements file, in order."""
    return [m.group(0) for line in path.read_text(encoding="utf-8").splitlines()
            if (m := re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?==\S+", line))]


def env_text() -> str:
    return HEADER + "".join(f"      - {p}\n" for p in [TORCH, *pins(LOCK)])


def main(argv: list[str]) -> int:
    text = env_text()
    if "--check" in argv:
        ok = ENV.read_text(encoding="utf-8") == text
        print(f"{ENV.relative_to(REPO)}: {'in step with' if ok else 'out of step with'} {LOCK.relative_to(REPO)}")
        return 0 if ok else 1
    ENV.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
