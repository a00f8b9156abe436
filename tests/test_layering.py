"""Imports point one way: cli -> train / evaluate / analysis / runner -> data / models. Read from the
source with `ast` (every import, also one inside a function), not by importing."""

from __future__ import annotations

import ast
from pathlib import Path

import resnetlab

SRC = Path(resnetlab.__file__).parent


def imported(path: Path) -> set[str]:
    """The resnetlab modules `path` imports, by absolute name: `import a.b`, `from a.b import c` (as
    a.b and a.b.c), relative imports resolved, and `import_module` / `__import__` / `run_module` of a
    constant name."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in ("import_module", "__import__", "run_module") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return {m for m in found if m == "resnetlab" or m.startswith("resnetlab.")}


def layer_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def sources(*, outside: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Every module under src/resnetlab (by path relative to it) and what it imports."""
    return {
        str(p.relative_to(SRC)): imported(p)
        for p in sorted(SRC.rglob("*.py"))
        if not str(p.relative_to(SRC)).startswith(outside)
    }


def test_the_scan_sees_imports_of_the_cli():
    # __main__ (`python -m resnetlab`) is the one module outside cli/ that must import it.
    assert "resnetlab.cli" in imported(SRC / "__main__.py")


def test_nothing_below_the_cli_imports_it():
    found = {
        path: sorted(m for m in mods if layer_of(m) == "cli")
        for path, mods in sources(outside=("cli/", "__main__.py")).items()
    }
    assert {path: mods for path, mods in found.items() if mods} == {}


def test_the_runner_and_the_analyses_do_not_import_each_other():
    # The runner trains grids; analysis/ reads finished runs (the report too): neither needs the other.
    # analysis/worker.py is only the worker's old name, forwarding to the runner's.
    mods = sources(outside=("analysis/worker.py",))
    runner = {
        p: sorted(m for m in ms if layer_of(m) == "analysis") for p, ms in mods.items() if p.startswith("runner/")
    }
    analysis = {
        p: sorted(m for m in ms if layer_of(m) == "runner") for p, ms in mods.items() if p.startswith("analysis/")
    }
    assert len(runner) >= 5 and len(analysis) >= 5  # the scan reads the packages it is about
    assert {p: m for p, m in runner.items() if m} == {} and {p: m for p, m in analysis.items() if m} == {}
