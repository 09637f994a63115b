"""The import graph of gfm_jax is a DAG, counting imports inside functions too.

A lazy import inside a function hides a cycle from Python at import time but not from the
design: the two modules still need each other. The graph is read from the source with `ast`,
so nothing is imported to build it.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = "gfm_jax"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE


def _module_files() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the package (packages by __init__)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules one import statement brings in."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    out = set()
    for alias in node.names:
        name = f"{base}.{alias.name}"
        if name in modules:  # `from gfm_jax.data import fasta`: the module fasta
            out.add(name)
        elif base in modules:  # `from gfm_jax.data.fasta import BASES`: the module itself
            out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source."""
    files = _module_files()
    modules = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(tree):
            edges |= _imported(node, module, is_package, modules)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_sees_imports_inside_functions():
    graph = import_graph()
    # Sanity of the parser on known edges: a module-level `from x import module`, and the
    # training entry point's import inside a function.
    assert "gfm_jax.data.fasta" in graph["gfm_jax.data.tokenizers"]
    assert "gfm_jax.train.loop" in graph["gfm_jax.train.__main__"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_evaluate_does_not_import_the_training_loop():
    graph = import_graph()
    evaluate = [
        m for m in graph if m == f"{PACKAGE}.evaluate" or m.startswith(f"{PACKAGE}.evaluate.")
    ]
    assert f"{PACKAGE}.evaluate.perplexity" in evaluate
    offenders = sorted(m for m in evaluate if f"{PACKAGE}.train.loop" in graph[m])
    assert not offenders, f"these import {PACKAGE}.train.loop: {offenders}"
