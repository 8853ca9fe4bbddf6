"""Scoring generated text: whole-word concept mentions, shared by steering, introspection and SAE steering.

    >>> mention_rate(["I love the bridge.", "hello", "two bridges", "bridgework"], ["bridge"])
    0.5
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def normalize_quotes(text: str) -> str:
    """Curly apostrophes as plain ones, so "I’m" and "I'm" match the same patterns."""
    return text.replace("\u2019", "'").replace("\u2018", "'")


def inflections(word: str) -> list[str]:
    """``word`` and its English plural and possessive forms (the last word of a phrase is inflected).

    >>> inflections("city")
    ['city', "city's", 'cities', "cities'"]
    """
    w = word.lower()
    head, _, last = w.rpartition(" ")
    head = head + " " if head else ""
    if last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        plural = last[:-1] + "ies"
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        plural = last + "es"
    elif last.endswith("fe"):
        plural = last[:-2] + "ves"
    else:
        plural = last + "s"
    forms = [last, last + "'s", plural, plural + "'"]
    if last.endswith("f"):
        forms.append(last[:-1] + "ves")  # leaf -> leaves (and roofs, by the plain rule)
    if last.endswith("o"):
        forms.append(last + "es")  # volcano -> volcanoes
    return [head + f for f in dict.fromkeys(forms)]


def _pattern(words: Sequence[str], inflect: bool) -> re.Pattern[str]:
    if not words:
        raise ValueError("mentions needs at least one word")
    forms = [f for w in words for f in (inflections(w) if inflect else [w.lower()])]
    forms.sort(key=len, reverse=True)  # the longest form wins where one is a prefix of another
    return re.compile(r"\b(" + "|".join(re.escape(f) for f in forms) + r")\b")


def first_mention(text: str, words: Sequence[str], *, inflect: bool = True) -> int | None:
    """Character offset of the first whole-word mention of any of ``words`` (or an inflection), or None."""
    m = _pattern(words, inflect).search(normalize_quotes(text).lower())
    return None if m is None else m.start()


def mentions(text: str, words: Sequence[str], *, inflect: bool = True) -> bool:
    """True when ``text`` contains any of ``words`` as a whole word (case-insensitive), by default also in its
    plural or possessive form (``mountains``, ``ocean's``); ``inflect=False`` matches the exact words only."""
    return first_mention(text, words, inflect=inflect) is not None


def mention_rate(texts: Sequence[str], words: Sequence[str]) -> float:
    """Share of ``texts`` that mention any of ``words``."""
    if not texts:
        raise ValueError("mention_rate needs at least one text")
    return sum(mentions(t, words) for t in texts) / len(texts)
