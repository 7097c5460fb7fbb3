"""The layers import downwards only: no import circle among the modules of ``agents`` and ``diffusion_gym``,
counting every import statement (lazy ones inside functions and ``TYPE_CHECKING`` ones included), and the
generic registries import no world (worlds register themselves; :mod:`diffusion_gym.registrations` lists the
built-in ones by module name)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from _scripts import REPO

PACKAGES = ("agents", "diffusion_gym")


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imported_modules(name: str, path: Path, files: dict[str, Path]) -> set[str]:
    """The package modules that ``name``'s import statements name (``from a import b``: ``a.b`` if a module)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in files:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
                break
    return targets


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return circles


def package_graph() -> dict[str, set[str]]:
    files = module_files()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        graph[name] |= imported_modules(name, path, files)
    return graph


def test_the_circle_finder_finds_a_circle():
    assert import_circles(defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]


def test_there_is_no_import_circle():
    assert import_circles(package_graph()) == []


def test_the_generic_registries_import_no_world():
    graph = package_graph()
    for generic in ("diffusion_gym.prompts", "diffusion_gym.rewards", "diffusion_gym.rewards.registry",
                    "diffusion_gym.tasks", "diffusion_gym.core", "agents.reevaluation"):  # fmt: skip
        assert not [m for m in graph[generic] if m.startswith("diffusion_gym.shapes")], generic
