"""The package layering that docs/architecture.md states: lower packages never import higher ones, and the
module import graph has no cycles. Every ``import`` counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import autoprune

ROOT = Path(autoprune.__file__).parent

# package -> the packages above it, which it must never import
FORBIDDEN = {
    "zoo": {"trials", "search", "run", "finetune", "export", "bench", "cli"},
    "core": {"trials", "search", "run", "finetune", "export", "bench", "cli"},
    "trials": {"search", "run", "finetune", "export", "bench", "cli"},
    "search": {"run", "bench", "cli"},
    "run": {"bench", "cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The autoprune modules ``path`` imports (``from autoprune.x import y`` names ``autoprune.x.y`` when that is a
    module, else ``autoprune.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "autoprune"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "autoprune":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}
GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


@pytest.mark.parametrize("lower", sorted(FORBIDDEN))
def test_lower_packages_never_import_higher_ones(lower: str) -> None:
    bad = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() if package(m) == lower
                 for t in targets if package(t) in FORBIDDEN[lower])
    assert not bad, "\n".join(bad)


def test_the_module_import_graph_has_no_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target == "autoprune" or target not in GRAPH:
                continue  # the package's lazy re-exports import nothing at import time
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert len(state) == len(GRAPH) > 50
