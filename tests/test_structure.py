"""The package's structure: every module imports, and no two modules import each other,
neither at the top nor through an import hidden inside a function."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import polymodal

SRC = Path(polymodal.__file__).parent


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of polymodal."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ("polymodal",) + path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The polymodal modules that `name` imports anywhere in its file, inside functions included,
    each with the packages that importing it runs (a.b.c runs a and a.b). A module's own parent
    packages are left out: they are always initialised before it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            parent = ".".join(base + ([node.module] if node.module else []))
            targets.update(f"{parent}.{a.name}" if f"{parent}.{a.name}" in modules else parent for a in node.names)
    out = set()
    for target in targets:
        parts = target.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in out if m in modules and m != name and not name.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_the_import_graph_is_read_right():
    graph = import_graph()
    assert "polymodal.models.checkpoint" in graph["polymodal.backends"]  # inside a function
    assert {"polymodal.config", "polymodal.models.aligned"} <= graph["polymodal.models.checkpoint"]  # relative
    assert "polymodal.models" not in graph["polymodal.models.checkpoint"]  # its own package runs first
    assert "polymodal.index.pipeline" in graph["polymodal.index"]


def test_no_import_cycles_even_inside_functions():
    """An import moved into a function to dodge a cycle is still a cycle: the two modules depend
    on each other, and which one may import first depends on who asked."""
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(reversed(err.args[1]))}") from None
