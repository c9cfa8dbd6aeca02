"""No import cycles in ``engine/``: every import counts, including lazy ones inside functions and
``TYPE_CHECKING`` blocks, so a cycle cannot hide behind a deferred import.

The graph is built from the source (AST), not by importing: module → every first-party module it
names (``import engine.x``, ``from engine.x import y`` — ``engine.x.y`` when ``y`` is a submodule —, and
relative imports). A package's ``__init__`` re-exporting its submodules is an edge like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def module_files(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """``{dotted module name: (file, is_package)}`` for every ``.py`` under ``root/package``."""
    mods: dict[str, tuple[Path, bool]] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the first-party modules it imports anywhere in its body (lazy imports included)."""
    mods = module_files(root, package)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        here = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if a.name.split(".")[0] == package]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.split(".")[0] != package:
                    continue
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else resolve(name) for a in node.names]
            else:
                continue
            graph[mod].update(t for t in targets if t and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_engine_has_no_import_cycles() -> None:
    graph = import_graph(REPO, "engine")
    assert len(graph) > 50, "the engine package was not found"
    bad = cycles(graph)
    lines = [" <-> ".join(c) + "\n    " + "\n    ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c)
             for c in bad]
    assert not bad, ("import cycles in engine/ (move the shared code down into a module both can import):\n"
                     + "\n".join(lines))


def test_the_checker_sees_lazy_relative_and_package_cycles(tmp_path: Path) -> None:
    """The checker itself: a cycle through a lazy import, one through a relative import and one
    through a package ``__init__`` are all found; an acyclic chain is not reported."""
    pkg = tmp_path / "engine"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from engine.b import g\n",           # lazy
        "b.py": "from engine import a\n",
        "c.py": "from . import d\n",                                   # relative
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine.c import x\n",
        "sub/__init__.py": "from engine.sub.leaf import y\n",         # package re-export
        "sub/leaf.py": "from engine.sub import z\n",
        "e.py": "import engine.f\n",                                   # no cycle: e -> f -> a
        "f.py": "import os\nfrom engine.a import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    found = cycles(import_graph(tmp_path, "engine"))
    assert sorted(found) == [["engine.a", "engine.b"], ["engine.c", "engine.d"], ["engine.sub", "engine.sub.leaf"]]
