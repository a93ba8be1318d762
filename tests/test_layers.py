"""The package's architecture as its folders draw it: each layer is a folder of inspector/ (docs/DESIGN.md's
```layers block orders them, the lowest last), a module's layer is its folder's, every import (lazy ones too)
points down the layers or stays within one, no module imports in a circle, and no module lies outside a layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "inspector"
TOP_LEVEL = {"__init__": "base", "__main__": "cli"}  # the package's own two files, outside any folder


def layer_order() -> list[str]:
    """The layers' folders, lowest first, from docs/DESIGN.md's ```layers block (`name: what it holds`)."""
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/DESIGN.md has no ```layers block"
    return [line.split(":", 1)[0].strip() for line in block.group(1).strip().splitlines()][::-1]


def layer_of(module: str, order: list[str]) -> str | None:
    folder = TOP_LEVEL.get(module) or module.split(".")[0]
    return folder if folder in order and (module in TOP_LEVEL or "." in module or (PACKAGE / folder).is_dir()) else None


def layers() -> dict[str, tuple[int, str]]:
    """module (relative to inspector, e.g. 'cli.station') -> (its layer, 0 the lowest; the layer's folder)."""
    order = layer_order()
    return {m: (order.index(label), label) for m in modules() if (label := layer_of(m, order))}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[-3:-1] == ("migrations", "versions"):
            continue  # Alembic loads revisions as files
        name = ".".join(rel.parts)
        found["__init__" if name == "__init__" else name.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The inspector modules a file imports anywhere in it (`import inspector` itself counts as __init__)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "inspector":
                targets = [a.name for a in node.names if a.name in known] or ["__init__"]
            elif node.module.startswith("inspector."):
                base = node.module.removeprefix("inspector.")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
        elif isinstance(node, ast.Import):
            targets = [a.name.removeprefix("inspector.") for a in node.names if a.name.startswith("inspector.")]
        else:
            continue
        out |= {t for t in targets if t in known}
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_lies_in_a_layer_folder():
    order = layer_order()
    outside = sorted(m for m in modules() if layer_of(m, order) is None)
    assert outside == [], "move these modules into a layer's folder (docs/DESIGN.md's layers block names them)"
    assert sorted(f for f in order if not (PACKAGE / f).is_dir()) == [], "the layers block names a missing folder"


def test_every_layer_folder_says_what_it_owns():
    """Each layer's __init__.py opens with a docstring: what the layer holds and what it may import."""
    for folder in layer_order():
        tree = ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8"))
        doc = ast.get_docstring(tree) or ""
        assert len(doc.split()) >= 20 and "import" in doc.lower(), f"inspector/{folder}/__init__.py: say what it owns"


def test_imports_never_point_up_a_layer():
    layer = layers()
    upward = sorted(f"{m} ({layer[m][1]}) imports {t} ({layer[t][1]})"
                    for m, targets in graph().items() for t in targets if layer[t][0] > layer[m][0])
    assert upward == []


def test_no_import_circle():
    edges = graph()
    color: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        color[node] = 1
        for nxt in sorted(edges[node]):
            if color.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in color:
                visit(nxt, path + [nxt])
        color[node] = 2

    for start in sorted(edges):
        if start not in color:
            visit(start, [start])
    assert circles == []


def test_the_checks_can_fail(tmp_path):
    """The import reader sees lazy and package-level imports (so an upward one could not hide)."""
    src = tmp_path / "mod.py"
    src.write_text("import os\nfrom inspector.data import metrics\n\ndef f():\n    from inspector.cli.station import x\n"
                   "    import inspector.station.daemon\n")
    known = {"data", "data.metrics", "cli.station", "station.daemon", "cli"}
    assert imports_of(src, known) == {"data.metrics", "cli.station", "station.daemon"}
    order = ["base", "data", "station", "cli"]
    assert layer_of("data.metrics", order) == "data" and layer_of("metrics", order) is None  # a flat module has none


def test_design_shows_the_tree_as_it_is():
    """docs/DESIGN.md's "The tree" lists each layer folder's modules: none missing, none that is gone."""
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    block = re.search(r"## The tree\n.*?```\n(.*?)```", text, re.S)
    assert block, "docs/DESIGN.md has no tree block under '## The tree'"
    shown = {f"{folder.rstrip('/')}.{name.replace('/', '.')}" for line in block.group(1).strip().splitlines()
             for folder, *names in [line.split()] for name in names}
    actual = {m for m, path in modules().items() if "." in m and path.name != "__init__.py"}
    assert sorted(actual - shown) == [] and sorted(shown - actual) == []
