"""A resumable grid of cells: each finished cell is written at once, keyed by the work's identity.

Sweeps (layers x scales), introspection grids and reproduce reports finish cell by cell. A
:class:`CellCheckpoint` keeps finished cells in one JSON file with the :class:`Identity` they
were computed under; opening it with another identity raises :class:`StaleResume` naming what
changed, so a rerun with other prompts, another vector or another model never reuses a cell.

    >>> import tempfile, pathlib
    >>> from lmscope.experiments import CellCheckpoint, identity
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "cells.json"
    >>> ck = CellCheckpoint(path, identity({"behaviour": "sentiment"}, data=["p1", "p2"]))
    >>> ck.get("10,4.0") is None
    True
    >>> ck.put("10,4.0", {"score": 0.9})
    >>> CellCheckpoint(path, identity({"behaviour": "sentiment"}, data=["p1", "p2"])).get("10,4.0")
    {'score': 0.9}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmscope.experiments.artifacts import atomic_write_json
from lmscope.experiments.identity import Identity, check_resume

FORMAT = "lmscope.cells"


class CellCheckpoint:
    """Finished cells of one piece of work, on disk (or only in memory when ``path`` is None)."""

    def __init__(self, path: str | Path | None, identity: Identity) -> None:
        self.path = None if path is None else Path(path)
        self.identity = identity
        self.cells: dict[str, Any] = {}
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{self.path} is not valid JSON ({exc}); delete it to recompute its cells") from exc
            if not isinstance(saved, dict) or saved.get("format") != FORMAT:
                raise ValueError(f"{self.path} is not an lmscope cell checkpoint; delete it or use another folder")
            check_resume(saved.get("identity"), identity, self.path)
            self.cells = dict(saved.get("cells") or {})

    def get(self, key: str) -> Any:
        """The finished cell ``key``, or None."""
        return self.cells.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.cells

    def put(self, key: str, value: Any) -> None:
        """Record a finished cell and write the file atomically (an interruption loses at most this cell)."""
        self.cells[key] = value
        if self.path is not None:
            atomic_write_json(self.path, {"format": FORMAT, "identity": self.identity.to_dict(), "cells": self.cells})
