"""What resolving a study imports: no torch. Lazy re-exports of the packages that keep it so."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the study core and the modules a study's resolution and checks use (mechflow.lens.unembed is not here: it is
#: the torch side of the lens; its LensError lives in mechflow.lens.errors)
STUDY_MODULES = [
    "mechflow.study", "mechflow.config", "mechflow.facts", "mechflow.resolve", "mechflow.steps.manifest",
    "mechflow.sae.config", "mechflow.sae.configs", "mechflow.snmf.config", "mechflow.runconfig", "mechflow.run_schemas",
    "mechflow.models", "mechflow.data.prompts", "mechflow.data.regions", "mechflow.lens.errors", "mechflow.lens.words",
    "mechflow.lens.latent_language", "mechflow.steering.prompts", "mechflow.selection.data", "mechflow.io",
]
#: what they do with them: validate runs, generate the schema, use the packages' lazy names
STUDY_CALLS = """
import mechflow.sae.config as sae_config, mechflow.snmf.config as snmf_config
from mechflow.run_schemas import generated_entries
from mechflow.sae import CONFIGS, SAERunConfig, run_schema, validate_run
from mechflow.snmf import SNMFError, validate_run as validate_snmf_run
from mechflow.lens import LensError
for arch in CONFIGS:
    validate_run({"arch": arch})
validate_snmf_run({"n_factors": 2})
generated_entries()
"""
#: packages whose names are re-exported lazily (PEP 562), so that importing them loads no submodule
LAZY_PACKAGES = ["mechflow.sae", "mechflow.snmf", "mechflow.lens", "mechflow.steering", "mechflow.selection"]


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; its last line prints a JSON value, returned."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_resolving_a_study_loads_no_torch():
    code = "\n".join([f"import {m}" for m in STUDY_MODULES] + [STUDY_CALLS]) + (
        "\nimport json, sys\nprint(json.dumps(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules)))")
    assert _fresh(code) == []


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_package_exports_every_name_from_its_submodule(package):
    """Importing the package loads none of its submodules; each name in ``__all__`` is its submodule's object."""
    code = (f"import json, sys\nimport {package}\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith('{package}.'))))")
    assert _fresh(code) == []
    pkg = importlib.import_module(package)
    assert sorted(pkg.__all__) == sorted(pkg._EXPORTS)
    assert set(pkg.__all__) <= set(dir(pkg))
    for name, sub in pkg._EXPORTS.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(f"{package}.{sub}"), name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


def test_sae_train_stays_the_function_when_its_submodule_is_imported_first():
    code = ("import json\nimport mechflow.sae.train\nfrom mechflow.sae import train\nimport mechflow.sae as sae\n"
            "print(json.dumps([callable(train), train is sae.train, type(sae.train).__name__]))")
    assert _fresh(code) == [True, True, "function"]


def test_sae_models_and_run_configs_name_the_same_architectures():
    """One config (mechflow.sae.configs, no torch) and one model (mechflow.sae.archs) per architecture, same order."""
    from mechflow.sae.archs import ARCHITECTURES, REGISTRY
    from mechflow.sae.configs import CONFIGS

    assert list(ARCHITECTURES) == list(CONFIGS) == list(REGISTRY)
    for arch, (model, config) in REGISTRY.items():
        assert config is CONFIGS[arch] is model.config_cls
        assert config.__dataclass_fields__["arch"].default == model.arch == arch


@pytest.mark.parametrize("script", sorted((REPO / "scripts").glob("*.py")), ids=lambda p: p.stem)
def test_scripts_import_lazy_names_from_their_submodules(script):
    """A rule script's code digest follows its import statements; a name a package re-exports lazily (or the
    package itself, used as ``pkg.name``) would hide the submodule that defines it, so scripts import submodules."""
    lazy = {p: importlib.import_module(p)._EXPORTS for p in LAZY_PACKAGES}
    found = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in lazy:
            found += [f"{node.module}.{a.name}" for a in node.names if a.name in lazy[node.module]]
        if isinstance(node, ast.ImportFrom) and node.module == "mechflow":
            found += [f"mechflow.{a.name}" for a in node.names if f"mechflow.{a.name}" in lazy]
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in lazy]
    assert not found, f"{script.name} imports {found} through a lazy package; import from the submodule"
