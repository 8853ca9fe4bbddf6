"""Neuron correlation on any corpus: a regex labels tokens inside its matches (checked against a naive per-token
reading of the offsets), windows come from the user's file, and bad labels are refused before a model loads."""

from __future__ import annotations

import re

import pytest

import lmscope as ls
from lmscope.cli.main import main
from lmscope.neurons import pattern_windows


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "notes.txt"
    paras = [f'the dog said "hello {i} world" and the fox said "bye" then the dog ran {i} times' for i in range(400)]
    path.write_text("\n\n".join(paras))
    return path


def test_a_regex_labels_exactly_the_tokens_inside_its_matches(notes) -> None:
    tok = ls.load_tiny("llama").tokenizer
    w = pattern_windows(tok, r'"[^"]*"', n_windows=6, seq_len=24, split="train", sources=(str(notes),))
    assert w.ids.shape == (6, 24) and w.labels.dtype.is_floating_point is False
    assert 0 < int(w.labels.sum()) < w.labels.numel()
    text = notes.read_text().split("\n\n")[0]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [m.span() for m in re.finditer(r'"[^"]*"', text)]
    naive = [any(a >= s and b <= e for s, e in spans) and b > a for a, b in enc["offset_mapping"]]
    start = 1 if tok.bos_token_id is not None else 0
    n = min(len(naive), 24 - start)
    assert w.labels[0, start : start + n].tolist() == naive[:n]


def test_bad_labels_and_a_corpus_without_one_are_refused(notes, capsys) -> None:
    tok = ls.load_tiny("llama").tokenizer
    with pytest.raises(ValueError, match="not a regular expression"):
        pattern_windows(tok, "(", n_windows=1, sources=(str(notes),))
    with pytest.raises(ValueError, match="matches no token"):
        pattern_windows(tok, "zebra", n_windows=2, seq_len=16, sources=(str(notes),))
    assert main(["neurons", "correlate", "--layers", "1", "--corpus", str(notes), "--tiny", "llama", "--quiet"]) == 2
    assert "--label" in capsys.readouterr().err


def test_neurons_correlate_runs_on_a_user_corpus(notes, tmp_path) -> None:
    argv = ["neurons", "correlate", "--layers", "0-1", "--corpus", str(notes), "--label", '"[^"]*"', "--train-windows", "8",
            "--heldout-windows", "2", "--seq-len", "24", "--top", "3", "--tiny", "llama", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert (tmp_path / "result.json").exists()
