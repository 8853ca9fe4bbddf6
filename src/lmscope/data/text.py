"""Scoring generated text: whole-word concept mentions, shared by steering, introspection and SAE steering.

    >>> mention_rate(["I love the bridge.", "hello"], ["bridge"])
    0.5
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def normalize_quotes(text: str) -> str:
    """Curly apostrophes as plain ones, so "I’m" and "I'm" match the same patterns."""
    return text.replace("\u2019", "'").replace("\u2018", "'")


def mentions(text: str, words: Sequence[str]) -> bool:
    """True when ``text`` contains any of ``words`` as a whole word (case-insensitive)."""
    if not words:
        raise ValueError("mentions needs at least one word")
    pattern = r"\b(" + "|".join(re.escape(w.lower()) for w in words) + r")\b"
    return re.search(pattern, normalize_quotes(text).lower()) is not None


def mention_rate(texts: Sequence[str], words: Sequence[str]) -> float:
    """Share of ``texts`` that mention any of ``words``."""
    if not texts:
        raise ValueError("mention_rate needs at least one text")
    return sum(mentions(t, words) for t in texts) / len(texts)
