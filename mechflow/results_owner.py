"""Which study a results folder belongs to: one study per folder, so no study rewrites another's results or report.

A run writes ``<results>/.mechflow-study`` (when its first job starts, never on a dry run): the name of the study
file, relative to the working folder (``config.yaml`` for the default study, ``configs/tiny.yaml``,
``study.yaml``; an absolute path for a file outside the working folder). Before any job, a study whose
``results:`` folder carries another study's name stops with one line::

    mechflow: config error at results: results/ holds the results of study config.yaml (results/.mechflow-study);
    give configs/mine.yaml its own folder (results: results/mine), or delete results/.mechflow-study to hand it over

A folder without the file (results of an older mechflow, an empty folder) is taken by the first study that runs.
The name is relative, so a copied or cloned working folder keeps its studies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mechflow.io import atomic_write_text
from mechflow.study import ConfigError

__all__ = ["MARKER", "study_name", "results_owner", "check_owner", "claim"]

#: the file in a results folder naming the study it belongs to
MARKER = ".mechflow-study"


def study_name(configfiles: Sequence[str | os.PathLike], default: str | os.PathLike, base_dir: str | os.PathLike = ".") -> str:
    """The study's name: its ``--configfile`` path(s) relative to ``base_dir`` (joined by `` + ``; absolute where
    outside it), or the default study file's name when none is given (or the one given is the default study)."""
    base = Path(base_dir).resolve()
    default = Path(default).resolve()
    names = []
    for f in configfiles or [default]:
        path = Path(base, f).resolve()
        if path == default:
            names.append(default.name)
        else:
            names.append(path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path))
    return " + ".join(names)


def results_owner(root: str | os.PathLike, base_dir: str | os.PathLike = ".") -> str | None:
    """The study a results folder belongs to (its marker's text), or None when it names none."""
    marker = Path(base_dir, root, MARKER)
    try:
        return marker.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def check_owner(root: str, name: str, base_dir: str | os.PathLike = ".") -> None:
    """ConfigError at ``results`` when the folder ``root`` belongs to a study other than ``name``."""
    owner = results_owner(root, base_dir)
    if owner is None or owner == name:
        return
    marker = f"{root.rstrip('/')}/{MARKER}"
    suggest = f"{root.rstrip('/')}/{Path(name.split(' + ')[0]).stem}"
    raise ConfigError("results", f"{root.rstrip('/')}/ holds the results of study {owner} ({marker}); give {name} its own "
                      f"folder (results: {suggest}), or delete {marker} to hand the folder over")


def claim(root: str, name: str, base_dir: str | os.PathLike = ".") -> None:
    """Mark ``root`` as the folder of study ``name`` (written once, atomically; an existing marker is left alone)."""
    if results_owner(root, base_dir) is None:
        folder = Path(base_dir, root)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / MARKER, name + "\n")
