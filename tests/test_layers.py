"""The package's architecture as docs/DESIGN.md draws it: every import (lazy ones too) points down the
layers or stays within one, no module imports in a circle, and every module has its place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "inspector"


def layers() -> dict[str, tuple[int, str]]:
    """module (relative to inspector, e.g. 'cli.station') -> (its layer, 0 the lowest; the layer's name)."""
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/DESIGN.md has no ```layers block"
    rows = [line.split(":", 1) for line in block.group(1).strip().splitlines()]
    return {module: (len(rows) - 1 - i, label.strip()) for i, (label, names) in enumerate(rows)
            for module in names.split()}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[:2] == ("migrations", "versions"):
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


def test_every_module_has_a_layer():
    assert sorted(set(modules()) - set(layers())) == [], "add these modules to the layers block in docs/DESIGN.md"
    assert sorted(set(layers()) - set(modules())) == [], "the layers block names modules that do not exist"


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
    src.write_text("import os\nfrom inspector import metrics\n\ndef f():\n    from inspector.cli.station import x\n"
                   "    import inspector.daemon\n")
    assert imports_of(src, {"metrics", "cli.station", "daemon", "cli"}) == {"metrics", "cli.station", "daemon"}
