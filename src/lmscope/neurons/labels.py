"""Token properties to correlate neurons with, labelled from the corpus itself (no annotation needed).

The built-in property is **inside a string literal** in Python source: Python's own ``tokenize``
module finds every STRING token (quotes, prefixes and docstrings included) in a document; a
model token is labelled 1 when its characters lie strictly between a string's opening and closing
quotes. Documents come from :mod:`lmscope.data.corpus` (the standard library's sources), so
train and held-out windows come from disjoint files.

    >>> from lmscope.neurons.labels import string_spans
    >>> string_spans('x = "ab"  # "no"')
    [(5, 7)]
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.data.corpus import corpus_documents, corpus_stream

_PREFIX = re.compile(r"^[rRbBuUfF]*")


def string_spans(source: str, *, triple_quoted: bool = True) -> list[tuple[int, int]]:
    """Character spans (start, end) of the *contents* of every string literal in Python ``source``.

    ``triple_quoted=False`` keeps only single-quoted literals (``'x'``, ``"x"``): no docstrings.

    f-strings count as strings (Python >= 3.12 tokenizes them in parts; their outer span is used).
    Source that does not tokenize raises ValueError: its labels after the error would be wrong.
    """
    spans, end = labelled_spans(source, triple_quoted=triple_quoted)
    if end < len(source):
        raise ValueError(f"the source does not tokenize past character {end} of {len(source)}; string labels "
                         "after that point are unknown (use labelled_spans to keep the labelled prefix)")  # fmt: skip
    return spans


def labelled_spans(source: str, *, triple_quoted: bool = True) -> tuple[list[tuple[int, int]], int]:
    """String-literal spans and how far they are known: ``(spans, end)``; ``end < len(source)`` when the
    tokenizer failed there (everything from the failing line on is unlabelled and must not be used)."""
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def off(rc: tuple[int, int]) -> int:
        return line_starts[rc[0] - 1] + rc[1]

    spans: list[tuple[int, int]] = []
    fstart: int | None = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            name = tokenize.tok_name[tok.type]
            if name == "FSTRING_START":
                fstart = off(tok.start)
                continue
            if name == "FSTRING_END" and fstart is not None:
                start, end = fstart, off(tok.end)
                fstart = None
            elif tok.type == tokenize.STRING:
                start, end = off(tok.start), off(tok.end)
            else:
                continue
            text = source[start:end]
            body = text[len(_PREFIX.match(text).group(0)) :]  # type: ignore[union-attr]
            q = 3 if body[:3] in ('"""', "'''") else 1
            if q == 3 and not triple_quoted:
                continue
            spans.append((start + (len(text) - len(body)) + q, end - q))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        line = exc.args[1][0] if isinstance(exc, tokenize.TokenError) and len(exc.args) > 1 else getattr(exc, "lineno", 1)
        known = line_starts[max(0, min(int(line or 1), len(line_starts)) - 1)]
        # A string still open at the error (fstart) is unknown too: stop before it.
        known = min(known, fstart) if fstart is not None else known
        return [sp for sp in spans if sp[1] <= known], known
    return spans, len(source)


def token_labels(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token's character span, whether it lies inside one of ``spans`` (both sorted by start)."""
    out, j = [], 0
    for a, b in offsets:
        while j < len(spans) and spans[j][1] <= a:
            j += 1
        out.append(j < len(spans) and spans[j][0] <= a and b <= spans[j][1] and b > a)
    return out


@dataclass
class LabelledWindows:
    """Token windows with a binary label per token."""

    ids: Tensor
    """(n, seq) token ids (BOS first when the tokenizer has one)."""
    labels: Tensor
    """(n, seq) bool: the token is inside a string literal (BOS is False)."""
    split: str
    """Corpus split the windows come from."""


def _windows(tokenizer, labelled: Iterator[tuple[list[int], list[bool]]], n_windows: int, seq_len: int,
             split: str) -> LabelledWindows:  # fmt: skip
    """Cut (token ids, labels) documents into ``n_windows`` windows of ``seq_len`` (BOS first, labelled False)."""
    if n_windows < 1 or seq_len < 2:
        raise ValueError(f"need n_windows >= 1 and seq_len >= 2, got {n_windows}, {seq_len}")
    bos = getattr(tokenizer, "bos_token_id", None)
    head, head_label = ([bos], [False]) if bos is not None else ([], [])
    body = seq_len - len(head)
    ids: list[list[int]] = []
    labs: list[list[bool]] = []
    for toks, lab in labelled:
        for s in range(0, len(toks) - body + 1, body):
            ids.append(head + toks[s : s + body])
            labs.append(head_label + lab[s : s + body])
            if len(ids) == n_windows:
                return LabelledWindows(torch.tensor(ids), torch.tensor(labs), split)
    raise ValueError(f"the {split!r} split yields only {len(ids)} windows of {seq_len} tokens; asked for {n_windows}")


def string_windows(tokenizer, *, n_windows: int, seq_len: int = 128, split: str = "train", seed: int = 0,
                   triple_quoted: bool = True) -> LabelledWindows:  # fmt: skip
    """``n_windows`` windows of ``seq_len`` tokens from the corpus with inside-a-string labels.

    ``triple_quoted=False`` labels only single-quoted strings (docstrings count as outside).
    """

    def labelled() -> Iterator[tuple[list[int], list[bool]]]:
        for doc in corpus_documents(split=split, seed=seed, sources=("stdlib",)):  # type: ignore[arg-type]
            text = doc.text()
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            spans, known = labelled_spans(text, triple_quoted=triple_quoted)
            toks = [t for t, (_, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if b <= known]
            yield toks, token_labels(enc["offset_mapping"], spans)

    return _windows(tokenizer, labelled(), n_windows, seq_len, split)


def pattern_windows(tokenizer, pattern: str, *, n_windows: int, seq_len: int = 128, split: str = "train", seed: int = 0,
                    sources: tuple[str, ...] = ()) -> LabelledWindows:  # fmt: skip
    """``n_windows`` windows of ``seq_len`` tokens from ``sources`` (any corpus: built-in names or your files), a token
    labelled True when it lies inside a match of the regular expression ``pattern`` (e.g. ``'"[^"]*"'`` for quoted
    text, ``r"\b[A-Z][a-z]+"`` for capitalised words)."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--label {pattern!r} is not a regular expression: {exc}") from None

    def labelled() -> Iterator[tuple[list[int], list[bool]]]:
        for text in corpus_stream(split=split, seed=seed, sources=sources):  # type: ignore[arg-type]
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            spans = [m.span() for m in rx.finditer(text) if m.end() > m.start()]
            yield enc["input_ids"], token_labels(enc["offset_mapping"], spans)

    got = _windows(tokenizer, labelled(), n_windows, seq_len, split)
    if not bool(got.labels.any()):
        raise ValueError(f"--label {pattern!r} matches no token in {n_windows} {split} windows")
    return got
