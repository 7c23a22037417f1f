"""The layering the README describes, checked on the source: no import cycles, and
``agent_runtime`` never imports ``supervisor``.

Imports inside ``if TYPE_CHECKING:`` are not followed (they never run), nor are
imports inside functions (the deliberate lazy ones that keep ADK out of the CLI).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent_runtime", "supervisor")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _top_level_imports(path: Path) -> set[str]:
    module = _module_name(path)
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:  # module level only: function bodies import lazily on purpose
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node):
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, path.name == "__init__.py", child)
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in child.names)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                break
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {
        name: {dep for dep in _top_level_imports(path) if dep in modules and dep != name}
        for name, path in modules.items()
    }


def test_agent_runtime_never_imports_supervisor() -> None:
    for name, deps in _graph().items():
        if name.startswith("agent_runtime"):
            assert not [d for d in deps if d.startswith("supervisor")], name


def test_no_import_cycles() -> None:
    graph = _graph()
    # A package imports its own submodules to re-export them; only the reverse is a cycle.
    edges = {
        name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph.items()
    }
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        path.append(node)
        for dep in sorted(edges[node]):
            visit(dep)
        path.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)
