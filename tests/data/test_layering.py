"""data/ imports flow one way (no module of resnetlab.data imports, even lazily inside a function, a
module that imports it back). Read from the source with `ast`, not by importing."""

import ast
from pathlib import Path

import resnetlab.data

DATA = Path(resnetlab.data.__file__).parent


def imports_of(path: Path) -> set[str]:
    """Every resnetlab.data.X module that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resnetlab.data."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("resnetlab.data.")}
    return found


def test_data_modules_form_no_cycle():
    graph = {p.stem: imports_of(p) for p in DATA.glob("*.py") if p.stem != "__init__"}
    assert graph["dali"] and graph["device_decode"]  # the scan reads the modules it is about

    def visit(node: str, path: tuple[str, ...]) -> None:
        for nxt in graph.get(node, ()):
            assert nxt not in path, f"import cycle: {' -> '.join((*path, nxt))}"
            visit(nxt, (*path, nxt))

    for module in graph:
        visit(module, (module,))


def test_shared_image_helpers_sit_below_the_sources():
    graph = {p.stem: imports_of(p) for p in DATA.glob("*.py")}
    for source in ("imagenet", "dali", "device_decode"):
        assert "images" in graph[source]
    assert not graph["images"] & {"imagenet", "dali", "device_decode"}
