"""A text corpus from what is already installed: the Python standard library's source files.

Harvesting activations, training SAEs and fitting tuned lenses need a lot of ordinary text, and
lmscope never downloads data at run time. Every Python installation ships about 12 MB of
source code (docstrings, comments and code; English prose plus programming text) under
``sysconfig.get_paths()["stdlib"]``; Debian's ``python3-doc`` package adds the reST sources of
the Python documentation when it is installed. That is the corpus.

- **Documents** are files, named by a stable id (``stdlib:json/decoder.py``). Their order is a
  seeded permutation of the sorted ids, so it is deterministic for a given Python install and seed.
- **Held-out split**: a document belongs to ``"heldout"`` when the sha256 of its id falls in the
  first ``heldout_fraction`` of the hash range, else to ``"train"``. Decided from the id alone, so
  no file is read to decide, and the split never changes when documents are added.
- **Lazy**: files are listed (cheap) but read and tokenized only as chunks are requested, so
  ``token_chunks(tok, 128, 4)`` reads a handful of files, not 12 MB.

    >>> from lmscope.data.corpus import corpus_texts, token_chunks
    >>> from lmscope.core.tiny import tiny_tokenizer
    >>> text = next(corpus_texts(max_docs=1))
    >>> chunk = next(token_chunks(tiny_tokenizer(), seq_len=64, n_chunks=1))
    >>> tuple(chunk.shape)
    (64,)
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

Split = Literal["train", "heldout", "all"]
SOURCES: tuple[str, ...] = ("stdlib", "python-doc")
"""The default corpus: the standard library's sources, plus Debian's python3-doc where it is installed."""
BUILTIN: tuple[str, ...] = ("stdlib", "python-doc", "pydoc-topics")
"""Named sources. ``pydoc-topics`` is English prose every Python ships: the language reference's
topics (``pydoc_data.topics``, about 460,000 characters in 79 documents)."""
CORPUS_HELP = ("text to run: named sources (stdlib, python-doc, pydoc-topics) and/or .txt/.jsonl/.parquet files "
               "(default stdlib python-doc)")
"""The one help line of every command's ``--corpus``."""
USER_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
"""Files a user may add as a source, read by the Hugging Face ``datasets`` library, streaming."""
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
_PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
_DOC_ROOTS = (f"/usr/share/doc/{_PY}/html", "/usr/share/doc/python3-doc/html", "/usr/share/doc/python3/html")
_PIECE_CHARS = 8000  # documents are tokenized in pieces of about this many characters, cut at line ends


@dataclass(frozen=True)
class Document:
    """One corpus document: a stable id and the file it is read from."""

    id: str
    """Stable name, ``"<source>:<path relative to the source root>"``."""
    path: Path | None = None
    body: str | None = None
    """The text itself, for documents that are not files (``pydoc-topics``)."""

    def text(self) -> str:
        """The file's text (undecodable bytes replaced, so reading never fails on odd encodings)."""
        if self.body is not None:
            return self.body
        assert self.path is not None
        return self.path.read_text(encoding="utf-8", errors="replace")

    def split(self, heldout_fraction: float) -> str:
        """``"heldout"`` or ``"train"``, from the sha256 of the id."""
        return split_of(self.id, heldout_fraction)


def split_of(doc_id: str, heldout_fraction: float) -> str:
    """``"heldout"`` when the sha256 of ``doc_id`` falls in the first ``heldout_fraction`` of the hash range."""
    unit = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2.0**64
    return "heldout" if unit < heldout_fraction else "train"


def _walk(root: Path, suffixes: tuple[str, ...], prefix: str) -> list[Document]:
    docs: list[Document] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            if name.endswith(suffixes):
                path = Path(dirpath) / name
                docs.append(Document(f"{prefix}:{path.relative_to(root).as_posix()}", path))
    return docs


def _python_doc_root() -> Path | None:
    for root in _DOC_ROOTS:
        sources = Path(root) / "_sources"
        if sources.is_dir():
            return sources
    return None


def user_files(sources: tuple[str, ...]) -> list[Path]:
    """The entries of ``sources`` that are user files (every entry that is not a named source), checked."""
    files = []
    for entry in sources:
        if entry in BUILTIN:
            continue
        path = Path(entry).expanduser()
        if path.suffix.lower() not in USER_FORMATS:
            raise ValueError(f"corpus source {entry!r} is neither one of the named sources ({', '.join(BUILTIN)}) "
                             f"nor a text file ({', '.join(sorted(USER_FORMATS))})")  # fmt: skip
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        files.append(path)
    return files


def list_documents(*, sources: tuple[str, ...] = SOURCES) -> list[Document]:
    """Every available document of the named ``sources``, sorted by id (files are listed, not read).

    User files among ``sources`` are not listed here: they are streamed (:func:`corpus_stream`).
    """
    user_files(sources)
    docs: list[Document] = []
    if "pydoc-topics" in sources:
        from pydoc_data.topics import topics

        docs += [Document(f"pydoc-topics:{name}", body=text) for name, text in topics.items()]
    if "stdlib" in sources:
        docs += _walk(Path(sysconfig.get_paths()["stdlib"]), (".py",), "stdlib")
    if "python-doc" in sources:
        root = _python_doc_root()
        if root is not None:  # optional: only where Debian's python3-doc is installed
            docs += _walk(root, (".txt",), "python-doc")
    if not docs and not any(entry not in BUILTIN for entry in sources):
        raise FileNotFoundError(f"no corpus documents found for sources {list(sources)}")
    return sorted(docs, key=lambda d: d.id)


def _user_texts(path: Path, split: Split, heldout_fraction: float) -> Iterator[str]:
    """The records of a user file in file order (``.txt``: one record per paragraph; JSON/Parquet: the
    ``text`` field of each row), streamed; a record is held out when the sha256 of ``"<name>#<row>"`` says so."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"reading {path} needs the Hugging Face datasets library: pip install 'lmscope[corpora]'") from None
    kind = USER_FORMATS[path.suffix.lower()]
    extra = {"sample_by": "paragraph"} if kind == "text" else {}
    rows = datasets.load_dataset(kind, data_files=str(path), split="train", streaming=True, **extra)
    for row, record in enumerate(rows):
        if "text" not in record:
            raise ValueError(f"{path}: row {row} has no 'text' field (it has {sorted(record)})")
        text = record["text"]
        if not isinstance(text, str):
            raise ValueError(f"{path}: row {row}'s 'text' is {type(text).__name__}, not a string")
        if split != "all" and split_of(f"{path.name}#{row}", heldout_fraction) != split:
            continue
        yield text


def corpus_stream(
    *, split: Split = "train", seed: int = 0, heldout_fraction: float = 0.05, sources: tuple[str, ...] = SOURCES
) -> Iterator[str]:
    """Every text of the corpus in order: the named sources' documents (seeded order), then each user file's records.

    Here and in every corpus function, empty ``sources`` means the default (:data:`SOURCES`).
    """
    sources = sources or SOURCES
    if any(entry in BUILTIN for entry in sources):
        for doc in corpus_documents(split=split, seed=seed, heldout_fraction=heldout_fraction, sources=sources):
            yield doc.text()
    for path in user_files(sources):
        yield from _user_texts(path, split, heldout_fraction)


def corpus_documents(
    *,
    split: Split = "train",
    seed: int = 0,
    max_docs: int | None = None,
    heldout_fraction: float = 0.05,
    sources: tuple[str, ...] = SOURCES,
) -> list[Document]:
    """The documents of one split in their seeded order (nothing is read yet)."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"max_docs must be >= 1 or None, got {max_docs}")
    docs = list_documents(sources=sources or SOURCES)
    if split != "all":
        docs = [d for d in docs if d.split(heldout_fraction) == split]
    random.Random(seed).shuffle(docs)
    return docs if max_docs is None else docs[:max_docs]


def corpus_texts(
    max_docs: int | None = None,
    seed: int = 0,
    *,
    split: Split = "train",
    heldout_fraction: float = 0.05,
    sources: tuple[str, ...] = SOURCES,
) -> Iterator[str]:
    """Yield document texts, one file at a time, in the seeded order of :func:`corpus_documents`."""
    for doc in corpus_documents(split=split, seed=seed, max_docs=max_docs, heldout_fraction=heldout_fraction,
                                sources=sources):  # fmt: skip
        text = doc.text()
        if text.strip():
            yield text


def _pieces(text: str, size: int = _PIECE_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``size`` characters at line ends (token boundaries stay natural)."""
    start = 0
    while start < len(text):
        end = len(text) if len(text) - start <= size else text.rfind("\n", start, start + size) + 1
        if end <= start:  # one very long line
            end = start + size
        yield text[start:end]
        start = end


def token_chunks(
    tokenizer: Any,
    seq_len: int,
    n_chunks: int | None,
    *,
    seed: int = 0,
    split: Split = "train",
    prepend_bos: bool = True,
    start: int = 0,
    heldout_fraction: float = 0.05,
    sources: tuple[str, ...] = SOURCES,
) -> Iterator[Tensor]:
    """Yield ``n_chunks`` LongTensors of shape (seq_len,): windows over the token stream.

    The documents' tokens are concatenated with EOS between documents and cut into windows of
    ``seq_len`` tokens (``seq_len - 1`` stream tokens after a BOS when ``prepend_bos`` and the
    tokenizer has one). ``start`` skips that many windows (resuming a harvest). ``n_chunks=None``
    runs to the end of the split. Only the documents needed for the requested windows are read.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if n_chunks is not None and n_chunks < 0:
        raise ValueError(f"n_chunks must be >= 0, got {n_chunks}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    bos = getattr(tokenizer, "bos_token_id", None) if prepend_bos else None
    eos = getattr(tokenizer, "eos_token_id", None)
    body = seq_len - (1 if bos is not None else 0)
    stop = None if n_chunks is None else start + n_chunks
    buffer: list[int] = []
    index = 0
    if stop is not None and stop <= start:
        return
    for text in corpus_stream(split=split, seed=seed, heldout_fraction=heldout_fraction, sources=sources):
        for piece in _pieces(text):
            buffer.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
            while len(buffer) >= body:
                window, buffer = buffer[:body], buffer[body:]
                if index >= start:
                    yield torch.tensor(([bos] if bos is not None else []) + window, dtype=torch.long)
                index += 1
                if stop is not None and index >= stop:
                    return
        if eos is not None:
            buffer.append(eos)
    if stop is not None and index < stop:
        raise ValueError(f"the {split!r} split of the corpus has only {index} windows of {seq_len} tokens; "
                         f"{stop} were requested")  # fmt: skip


def describe_corpus(
    *, split: Split = "train", seed: int = 0, heldout_fraction: float = 0.05, sources: tuple[str, ...] = SOURCES
) -> dict[str, Any]:
    """A JSON-ready description of the corpus (for manifests): sources, split, seed, and a hash of the doc ids
    (and, for user files, of their bytes)."""
    sources = sources or SOURCES
    named = tuple(e for e in sources if e in BUILTIN)
    docs = corpus_documents(split=split, seed=seed, heldout_fraction=heldout_fraction, sources=named) if named else []
    ids_hash = hashlib.sha256("\n".join(d.id for d in docs).encode()).hexdigest()
    extra: dict[str, Any] = {}
    files = user_files(sources)
    if files:
        extra["files"] = [{"name": f.name, "bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in files]
    return {
        **extra,
        "name": "python-stdlib-source" if set(named) <= set(SOURCES) and not files else "+".join(sources_label(sources)),
        "sources": sorted({d.id.split(":", 1)[0] for d in docs}),
        "python": sys.version.split()[0],
        "split": split,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "n_docs": len(docs),
        "doc_ids_sha256": ids_hash,
    }


def user_inputs(sources: tuple[str, ...]) -> list[dict[str, str]] | None:
    """What an experiment's identity fingerprints of its corpus: each user file's name and sha256 (None: none)."""
    return [{"file": p.name, "sha256": file_sha256(p)} for p in user_files(sources)] or None


def sources_label(sources: tuple[str, ...]) -> list[str]:
    """Short names of the sources (a user file by its file name)."""
    return [e if e in BUILTIN else Path(e).name for e in sources]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (also :func:`lmscope.experiments.artifacts.sha256_file`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

