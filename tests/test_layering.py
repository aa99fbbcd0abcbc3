"""The module map in ARCHITECTURE.md is the import order: every s3pyfs module is listed
there, and imports only modules listed below it (imports point downward, no cycles)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "s3pyfs"


def listed_order() -> list[str]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    start = text.index("## Module map")
    block = text[text.index("```", start) + 3:]
    block = block[:block.index("```")]
    return [m.group(1) for m in re.finditer(r"^(\w+)\.py\s", block, re.M)]


def imports_of(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("s3pyfs."):
            found.add(node.module.split(".")[1])
    return found


def test_every_module_is_in_the_map_and_imports_point_down():
    order = listed_order()
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert set(order) == modules, f"not in the module map: {modules - set(order)}; gone: {set(order) - modules}"
    rank = {m: i for i, m in enumerate(order)}
    upward = [f"{m} imports {d}" for m in order for d in sorted(imports_of(m) & modules) if rank[d] <= rank[m]]
    assert not upward, "imports that do not point down the module map: " + "; ".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    assert "core" in imports_of("files") and listed_order().index("files") < listed_order().index("core")
