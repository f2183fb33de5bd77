"""No import circles in `wikigpt_core` or `wikigpt_pipeline`.

Every import statement counts, wherever it stands: at module level, and also inside functions
(the lazy imports that keep torch or SkyPilot out of a light import). A lazy import still makes
the two modules depend on each other, and a circle among them breaks as soon as one import is
moved to the top. Only imports under `if TYPE_CHECKING:` are left out: they never run. Importing
a submodule is not counted as importing its package's `__init__`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wikigpt_core", "wikigpt_pipeline")


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, outside `if TYPE_CHECKING:` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking(child))


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports (`from pkg import sub` counts as importing `pkg.sub`)."""
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        source = _absolute(node, module, path.name == "__init__.py")
        for alias in node.names:
            found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str], on_path: set[str]) -> list[str] | None:
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                cycle = visit(nxt, path + [nxt], on_path | {nxt})
                if cycle:
                    return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start, [start], {start})
            if cycle:
                return cycle
    return None


def test_the_walk_sees_the_project_and_its_lazy_imports():
    graph = import_graph()
    assert {"wikigpt_core.config", "wikigpt_pipeline.factory", "wikigpt_core.llm.client"} <= set(graph)
    assert "wikigpt_core.artifacts" in graph["wikigpt_core.config"]  # a module-level import
    assert "wikigpt_core.run" in graph["wikigpt_pipeline.factory"]  # imported inside run_stage


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"b", "a"}}, ["a", "b", "a"]),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, (f"import circle: {' -> '.join(cycle)}. Move what both sides need into a "
                           "module that neither imports, or import it from where it is defined.")
