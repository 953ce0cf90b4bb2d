"""The layout's contracts, checked on the source: no import cycles, few modules at the top, and no
knowledge of particular methods outside ``autoprune/search/``."""

from __future__ import annotations

import ast
from pathlib import Path

import autoprune
from autoprune.search import SEARCHERS

PACKAGE = Path(autoprune.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The autoprune modules ``path`` imports (annotation-only imports under TYPE_CHECKING included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoprune"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("autoprune"))
    return {m for m in found if m in modules}


def test_import_graph_has_no_cycles():
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(name):], name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_top_of_the_package_stays_small():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 14, top


def test_no_module_outside_search_names_a_method_or_tests_a_searcher_class():
    methods = set(SEARCHERS)
    classes = {cls.__name__ for cls in SEARCHERS.values()} | {"RLSearcher"}
    offences = []
    for path in PACKAGE.rglob("*.py"):
        if (PACKAGE / "search") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    names = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    if any(isinstance(n, ast.Constant) and n.value in methods for n in names):
                        offences.append(f"{path.name}:{node.lineno} compares a method name")
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "issubclass"):
                if any(isinstance(n, ast.Name) and n.id in classes for n in ast.walk(node.args[1])):
                    offences.append(f"{path.name}:{node.lineno} tests a searcher class")
            if isinstance(node, ast.Name) and node.id in classes:
                offences.append(f"{path.name}:{node.lineno} names {node.id}")
    assert not offences, offences
