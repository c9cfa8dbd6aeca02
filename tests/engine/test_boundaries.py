"""Layer boundaries, checked on the source (AST), so a violation fails here before it ships:

- ``pages/`` (and the home page ``app.py``) import only ``ui``, ``streamlit`` and the standard
  library — no engine, torch, pydicom or tifffile: pages are thin;
- ``ui/`` never imports torch (nor torchvision, timm, segmentation_models_pytorch) at module
  level, directly or through the engine modules it imports at module level (importing a page
  must stay fast; torch loads inside the functions that predict or train);
- ``engine/`` never imports streamlit, anywhere (the engine is usable from scripts and the CLI).

The import graph is followed statically; one subprocess also imports every ``ui`` module and
checks that torch really did not load.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TORCH_FAMILY = {"torch", "torchvision", "timm", "segmentation_models_pytorch"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _imports(tree: ast.AST, module: str = "") -> list[tuple[str, int]]:
    """Absolute dotted names imported anywhere in ``tree`` (``from x import y`` gives ``x.y`` and ``x``)."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        out += _import_names(node, module)
    return out


def _import_names(node: ast.AST, module: str) -> list[tuple[str, int]]:
    if isinstance(node, ast.Import):
        return [(a.name, node.lineno) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against the importing module's package
            pkg = module.split(".")[: -node.level] if module else []
            base = ".".join(pkg + ([base] if base else []))
        return [(base, node.lineno)] + [(f"{base}.{a.name}", node.lineno) for a in node.names if a.name != "*"]
    return []


def _module_level_imports(tree: ast.Module, module: str) -> list[tuple[str, int]]:
    """Imports executed when the module is imported: top level, including inside top-level
    ``if``/``try``/``with`` blocks, but not inside functions or classes (nor ``if TYPE_CHECKING``)."""
    out: list[tuple[str, int]] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(s, ast.If) and "TYPE_CHECKING" in ast.unparse(s.test):
                visit(s.orelse)
                continue
            out.extend(_import_names(s, module))
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(s, field, None)
                if isinstance(sub, list):
                    visit([x for x in sub if isinstance(x, ast.stmt)] +
                          [y for h in sub if isinstance(h, ast.ExceptHandler) for y in h.body])

    visit(tree.body)
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolver(module: str, path: Path) -> str:
    """The name relative imports resolve against (a package's ``__init__`` is inside the package)."""
    return module + ".__init__" if path.name == "__init__.py" else module


def _source_of(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _py_files(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _top(name: str) -> str:
    return name.split(".")[0]


# ------------------------------------------------------------------------------------------ pages

@pytest.mark.parametrize("path", _py_files("pages") + [REPO / "app.py"], ids=lambda p: p.name)
def test_pages_import_only_ui_streamlit_and_stdlib(path: Path) -> None:
    bad = [(name, line) for name, line in _imports(ast.parse(path.read_text()))
           if _top(name) not in STDLIB | {"ui", "streamlit"}]
    assert not bad, (f"{path.relative_to(REPO)} imports {bad}: pages are thin — put the work in engine and "
                     "call it through a ui module")


# ------------------------------------------------------------------------------------------ ui

def _torch_chains(start: str) -> list[list[str]]:
    """Chains of module-level imports from ``start`` that reach the torch family (first-party
    modules are followed through their source; a package import also runs its ``__init__``)."""
    found: list[list[str]] = []
    seen: set[str] = set()
    stack: list[list[str]] = [[start]]
    while stack:
        chain = stack.pop()
        mod = chain[-1]
        if mod in seen:
            continue
        seen.add(mod)
        src = _source_of(mod)
        if src is None:
            continue
        names = [n for n, _ in _module_level_imports(ast.parse(src.read_text()), _resolver(mod, src))]
        for name in names:
            if _top(name) in TORCH_FAMILY:
                found.append(chain + [name])
                continue
            if _top(name) not in ("engine", "ui"):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                sub = ".".join(parts[:i])
                if sub not in seen and _source_of(sub) is not None:
                    stack.append(chain + [sub])
    return found


@pytest.mark.parametrize("path", _py_files("ui"), ids=lambda p: p.name)
def test_ui_never_imports_torch_at_module_level(path: Path) -> None:
    chains = _torch_chains(_module_name(path))
    assert not chains, ("importing " + _module_name(path) + " loads torch: "
                        + "; ".join(" -> ".join(c) for c in chains[:3])
                        + " — import it inside the function that needs it")


def test_importing_every_ui_module_leaves_torch_unloaded() -> None:
    mods = [_module_name(p) for p in _py_files("ui")]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            f"print(sorted(t for t in {sorted(TORCH_FAMILY)!r} if t in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


# ------------------------------------------------------------------------------------------ engine

def test_engine_never_imports_streamlit() -> None:
    bad = []
    for path in _py_files("engine"):
        mod = _resolver(_module_name(path), path)
        bad += [f"{path.relative_to(REPO)}:{line} {name}" for name, line in _imports(ast.parse(path.read_text()), mod)
                if _top(name) == "streamlit"]
    assert not bad, "engine must never import streamlit: " + ", ".join(bad)


# ------------------------------------------------------------------------------------------ the checks themselves

def test_the_scans_catch_violations(tmp_path: Path) -> None:
    """The AST helpers see imports in every form a violation could take."""
    src = ("import os\nfrom ui import state\n"
           "def f():\n    import torch\n    from engine.io import read_mask\n"
           "try:\n    import streamlit.components.v1 as c\nexcept ImportError:\n    pass\n"
           "if True:\n    from torch import nn\n"
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torchvision\n")
    tree = ast.parse(src)
    every = {n for n, _ in _imports(tree)}
    assert {"torch", "engine.io", "streamlit.components.v1", "torchvision", "ui.state"} <= every
    top = {n for n, _ in _module_level_imports(tree, "ui.x")}
    assert "torch" in top and "streamlit.components.v1" in top       # if/try blocks run at import
    assert "engine.io" not in top and "torchvision" not in top        # function body, TYPE_CHECKING
    rel = {n for n, _ in _imports(ast.parse("from .queue import build_queue\nfrom .. import metrics\n"),
                                  "engine.curation.cleaning")}
    assert {"engine.curation.queue", "engine.metrics"} <= rel
    # a real chain through first-party modules is found
    assert _torch_chains("engine.training") or _torch_chains("engine.models"), \
        "engine.training/engine.models import torch at module level, the chain walker must see it"
