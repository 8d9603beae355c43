"""Imports point one way: the layers contract in pyproject.toml ([tool.importlinter]) is kept, and no module
imports itself round a circle, imports inside functions and under TYPE_CHECKING included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

REPO = Path(__file__).resolve().parents[1]


def test_lint_imports_keeps_the_contracts():
    """``lint-imports`` (import-linter, the ``test`` extra) exits 0: every contract kept."""
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.exists(), f"{lint} missing: pip install -e '.[test]' (import-linter)"
    out = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 broken" in out.stdout, out.stdout


def _import_graph() -> tuple[nx.DiGraph, grimp.ImportGraph]:
    """Every import between mechflow's modules (grimp reads them all, inside functions too), plus, for each
    package whose ``__init__`` re-exports from its submodules (by import or lazily, mechflow.lazy), an edge
    to each of its descendants: a submodule that imports from such a package's ``__init__`` closes a circle."""
    graph = grimp.build_graph("mechflow", include_external_packages=False, cache_dir=None)
    edges = nx.DiGraph()
    for module in graph.modules:
        edges.add_node(module)
        for imported in graph.find_modules_directly_imported_by(module):
            edges.add_edge(module, imported)
    for package in graph.modules:
        init = REPO.joinpath(*package.split(".")) / "__init__.py"
        if not init.exists():
            continue
        descendants = graph.find_descendants(package)
        imports_own = any(m in descendants for m in graph.find_modules_directly_imported_by(package))
        source = init.read_text(encoding="utf-8")
        if imports_own or "lazy_exports(" in source or "import_module(" in source:
            for module in descendants:
                if not edges.has_edge(package, module):
                    edges.add_edge(package, module, reexport=True)
    return edges, graph


def _describe(component: set[str], edges: nx.DiGraph, graph: grimp.ImportGraph) -> str:
    lines = [" <-> ".join(sorted(component))]
    for a, b in sorted(edges.subgraph(component).edges):
        if edges.edges[a, b].get("reexport"):
            where = "re-exports it"
        else:
            where = ", ".join(f"l.{d['line_number']}" for d in graph.get_import_details(importer=a, imported=b))
        lines.append(f"    {a} -> {b} ({where})")
    return "\n".join(lines)


def test_no_import_circles():
    edges, graph = _import_graph()
    assert "mechflow.steps" in edges and "mechflow.io" in edges  # the graph is mechflow's
    circles = [c for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert not circles, "modules that import each other (strongly connected components):\n" + "\n".join(
        _describe(c, edges, graph) for c in sorted(circles, key=sorted))
