"""DESIGN.md's dependency rule: a method family imports lmscope.core, never a sibling family."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lmscope"
FAMILIES = ("lenses", "neurons", "steering", "icl", "introspection", "saes", "circuits", "relations", "sparse")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                pkg = path.relative_to(SRC.parent).parent.parts
                base = pkg[: len(pkg) - node.level + 1]
                found.append(".".join((*base, node.module or "")))
            elif node.module:
                found.append(node.module)
    return found


def test_families_import_only_core() -> None:
    offences = []
    for family in FAMILIES:
        for path in (SRC / family).rglob("*.py") if (SRC / family).exists() else []:
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "lmscope" and len(parts) > 1 and parts[1] != family and parts[1] != "core":
                    offences.append(f"{path.relative_to(SRC)} imports {name}")
                if name == "lmscope":
                    offences.append(f"{path.relative_to(SRC)} imports the top-level lmscope package")
    assert offences == [], offences


def test_core_imports_no_family() -> None:
    offences = [
        f"{p.relative_to(SRC)} imports {n}"
        for p in (SRC / "core").rglob("*.py")
        for n in _imports(p)
        if n.startswith("lmscope.") and n.split(".")[1] not in ("core",)
    ]
    assert offences == [], offences
