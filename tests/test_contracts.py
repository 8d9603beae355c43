"""One home for contracts: code digests from a step's imports, the README's config reference, shared constants."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mechflow.config import config_reference, load_schema
from mechflow.contracts import RESULT_PATHS, result_path
from mechflow.workflow import PACKAGE_ROOT, imported_modules, module_digest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_code_digest_covers_every_module_a_script_loads(script):
    """Run a script's imports in a fresh interpreter: every mechflow module loaded is in its digest."""
    tree = ast.parse(script.read_text())
    imports = "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    code = f"import sys\n{imports}\nprint(sorted(m for m in sys.modules if m == 'mechflow' or m.startswith('mechflow.')))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       cwd=REPO).stdout.strip().replace("'", '"'))
    static = set(imported_modules(script))
    assert set(loaded) <= static, sorted(set(loaded) - static)
    assert "mechflow.workflow" in static


def test_module_digest_ignores_docstrings_and_comments_not_code(tmp_path):
    base = 'def f(x):\n    """Twice x."""\n    return 2 * x  # double\n'
    paths = {}
    for name, text in {"a": base, "b": base.replace("Twice x.", "Doubles.").replace("# double", "# times two"),
                       "c": base.replace("2 * x", "3 * x")}.items():
        paths[name] = tmp_path / f"{name}.py"
        paths[name].write_text(text)
    assert module_digest(paths["a"]) == module_digest(paths["b"])
    assert module_digest(paths["a"]) != module_digest(paths["c"])


def test_readme_config_reference_is_generated_from_the_schema():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", readme, re.S)
    assert block, "README.md lacks the generated config reference block"
    assert block.group(1) == config_reference(load_schema(REPO / "config.schema.yaml")), \
        "README's config reference is stale: run `.venv/bin/mechflow config --reference --write-readme`"


def test_library_and_workflow_defaults_agree():
    from mechflow.probes import DEFAULT_ALPHAS

    schema = load_schema(REPO / "config.schema.yaml")
    assert schema["properties"]["probes"]["properties"]["alphas"]["default"] == DEFAULT_ALPHAS.tolist()
    assert np.all(np.diff(DEFAULT_ALPHAS) > 0)


def _code_strings(path: Path) -> list[str]:
    """String literals of a file's code (docstrings and comments left out)."""
    text = path.read_text()
    if path.suffix == ".smk":
        text = re.sub(r'"""(.*?)"""', "", text, flags=re.S)
        return re.findall(r'"([^"\n]*)"', "\n".join(line.split("#", 1)[0] for line in text.splitlines()))
    tree = ast.parse(text)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_result_paths_have_one_home():
    """No rule, script or module spells a results path itself: they come from mechflow.contracts."""
    offenders = []
    for path in [*REPO.joinpath("rules").glob("*.smk"), *SCRIPTS, *PACKAGE_ROOT.rglob("*.py")]:
        if path.name == "contracts.py":
            continue
        for text in _code_strings(path):
            offenders += [f"{path.relative_to(REPO)}: {text!r}" for rel in RESULT_PATHS.values()
                          if "/" in rel and rel.split("{")[0] and rel in text]
            if text.startswith("results/"):
                offenders.append(f"{path.relative_to(REPO)}: {text!r}")
    assert not offenders, offenders
    assert result_path("moran", "out", dataset="d", model="m", hook="resid", layer=3, source="units") == \
        "out/spatial/d/m/resid/layer3/units/moran.nc"
    assert result_path("sae_dir", layer=2) == "results/sae/{dataset}/{model}/{hook}/layer2/{run}"


def test_is_main_leaves_out_control_models_and_name_only_sets():
    from mechflow.contracts import is_main

    config = {"models": {"m": {"spec": "x"}, "m-random": {"spec": "x", "random_init": True}},
              "datasets": {"d": {"template": "{name}, {admin1_name}"}, "d-name": {"template": " {name} "}}}
    assert is_main(config, "d", "m")
    assert not is_main(config, "d", "m-random") and not is_main(config, "d-name", "m")
