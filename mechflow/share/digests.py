"""Digests of what a study's results depend on and of what they hold.

- :func:`array_digests`: per result file (the files :mod:`mechflow.compare` compares), a sha256 of every
  array it holds (dtype, shape and values of each netCDF variable and coordinate, each safetensors tensor)
  and of its attributes less the provenance ones (:data:`mechflow.compare.VOLATILE_ATTRS`); JSON by its
  content less those, other text by its bytes. Two files hold the same results exactly when the digests agree.
- :func:`model_digests`, :func:`data_digests`: sha256 of the files each model and prompt set / corpus is read from.
- :func:`installed_versions`: every installed distribution's version; :func:`package_code_digest`: the
  mechflow code (syntax trees without docstrings, as the rules' ``code`` params).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from safetensors.numpy import load_file

from mechflow.compare import VOLATILE_ATTRS, is_result
from mechflow.io import canonical_json, files_sha256
from mechflow.models import resolve_model
from mechflow.steps import corpus as corpus_step
from mechflow.steps import data as data_step
from mechflow.study import corpora, prompt_sets
from mechflow.workflow import PACKAGE_ROOT, code_digest

__all__ = ["ATTRS", "PROVENANCE", "array_digest", "array_digests", "data_digests", "file_digests", "installed_versions",
           "model_digests", "package_code_digest", "provenance", "provenances", "result_files"]

#: the pseudo-array name under which a file's (non-provenance) attributes are digested
ATTRS = "@attrs"
#: provenance attributes of a result file -> what a change of each says (the reason a file differs)
PROVENANCE = {"config_digest": "the step's settings", "upstream_config_digest": "its inputs' settings",
              "prompts_config_digest": "its prompt set's settings", "code": "the step's code",
              "model_digest": "the model", "mechflow_version": "mechflow's version"}


def array_digest(values: Any) -> str:
    """sha256 of an array's dtype, shape and values (strings and objects by their text)."""
    x = np.asarray(values)
    h = hashlib.sha256(f"{x.dtype.str}{list(x.shape)}".encode())
    if x.dtype.kind in "OUS":
        h.update("\0".join(map(str, x.ravel().tolist())).encode())
    else:
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _attrs_digest(attrs: dict[str, Any]) -> str:
    kept = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in attrs.items() if k not in VOLATILE_ATTRS}
    return hashlib.sha256(canonical_json(kept).encode()).hexdigest()


def _drop_volatile(value: Any) -> Any:
    """JSON content less provenance keys at any depth (as :func:`mechflow.compare.compare_files` compares it)."""
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if k not in VOLATILE_ATTRS}
    return value


def file_digests(path: Path) -> dict[str, str]:
    """Array name -> digest for one result file (``@attrs``: its attributes; ``@content`` / ``@bytes``: non-array files)."""
    if path.suffix == ".nc":
        out = {}
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            for name in sorted(map(str, ds.variables)):
                out[name] = array_digest(ds[name].values)
                out[f"{name}{ATTRS}"] = _attrs_digest(dict(ds[name].attrs))
            out[ATTRS] = _attrs_digest(dict(ds.attrs))
        return out
    if path.suffix == ".safetensors":
        return {name: array_digest(t) for name, t in sorted(load_file(str(path)).items())}
    if path.suffix == ".json":
        content = _drop_volatile(json.loads(path.read_text(encoding="utf-8")))
        return {"@content": hashlib.sha256(canonical_json(content).encode()).hexdigest()}
    return {"@bytes": hashlib.sha256(path.read_bytes()).hexdigest()}


def provenance(path: Path) -> dict[str, str]:
    """The :data:`PROVENANCE` attributes a result file records (netCDF file and variable attrs, a cfg.json's
    ``mechflow`` block), as text."""
    found: dict[str, object] = {}
    if path.suffix == ".nc":
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            for attrs in [ds.attrs] + [ds[n].attrs for n in ds.variables]:
                found.update({k: v for k, v in attrs.items() if k in PROVENANCE and k not in found})
    elif path.suffix == ".json":
        content = json.loads(path.read_text(encoding="utf-8"))
        for block in (content, content.get("mechflow", {})) if isinstance(content, dict) else ():
            if isinstance(block, dict):
                found.update({k: v for k, v in block.items() if k in PROVENANCE and k not in found})
    return {k: str(v) for k, v in sorted(found.items())}


def provenances(root: str | Path) -> dict[str, dict[str, str]]:
    """Relative path -> :func:`provenance` for every result file under ``root``."""
    return {rel: provenance(Path(root) / rel) for rel in result_files(root)}


def result_files(root: str | Path) -> list[str]:
    """Every result file under a results root (relative POSIX paths, sorted): what :mod:`mechflow.compare` compares,
    less hidden bookkeeping files (``.mechflow-study``, Snakemake's ``.snakemake_timestamp``)."""
    root = Path(root)
    return sorted(rel for p in root.rglob("*") if p.is_file() and is_result(rel := p.relative_to(root).as_posix())
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def array_digests(root: str | Path) -> dict[str, dict[str, str]]:
    """Relative path -> :func:`file_digests` for every result file under ``root``."""
    return {rel: file_digests(Path(root) / rel) for rel in result_files(root)}


def model_digests(study: dict[str, Any], base_dir: str | Path = ".") -> dict[str, dict[str, str]]:
    """Model name -> its spec and the sha256 of every file it loads from (weights, config, tokenizer)."""
    out = {}
    for name, model in sorted(study["models"].items()):
        resolved = resolve_model(model["spec"], base_dir)
        out[name] = {"spec": model["spec"], "sha256": files_sha256(sorted(resolved.input_files))}
    return out


def data_digests(study: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Prompt set or corpus name -> sha256 of each file it is read from (by file name)."""
    out = {}
    for name in prompt_sets(study):
        out[name] = {Path(f).name: files_sha256([f]) for f in data_step.inputs(study, name)}
    for name in corpora(study):
        out[name] = {Path(f).name: files_sha256([f]) for f in corpus_step.inputs(study, name)}
    return dict(sorted(out.items()))


def installed_versions() -> dict[str, str]:
    """Every installed distribution (normalised name) -> version."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[name.lower().replace("_", "-")] = dist.version
    return dict(sorted(out.items()))


def package_code_digest() -> str:
    """Digest of every mechflow module's code and the data beside it (as the rules' ``code`` params)."""
    modules = ["mechflow." + ".".join(p.relative_to(PACKAGE_ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in sorted(PACKAGE_ROOT.rglob("*.py")) if "workflow_files" not in p.parts]
    return code_digest(*modules)
