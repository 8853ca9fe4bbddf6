"""The docs tell the truth about the commands: every ``lmscope ...`` line in README.md and docs/*.md
parses with the generated CLI and validates (settings checked as the command would, before any model)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lmscope.cli.main import build_parser, experiment_from_args

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _command_lines() -> list[tuple[str, str]]:
    """(page, command line) for each shell line or inline code span that starts with ``lmscope <command>``."""
    found = []
    for page in PAGES:
        text = page.read_text()
        lines, fence = [], None
        for ln in text.replace("\\\n", " ").splitlines():
            if ln.startswith("```"):
                fence = None if fence is not None else ln[3:].strip()
            elif fence in ("", "bash", "sh", "shell"):
                lines.append(ln)
        lines += re.findall(r"`(lmscope [^`]+)`", text)
        for ln in lines:
            ln = ln.split("  #")[0].strip()
            if re.match(r"lmscope [a-z]", ln) and "..." not in ln and "[" not in ln and "|" not in ln:
                found.append((page.name, ln))
    return found


LINES = _command_lines()


def test_the_docs_show_commands() -> None:
    assert len(LINES) > 30


@pytest.mark.parametrize(("page", "line"), LINES, ids=[f"{p}:{ln[:60]}" for p, ln in LINES])
def test_documented_command_parses(page: str, line: str) -> None:
    argv = shlex.split(line)[1:]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: `{line}` does not parse")
    if getattr(args, "experiment", None) is None:
        return
    try:
        experiment_from_args(args)
    except FileNotFoundError:
        pass  # a file the example expects an earlier command to have written
    except (ValueError, TypeError) as exc:
        if "does not exist" not in str(exc):
            pytest.fail(f"{page}: `{line}` is refused: {exc}")
