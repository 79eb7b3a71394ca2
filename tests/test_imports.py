"""The package's modules import each other in one direction: a walk over every import (lazy ones inside functions
included, ``if TYPE_CHECKING:`` blocks excluded) finds no cycle, so any module can be imported first."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "canon_pl"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports: ``from a.b import c`` is ``a.b.c`` where that is a module, else ``a.b``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(target: str) -> str:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target

    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(known(alias.name) for alias in node.names if alias.name.startswith("canon_pl"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("canon_pl"):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else known(base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {name, ""}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return found


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    paths = list(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, modules) for p in paths}
    assert graph["canon_pl.io.load"] >= {"canon_pl.io.export", "canon_pl.io.family"}  # the walk sees the imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_lazy_import_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


FLOORS: tuple[tuple[str, ...], ...] = (
    ("canon_pl.errors", "canon_pl.version", "canon_pl.paper", "canon_pl.lazy", "canon_pl.checks", "canon_pl.distributed"),
    ("canon_pl.io.atomic", "canon_pl.io.validate", "canon_pl.io.document", "canon_pl.io.lock", "canon_pl.io.layout"),
    ("canon_pl.sae", "canon_pl.lm", "canon_pl.data"),
    ("canon_pl.io", "canon_pl.metrics"),
    ("canon_pl.meta", "canon_pl.stitching", "canon_pl.stats"),
    ("canon_pl.training",),
    ("canon_pl.study", "canon_pl.calibration", "canon_pl.viewer"),
    ("canon_pl.commands", "canon_pl.study.stages", "canon_pl.cli", "canon_pl.cli.lightning", "canon_pl"),
)
"""The package's floors, lowest first (docs/design.md, "Floors"): a module imports only from its own floor or below.
A module's floor is that of the longest prefix listed (``canon_pl.io.atomic`` sits below the rest of ``canon_pl.io``;
``canon_pl.study.stages``, which runs the commands, sits with them)."""


def floor_of(module: str) -> int:
    """The floor of ``module``: that of the longest prefix in :data:`FLOORS` (a ``KeyError`` for an unplaced one)."""
    best: tuple[int, int] | None = None
    for floor, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), floor)
    if best is None:
        raise KeyError(f"{module} is on no floor: add its package to FLOORS")
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of a module ``b`` on a higher floor than ``a``'s."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if floor_of(b) > floor_of(a))


def test_no_module_imports_from_a_higher_floor() -> None:
    """Cores below, the study above them, entry points on top: a lower floor never reaches up (lazy imports too)."""
    paths = list(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, modules) for p in paths}
    assert upward_imports(graph) == []


def test_the_floor_walk_finds_an_import_from_a_higher_floor() -> None:
    graph = {"canon_pl.io.atomic": {"canon_pl.errors"}, "canon_pl.stitching.path": {"canon_pl.study.report"},
             "canon_pl.study.report": {"canon_pl.stitching.path"}}
    assert upward_imports(graph) == ["canon_pl.stitching.path -> canon_pl.study.report"]
    assert floor_of("canon_pl.io.atomic") < floor_of("canon_pl.io.load") < floor_of("canon_pl.study.report")
    assert floor_of("canon_pl.study.stages") == floor_of("canon_pl.commands.pipeline")


MAX_FUNCTION_LINES = 80


def test_no_function_of_the_package_or_the_viewer_is_longer_than_80_lines() -> None:
    """A function that grows past a screen gets split into named steps (docs/design.md, "Floors")."""
    long = []
    for root in (PACKAGE, PACKAGE.parent / "apps"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
