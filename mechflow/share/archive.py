"""The study archive: what a finished run of a study was, in one ``.tar.gz`` another machine can check.

``mechflow archive --configfile my.yaml out.tar.gz`` packs

- ``study.yaml``: the resolved study (schema defaults filled, keys sorted: what ran);
- ``mechflow-archive.json``: mechflow's version and code digest, Python, the platform, every installed
  distribution's version, the lock file's sha256, each model's and each prompt set's / corpus's file digests,
  and a digest of every array of every result file (:func:`mechflow.share.digests.array_digests`);
- ``requirements/``: the lock files the environment was set up from (``make setup``), when the workflow has them;
- ``results/``: the result files themselves (unless ``digests_only``), so that :mod:`mechflow.share.verify`
  can tell values within a tolerance from values that differ.

Logs, timings, checkpoints and the rendered report are not results (:func:`mechflow.compare.is_result`).
"""

from __future__ import annotations

import io
import json
import platform
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

from mechflow import __version__
from mechflow.config import DEFAULT_STUDY, SCHEMA_FILE, load_study
from mechflow.contracts import result_path
from mechflow.io import atomic_path
from mechflow.layout import WORKFLOW_ROOT
from mechflow.resolve import resolve
from mechflow.share import digests
from mechflow.steps.manifest import manifest, report_inputs

__all__ = ["FORMAT", "MANIFEST", "STUDY", "RESULTS", "ArchiveError", "archive_study", "environment_record", "read_archive"]

FORMAT = 1
MANIFEST = "mechflow-archive.json"
STUDY = "study.yaml"
RESULTS = "results"
LOCK_DIR = "requirements"


class ArchiveError(RuntimeError):
    """A study cannot be archived (no results, results incomplete) or an archive cannot be read."""


def resolved(configfile: str | Path | None, base_dir: str | Path = "."):
    """The resolved study of a study file (the default study without one), as the workflow resolves it."""
    return resolve(load_study(configfile or WORKFLOW_ROOT / DEFAULT_STUDY), base_dir=base_dir,
                   schema_path=WORKFLOW_ROOT / SCHEMA_FILE)


def lock_files() -> dict[str, Path]:
    """The workflow's lock files (``requirements/*.txt``) by archive name."""
    folder = WORKFLOW_ROOT / LOCK_DIR
    return {f"{LOCK_DIR}/{p.name}": p for p in sorted(folder.glob("*.txt"))} if folder.is_dir() else {}


def environment_record() -> dict[str, Any]:
    """What the code and the environment were: mechflow's version and code digest, Python, platform, versions, locks."""
    from mechflow.io import file_sha256

    return {"mechflow": __version__, "code": digests.package_code_digest(), "python": sys.version.split()[0],
            "platform": platform.platform(), "machine": platform.machine(), "versions": digests.installed_versions(),
            "locks": {name: file_sha256(p) for name, p in lock_files().items()}}


def _expected_results(study: dict[str, Any], facts: Any) -> list[str]:
    """Every result file a finished run of the study holds: each job's, and the report's table."""
    report = [result_path("report_table", study["results"])] if study["report"]["enabled"] else []
    return report_inputs(manifest(study, facts)) + report


def archive_study(configfile: str | Path | None, out: str | Path, base_dir: str | Path = ".",
                  digests_only: bool = False) -> dict[str, Any]:
    """Write the archive of a finished run of ``configfile`` to ``out`` (atomically); returns its manifest."""
    base_dir = Path(base_dir)
    res = resolved(configfile, base_dir)
    study = res.study
    root = base_dir / study["results"]
    missing = [f for f in _expected_results(study, res.facts) if not (base_dir / f).exists()]
    if missing:
        raise ArchiveError(f"{len(missing)} result file(s) of the study are missing under {root} (e.g. {missing[0]}): "
                           f"run it first (mechflow run --configfile {configfile or DEFAULT_STUDY})")
    record = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "study_file": str(configfile or DEFAULT_STUDY),
        "environment": environment_record(),
        "models": digests.model_digests(study, base_dir),
        "data": digests.data_digests(study),
        "results": digests.array_digests(root),
        "provenance": digests.provenances(root),
        "results_packed": not digests_only,
    }
    members: dict[str, bytes | Path] = {
        MANIFEST: json.dumps(record, indent=1, sort_keys=True).encode(),
        STUDY: yaml.safe_dump(study, sort_keys=True, default_flow_style=False, allow_unicode=True).encode(),
        **lock_files(),
    }
    if not digests_only:
        members.update({f"{RESULTS}/{rel}": root / rel for rel in digests.result_files(root)})
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, content in members.items():
            if isinstance(content, Path):
                tar.add(content, arcname=name, recursive=False)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(content), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(content))
    return record


def read_archive(path: str | Path, into: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unpack an archive into a folder; returns its manifest and its resolved study (the result files lie under
    ``into/results`` when the archive packs them)."""
    path, into = Path(path), Path(into)
    try:
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(into, filter="data")
        record = json.loads((into / MANIFEST).read_text(encoding="utf-8"))
        study = yaml.safe_load((into / STUDY).read_text(encoding="utf-8"))
    except (OSError, tarfile.TarError, KeyError, ValueError, yaml.YAMLError) as e:
        raise ArchiveError(f"{path} is not a mechflow study archive: {e}") from None
    if record.get("format") != FORMAT:
        raise ArchiveError(f"{path}: archive format {record.get('format')!r}, this mechflow reads format {FORMAT}")
    return record, study

