"""Corpora beyond the standard library's sources: the English prose every Python ships, and the user's own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmscope as ls
from lmscope.cli.main import main
from lmscope.data.corpus import corpus_documents, corpus_stream, describe_corpus, token_chunks
from lmscope.experiments.identity import StaleResume
from lmscope.experiments.store import ActivationStore, HarvestConfig, harvest

pytest.importorskip("datasets", reason="the datasets library is not installed (make test installs lmscope[corpora])")

RECORDS = [f"Record {i}: the {'quick' if i % 2 else 'slow'} brown fox number {i} jumps over the dog." for i in range(60)]


def _jsonl(path: Path, records: list[str] = RECORDS) -> Path:
    path.write_text("".join(json.dumps({"text": r, "id": i}) + "\n" for i, r in enumerate(records)))
    return path


def test_pydoc_topics_are_english_prose_with_a_stable_split() -> None:
    docs = corpus_documents(split="all", sources=("pydoc-topics",))
    assert len(docs) > 50 and all(d.id.startswith("pydoc-topics:") for d in docs)
    text = " ".join(d.text() for d in docs)
    words = text.split()
    assert len(words) > 50_000 and sum(w.lower() in ("the", "of", "is", "a") for w in words) / len(words) > 0.05
    train = {d.id for d in corpus_documents(split="train", sources=("pydoc-topics",), heldout_fraction=0.2)}
    held = {d.id for d in corpus_documents(split="heldout", sources=("pydoc-topics",), heldout_fraction=0.2)}
    assert held and not train & held


def test_the_default_corpus_description_is_unchanged_by_new_sources() -> None:
    d = describe_corpus()
    assert d["name"] == "python-stdlib-source" and "files" not in d
    assert describe_corpus(sources=("stdlib", "pydoc-topics"))["name"] == "stdlib+pydoc-topics"


@pytest.mark.parametrize("kind", ["jsonl", "txt", "parquet"])
def test_a_user_file_streams_its_records_in_order_split_by_row(tmp_path: Path, kind: str) -> None:
    if kind == "jsonl":
        path = _jsonl(tmp_path / "c.jsonl")
    elif kind == "txt":
        path = tmp_path / "c.txt"
        path.write_text("\n\n".join(RECORDS) + "\n")  # one record per paragraph
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow as pa

        path = tmp_path / "c.parquet"
        pq.write_table(pa.table({"text": RECORDS}), path)
    every = [t.strip() for t in corpus_stream(split="all", sources=(str(path),))]
    assert every == RECORDS
    train = list(corpus_stream(split="train", sources=(str(path),), heldout_fraction=0.3))
    held = list(corpus_stream(split="heldout", sources=(str(path),), heldout_fraction=0.3))
    assert held and train and sorted(t.strip() for t in train + held) == sorted(RECORDS)


def test_token_windows_are_the_records_joined_by_eos(tmp_path: Path) -> None:
    model = ls.load_tiny("llama")
    tok = model.tokenizer
    path = _jsonl(tmp_path / "c.jsonl")
    stream: list[int] = []
    for r in RECORDS:  # the oracle: tokenize each record and join with EOS
        stream += tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    body = 31 if tok.bos_token_id is not None else 32
    windows = list(token_chunks(tok, 32, 5, split="all", sources=(str(path),)))
    for i, w in enumerate(windows):
        assert w[-body:].tolist() == stream[i * body : (i + 1) * body]


def test_bad_user_corpora_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(corpus_stream(sources=(str(tmp_path / "missing.jsonl"),)))
    with pytest.raises(ValueError, match="neither one of the named sources"):
        list(corpus_stream(sources=("wikipedia",)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(ValueError, match="no 'text' field"):
        list(corpus_stream(split="all", sources=(str(bad),)))


def test_a_harvest_of_a_user_corpus_refuses_to_resume_after_the_file_changed(tmp_path: Path) -> None:
    model = ls.load_tiny("llama")
    path = _jsonl(tmp_path / "c.jsonl")
    cfg = HarvestConfig(sites=["blocks.0.hook_resid_post"], n_tokens=31 * 6, seq_len=32, tokens_per_shard=62,
                        corpus=(str(path),), split="all", progress=False)  # fmt: skip
    store = harvest(model, cfg, tmp_path / "store")
    assert store.complete and store.manifest["corpus"]["files"][0]["name"] == "c.jsonl"
    first = store.tokens()["token_ids"].clone()
    _jsonl(path, [r.upper() for r in RECORDS])  # the same file name, other text
    with pytest.raises(StaleResume):
        harvest(model, cfg, tmp_path / "store")
    again = harvest(model, cfg, tmp_path / "store", overwrite=True)
    assert not torch.equal(again.tokens()["token_ids"], first)


def test_the_cli_harvests_a_user_corpus_beside_a_named_source(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl")
    common = ["harvest", "--tiny", "llama", "--sites", "blocks.0.hook_resid_post", "--tokens", "620", "--seq-len", "32",
              "--quiet"]  # fmt: skip
    assert main([*common, "--corpus", str(path), "pydoc-topics", "--out", str(tmp_path / "a")]) == 0
    store = ActivationStore(tmp_path / "a" / "store")
    assert store.manifest["corpus"]["name"] == "c.jsonl+pydoc-topics"
    assert main([*common, "--corpus", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()


def test_tuned_lens_sae_training_and_neuron_recording_read_a_user_corpus(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", RECORDS * 12)
    tiny = ["--tiny", "llama", "--quiet", "--corpus", str(path)]
    assert main(["tuned-lens", "train", "--tokens", "512", "--seq-len", "32", "--batch-size", "4",
                 "--compare-windows", "0", *tiny, "--out", str(tmp_path / "lens")]) == 0  # fmt: skip
    lens = json.loads((tmp_path / "lens" / "result.json").read_text())
    assert lens["identity"]["data"] is not None  # the file's sha256 is part of what the result was computed from
    assert main(["sae", "train", "--site", "blocks.1.hook_resid_post", "--d-sae", "32", "--k", "4", "--tokens", "1024",
                 "--batch", "128", *tiny, "--out", str(tmp_path / "sae")]) == 0  # fmt: skip
    assert main(["neurons", "record", "--layers", "1", "--tokens", "310", "--seq-len", "32", *tiny,
                 "--out", str(tmp_path / "neurons")]) == 0  # fmt: skip
    rec = ActivationStore(tmp_path / "neurons" / "store")
    assert rec.manifest["corpus"]["files"][0]["name"] == "c.jsonl"
    # a store carries its own corpus: asking for another one too is a usage error
    assert main(["sae", "train", "--site", "blocks.1.hook_mlp_post", "--d-sae", "32", "--store", str(rec.path), *tiny,
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
