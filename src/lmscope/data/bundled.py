"""The built-in datasets shipped in ``lmscope/data/files`` (see its README.md for every schema).

    >>> from lmscope.data.bundled import load_jsonl
    >>> pairs = load_jsonl("tasks/antonyms.jsonl", split="test")
    >>> sorted(pairs[0])
    ['input', 'output', 'split']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

DATA_DIR = Path(str(resources.files("lmscope.data").joinpath("files")))


def data_path(relative: str) -> Path:
    """Absolute path of a built-in data file, with an error listing what exists."""
    path = DATA_DIR / relative
    if not path.exists():
        folder = path.parent if path.parent.exists() else DATA_DIR
        have = sorted(str(p.relative_to(DATA_DIR)) for p in folder.iterdir())
        raise FileNotFoundError(f"no built-in data file {relative!r}; in {folder.relative_to(DATA_DIR.parent)}: {have}")
    return path


def read_jsonl(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Records of a JSONL file (any path), optionally only one split ("train"/"test")."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not valid JSON: {exc}") from exc
    if split is not None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        records = [r for r in records if r.get("split") == split]
    return records


def load_jsonl(relative: str, split: str | None = None) -> list[dict[str, Any]]:
    """Records of a built-in JSONL file, e.g. ``load_jsonl("contrast/sentiment.jsonl", "train")``."""
    return read_jsonl(data_path(relative), split)


def load_json(relative: str) -> Any:
    """A built-in JSON file, e.g. ``load_json("concepts.json")``."""
    return json.loads(data_path(relative).read_text(encoding="utf-8"))


def list_data(folder: str = "") -> list[str]:
    """Names of the built-in files under ``folder`` (e.g. "tasks")."""
    root = DATA_DIR / folder
    return sorted(str(p.relative_to(DATA_DIR)) for p in root.rglob("*") if p.is_file())


def prompt_texts(inline: Sequence[str], path: str | Path | None) -> list[str]:
    """The prompts a command was given: those of the file at ``path`` if there is one, else ``inline``."""
    return [r["prompt"] for r in read_prompts(path)] if path else list(inline)


def read_prompts(path: str | Path, *, key: str = "prompt", extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A user's prompt file: JSONL records with ``key`` (and optional ``extra`` keys), or plain text, one prompt per line.

    Checked completely here, before any model loads: a missing file, an empty one, a record
    without ``key`` or with ``extra`` keys on some records only is refused, naming the line.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {p} does not exist")
    if p.suffix == ".jsonl":
        recs = read_jsonl(p)
        for n, r in enumerate(recs, 1):
            if not isinstance(r, dict) or not isinstance(r.get(key), str):
                raise ValueError(f"{p}: record {n} has no string {key!r} (keys: {sorted(r) if isinstance(r, dict) else r})")
        for k in extra:
            has = [k in r for r in recs]
            if any(has) and not all(has):
                raise ValueError(f"{p}: give {k!r} on every record or on none (missing on record {has.index(False) + 1})")
    else:
        recs = [{key: line} for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not recs:
        raise ValueError(f"prompt file {p} holds no prompts")
    return recs
