"""What the explorer may read: files under one results folder, and nothing else.

Every path a request names goes through :meth:`Root.resolve`: it is taken relative to the
root, symlinks are followed, and the real path must stay inside the root's real path (so
``../``, absolute paths, encoded dots and links that point out are all refused). Listing reads
only JSON and safetensors headers; nothing here unpickles or imports anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmscope.experiments.artifacts import peek_kind
from lmscope.experiments.report import read_result

SAE_FILES = ("cfg.json", "sae_weights.safetensors")
MAX_DEPTH = 6
"""How deep under the root results and artifacts are looked for."""


class Forbidden(ValueError):
    """A request named a path outside the results folder."""


class Root:
    """The results folder the explorer serves (read-only)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder).resolve()
        if not self.path.is_dir():
            raise FileNotFoundError(f"results folder {folder} does not exist")

    def resolve(self, rel: str) -> Path:
        """The real path of ``rel`` under the root; :class:`Forbidden` if it leads anywhere else."""
        if not isinstance(rel, str) or "\x00" in rel:
            raise Forbidden("bad path")
        if rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
            raise Forbidden(f"{rel!r}: give a path relative to the results folder")
        real = (self.path / rel).resolve()
        if real != self.path and self.path not in real.parents:
            raise Forbidden(f"{rel!r} is outside the results folder")
        return real

    def rel(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix() or "."

    def _walk(self) -> list[Path]:
        """Every file under the root, depth-limited, never following a link out of it."""
        out: list[Path] = []

        def visit(folder: Path, depth: int) -> None:
            try:
                entries = sorted(folder.iterdir())
            except OSError:
                return
            for p in entries:
                try:
                    real = p.resolve()
                except OSError:
                    continue
                if self.path not in real.parents:
                    continue
                if p.is_dir() and depth < MAX_DEPTH and not p.name.startswith("."):
                    visit(p, depth + 1)
                elif p.is_file():
                    out.append(p)

        visit(self.path, 0)
        return out

    def results(self) -> list[dict[str, Any]]:
        """One entry per folder holding an lmscope ``result.json``: identity, provenance, headline numbers."""
        rows = []
        for p in self._walk():
            if p.name != "result.json":
                continue
            try:
                doc = read_result(p.parent)
            except (ValueError, OSError) as exc:
                rows.append({"path": self.rel(p.parent), "error": str(exc)})
                continue
            rows.append({"path": self.rel(p.parent), "command": doc.get("command"), "title": doc.get("title"),
                         "identity": (doc.get("identity") or {}).get("digest"), "provenance": doc.get("provenance"),
                         "summary": _headline(doc.get("summary") or {}), "verdict": verdict(doc),
                         "mtime": p.stat().st_mtime})  # fmt: skip
        return sorted(rows, key=lambda r: r["path"])

    def result(self, rel: str) -> dict[str, Any]:
        """The ``result.json`` of one result folder, with the figure files it names."""
        folder = self.resolve(rel)
        doc = read_result(folder)
        doc["path"] = self.rel(folder)
        doc["verdict"] = verdict(doc)
        doc["figure_files"] = [f"{doc['path']}/{name}.png" for name in doc.get("figures") or []
                               if (folder / f"{name}.png").is_file()]  # fmt: skip
        doc["has_page"] = (folder / "index.html").is_file()
        return doc

    def artifacts(self) -> dict[str, list[dict[str, Any]]]:
        """Steering vectors, tuned lenses and SAEs under the root, by kind (headers only)."""
        out: dict[str, list[dict[str, Any]]] = {"steering_vector": [], "tuned_lens": [], "sae": []}
        for p in self._walk():
            if p.name == "cfg.json" and (p.parent / SAE_FILES[1]).is_file():
                try:
                    cfg = json.loads(p.read_text())
                except (ValueError, OSError):
                    continue
                out["sae"].append({"path": self.rel(p.parent), "hook": cfg.get("hook_name"),
                                   "architecture": cfg.get("architecture"), "d_sae": cfg.get("d_sae")})  # fmt: skip
            elif p.suffix == ".safetensors" and p.name != SAE_FILES[1]:
                kind, meta = peek_kind(p)
                if kind in ("steering_vector", "tuned_lens"):
                    out[kind].append({"path": self.rel(p), "layers": meta.get("layers"), "method": meta.get("method")})
        return out


def _headline(summary: dict[str, Any], n: int = 6) -> dict[str, Any]:
    """The first few scalar headline numbers (what a listing row has room for)."""
    scalars = [(k, v) for k, v in summary.items() if v is None or isinstance(v, (int, float, str, bool))]
    return dict(scalars[:n])


def verdict(doc: dict[str, Any]) -> str | None:
    """The verdict a result states: its own ``verdict``, or a reproduce report's counts of verdicts."""
    summary = doc.get("summary") or {}
    if isinstance(summary.get("verdict"), str):
        return summary["verdict"]
    if doc.get("command") == "reproduce":
        counts: dict[str, int] = {}
        for stop in (doc.get("data") or {}).values():
            if isinstance(stop, dict) and isinstance(stop.get("verdict"), str):
                counts[stop["verdict"]] = counts.get(stop["verdict"], 0) + 1
        return ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())) or None
    return None
