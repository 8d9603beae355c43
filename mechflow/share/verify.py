"""Check a study archive (:mod:`mechflow.share.archive`): rerun its study, or read a results folder, and say per
result file whether it holds the archived results, and where not, why that may be.

Each file is ``identical`` (every array's digest equal), ``within tolerance`` (only floating-point arrays
differ, all within ``rtol`` / ``atol`` of the archived values: needs the archive's packed results),
``different`` (with the first difference, from :func:`mechflow.compare.compare_files`) or ``missing`` (on one
side only). The reasons are what the archive records and can be checked now: the resolved study (key by
key), each model's and each data file's digest, the mechflow code, Python and every installed version.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml
from safetensors.numpy import load_file

from mechflow.compare import FileComparison, compare_files
from mechflow.share.archive import RESULTS, STUDY, ArchiveError, environment_record, read_archive, resolved
from mechflow.share.digests import ATTRS, PROVENANCE, array_digests, data_digests, model_digests, provenance
from mechflow.share.runner import snakemake_command

__all__ = ["STATUSES", "FileVerdict", "Verification", "explain", "format_verification", "verify_archive", "verify_results"]

STATUSES = ("identical", "within tolerance", "different", "missing")


#: one result file's verdict: compare's FileComparison, whose status here is one of :data:`STATUSES`
FileVerdict = FileComparison


@dataclass
class Verification:
    """The verdict per file, and what differs between the archived run and this one (study, models, data, code, versions)."""

    files: list[FileVerdict]
    reasons: list[str] = field(default_factory=list)
    results: Path | None = None

    @property
    def ok(self) -> bool:
        return all(f.status in ("identical", "within tolerance") for f in self.files)

    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.files) for s in STATUSES}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return {str(name): ds[name].values for name in ds.variables}


def _tolerance(archived: Path, current: Path, changed: list[str], rtol: float, atol: float) -> str | None:
    """``"max |a - b| = ..."`` when every changed array is floating point and within tolerance, else None."""
    if archived.suffix not in (".nc", ".safetensors") or any(ATTRS in name or name.startswith("@") for name in changed):
        return None
    left, right = _arrays(archived), _arrays(current)
    gap = 0.0
    for name in changed:
        x, y = left.get(name), right.get(name)
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype or x.dtype.kind not in "fc":
            return None
        if not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
            return None
        gap = max(gap, float(np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
    return f"{', '.join(changed)}: max |a - b| = {gap:.3g} (rtol {rtol:g}, atol {atol:g})"


def file_reason(archived: Mapping[str, str], current: Mapping[str, str]) -> str:
    """Why one file may differ, from its provenance attributes (:data:`mechflow.share.digests.PROVENANCE`)."""
    changed = [what for key, what in PROVENANCE.items() if archived.get(key) != current.get(key)]
    if changed:
        return "changed since the archived run: " + ", ".join(changed)
    return "made with the same settings, inputs' settings, code and model as the archived file"


def _with_reason(verdict: FileVerdict, archived: Mapping[str, str], results: Path) -> FileVerdict:
    if verdict.status not in ("different", "within tolerance"):
        return verdict
    return FileVerdict(verdict.path, verdict.status, f"{verdict.detail} [{file_reason(archived, provenance(results / verdict.path))}]")


def verify_results(archived: Mapping[str, Mapping[str, str]], results: str | Path, packed: str | Path | None = None,
                   rtol: float = 1e-5, atol: float = 1e-8,
                   archived_provenance: Mapping[str, Mapping[str, str]] | None = None) -> list[FileVerdict]:
    """Each result file under ``results`` against the archived digests (and packed files, where there are some);
    with the archived provenance, each differing file says what it was made with that differs."""
    results = Path(results)
    current = array_digests(results) if results.is_dir() else {}
    out = []
    for rel in sorted(set(archived) | set(current)):
        if rel not in current:
            out.append(FileVerdict(rel, "missing", f"archived, not under {results}"))
        elif rel not in archived:
            out.append(FileVerdict(rel, "missing", f"under {results}, not in the archive"))
        elif dict(archived[rel]) == current[rel]:
            out.append(FileVerdict(rel, "identical"))
        else:
            changed = sorted(k for k in set(archived[rel]) | set(current[rel]) if archived[rel].get(k) != current[rel].get(k))
            source = Path(packed) / rel if packed is not None else None
            if source is None or not source.exists():
                out.append(FileVerdict(rel, "different", f"digests differ: {', '.join(changed)}"))
                continue
            within = _tolerance(source, results / rel, changed, rtol, atol)
            if within:
                out.append(FileVerdict(rel, "within tolerance", within))
            else:
                out.append(FileVerdict(rel, "different", compare_files(source, results / rel) or f"digests differ: {', '.join(changed)}"))
    if archived_provenance is not None:
        out = [_with_reason(f, archived_provenance.get(f.path, {}), results) for f in out]
    return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def _changes(before: Mapping[str, Any], after: Mapping[str, Any], limit: int = 12) -> list[str]:
    keys = sorted(k for k in set(before) | set(after) if before.get(k, "(none)") != after.get(k, "(none)"))
    text = [f"{k} ({before.get(k, '(none)')} -> {after.get(k, '(none)')})" for k in keys[:limit]]
    return text + ([f"... {len(keys) - limit} more"] if len(keys) > limit else [])


def explain(record: Mapping[str, Any], archived_study: Mapping[str, Any], study: Mapping[str, Any],
            base_dir: str | Path = ".") -> list[str]:
    """What differs between the archived run and now, in words: one line per kind (study, models, data, code, versions)."""
    reasons = []
    drop = {"results"}  # where results are written is not what they hold
    change = _changes({k: v for k, v in _flat(archived_study).items() if k.split(".")[0] not in drop},
                      {k: v for k, v in _flat(study).items() if k.split(".")[0] not in drop})
    if change:
        reasons.append("study differs at " + "; ".join(change))
    models = model_digests(dict(study), base_dir)
    for name, entry in sorted(record.get("models", {}).items()):
        now = models.get(name)
        if now is None:
            reasons.append(f"model {name} is not in this study")
        elif now != entry:
            reasons.append(f"model {name} differs: {entry['spec']} sha256 {entry['sha256'][:12]} -> "
                           f"{now['spec']} sha256 {now['sha256'][:12]}")
    data = data_digests(dict(study))
    for name, files in sorted(record.get("data", {}).items()):
        if name in data and data[name] != files:
            reasons.append(f"data {name} differs: " + "; ".join(_changes(files, data[name])))
    env, now_env = record.get("environment", {}), environment_record()
    if env.get("code") != now_env["code"]:
        reasons.append(f"mechflow code differs (mechflow {env.get('mechflow')} code {env.get('code')} -> "
                       f"{now_env['mechflow']} code {now_env['code']})")
    for key in ("python", "machine"):
        if env.get(key) != now_env[key]:
            reasons.append(f"{key} differs: {env.get(key)} -> {now_env[key]}")
    versions = _changes(env.get("versions", {}), now_env["versions"], limit=20)
    if versions:
        reasons.append("installed versions differ: " + "; ".join(versions))
    return reasons or ["same study, models, data, mechflow code, Python and installed versions: what the archive records "
                       "does not explain it (a file changed after the run, or a step that is not deterministic)"]


def _rerun_study(study: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The study to rerun in a fresh folder: results under it, relative data paths read from ``base_dir``."""

    def absolute(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (str((base_dir / v).resolve()) if k == "path" and isinstance(v, str) and not v.startswith("package:")
                        and not Path(v).is_absolute() else absolute(v)) for k, v in value.items()}
        return [absolute(v) for v in value] if isinstance(value, list) else value

    return {**absolute(study), "results": RESULTS}


def rerun(study: dict[str, Any], workdir: Path, cores: str | int = 1, base_dir: Path = Path(".")) -> Path:
    """Run ``study`` in ``workdir`` with the workflow; returns its results folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    configfile = workdir / STUDY
    configfile.write_text(yaml.safe_dump(_rerun_study(study, base_dir), sort_keys=True), encoding="utf-8")
    proc = subprocess.run(snakemake_command(configfile, cores, directory=workdir), capture_output=True, text=True)
    if proc.returncode != 0:
        raise ArchiveError(f"the rerun in {workdir} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return workdir / RESULTS


def verify_archive(archive: str | Path, results: str | Path | None = None, configfile: str | Path | None = None,
                   workdir: str | Path | None = None, cores: str | int = 1, rtol: float = 1e-5, atol: float = 1e-8,
                   base_dir: str | Path = ".") -> Verification:
    """Check an archive against ``results`` (a results folder), else against a rerun of its study (or of
    ``configfile``, a changed study) in ``workdir`` (default: a new temporary folder)."""
    base_dir = Path(base_dir)
    with tempfile.TemporaryDirectory(prefix="mechflow-archive-") as unpacked:
        record, archived_study = read_archive(archive, unpacked)
        study = resolved(configfile, base_dir).study if configfile else archived_study
        if results is None:
            folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mechflow-verify-"))
            results = rerun(study, folder, cores, base_dir)
        packed = Path(unpacked) / RESULTS if record.get("results_packed") else None
        files = verify_results(record["results"], results, packed, rtol, atol, record.get("provenance", {}))
        reasons = [] if all(f.status == "identical" for f in files) else explain(record, archived_study, study, base_dir)
    return Verification(files, reasons, Path(results))


def format_verification(v: Verification) -> str:
    """One line per result file, the counts, and (where anything differs) the reasons."""
    lines = [f"{f.status:16s} {f.path}" + (f": {f.detail}" if f.detail else "") for f in v.files]
    c = v.counts()
    lines.append(", ".join(f"{c[s]} {s}" for s in STATUSES) + f" ({len(v.files)} result files under {v.results})")
    lines += [f"why: {r}" for r in v.reasons]
    return "\n".join(lines) + "\n"
