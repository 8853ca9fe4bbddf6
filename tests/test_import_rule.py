"""DESIGN.md's dependency rule, floor by floor: core imports nothing above it; data imports core; the
substrate (lmscope.experiments) imports core and data; a method family imports those three, never a
sibling family; reproduce imports anything but the CLI. No floor imports the package root."""

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
                if parts[0] == "lmscope" and len(parts) > 1 and parts[1] not in (family, "core", "data", "experiments"):
                    offences.append(f"{path.relative_to(SRC)} imports {name}")
                if name == "lmscope":
                    offences.append(f"{path.relative_to(SRC)} imports the top-level lmscope package")
    assert offences == [], offences


def _floor_offences(floor: str, allowed: tuple[str, ...]) -> list[str]:
    """Imports of lmscope from files under ``floor`` that reach outside ``allowed`` (the bare package root included,
    also when imported inside a function)."""
    return [
        f"{p.relative_to(SRC)} imports {n}"
        for p in (SRC / floor).rglob("*.py")
        for n in _imports(p)
        if n == "lmscope" or (n.startswith("lmscope.") and n.split(".")[1] not in allowed)
    ]


def test_core_imports_nothing_above_it() -> None:
    offences = _floor_offences("core", ("core",))
    assert offences == [], offences


def test_data_imports_only_core() -> None:
    offences = _floor_offences("data", ("core", "data"))
    assert offences == [], offences


def test_substrate_imports_only_core_and_data() -> None:
    offences = _floor_offences("experiments", ("core", "data", "experiments"))
    assert offences == [], offences


def test_reproduce_never_imports_the_cli() -> None:
    names = _imports(SRC / "reproduce.py")
    offences = [f"reproduce.py imports {n}" for n in names if n == "lmscope" or n.startswith("lmscope.cli")]
    assert offences == [], offences


def test_the_explorer_never_imports_the_cli() -> None:
    offences = _floor_offences("serve", ("core", "data", "experiments", "serve", *FAMILIES))
    assert offences == [], offences


def test_the_rule_sees_an_upward_import_inside_a_function(tmp_path) -> None:
    """The check has teeth: ``from lmscope import __version__`` inside a function is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from lmscope import __version__\n    return __version__\n")
    assert "lmscope" in _imports(probe)
