"""``lmscope reproduce`` is a list of experiment values: it runs them, computes each verdict from the
result, resumes by identity (a finished step is reused only for the very same work), and its
smallest size runs every stop here; the report in docs/ must come from the current settings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import lmscope as ls
import lmscope.reproduce as reproduce_mod
from lmscope.experiments import read_result, run
from lmscope.experiments.runner import experiment_identity
from lmscope.reproduce import STOPS, Reproduce, Stop

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, ls.Model, object]:
    out = tmp_path_factory.mktemp("smoke")
    model = ls.load_tiny("llama")
    return out, model, run(Reproduce(size="smoke"), model=model, out=out, quiet=True)


def test_the_smoke_size_runs_every_stop_and_reports_each(smoke) -> None:
    out, _, res = smoke
    report = (out / "report.md").read_text()
    for stop in STOPS:
        entry = res.data[stop.name]
        row = next(line for line in report.splitlines() if line.startswith(f"| {stop.name} |"))
        if stop.smoke is None:
            assert entry["status"] == "skipped" and stop.no_smoke in row
            continue
        step = read_result(out / entry["folder"])
        assert entry["identity"] == step["identity"]["digest"] and entry["identity"][:16] in row
        value = stop.measure(step["summary"])  # the verdict reads the experiment's own result
        assert entry["value"] == value or (value != value and entry["value"] != entry["value"])
        assert entry["verdict"] == stop.verdict(value)
        if stop.control is not None:
            assert entry["control"] == stop.control(step["summary"]) and entry["control"] in row
    assert sum(s.smoke is not None for s in STOPS) >= len(STOPS) - 1
    assert res.data["icl-rank1"]["verdict"] == "reproduced"  # an identity holds on any weights


def test_a_finished_report_resumes_without_running_again(smoke) -> None:
    out, model, _ = smoke
    mtime = (out / "icl-rank1" / "rank1" / "result.json").stat().st_mtime_ns
    again = run(Reproduce(size="smoke", only=("icl-rank1", "steer-sentiment")), model=model, out=out, quiet=True)
    assert {again.data[s]["status"] for s in ("icl-rank1", "steer-sentiment")} == {"done earlier"}
    assert (out / "icl-rank1" / "rank1" / "result.json").stat().st_mtime_ns == mtime


def test_a_stop_with_one_setting_changed_runs_again(tmp_path, monkeypatch) -> None:
    model = ls.load_tiny("llama")
    run(Reproduce(size="smoke", only=("icl-rank1",)), model=model, out=tmp_path, quiet=True)
    stop = next(s for s in STOPS if s.name == "icl-rank1")
    changed = dataclasses.replace(stop, smoke={"rank1": {**stop.smoke["rank1"], "k": 3}})
    monkeypatch.setattr(reproduce_mod, "STOPS", tuple(changed if s is stop else s for s in STOPS))
    again = run(Reproduce(size="smoke", only=("icl-rank1",)), model=model, out=tmp_path, quiet=True)
    assert again.data["icl-rank1"]["status"] == "ran"
    assert read_result(tmp_path / "icl-rank1" / "rank1")["config"]["k"] == 3


def test_a_checkpoint_of_other_work_is_moved_aside_not_mixed_in(tmp_path, monkeypatch) -> None:
    model = ls.load_tiny("llama")
    run(Reproduce(size="smoke", only=("steer-sentiment",)), model=model, out=tmp_path, quiet=True)
    sweep = tmp_path / "steer-sentiment" / "sweep"
    (sweep / "result.json").unlink()  # as if interrupted: only the checkpoint is left ...
    stop = next(s for s in STOPS if s.name == "steer-sentiment")
    changed = dataclasses.replace(stop, smoke={**stop.smoke, "sweep": {**stop.smoke["sweep"], "max_new_tokens": 2}})
    monkeypatch.setattr(reproduce_mod, "STOPS", tuple(changed if s is stop else s for s in STOPS))
    again = run(Reproduce(size="smoke", only=("steer-sentiment",)), model=model, out=tmp_path, quiet=True)  # ... of other work
    assert again.data["steer-sentiment"]["status"] == "ran"
    assert read_result(sweep)["config"]["max_new_tokens"] == 2
    assert (tmp_path / "steer-sentiment" / "sweep.stale-1" / "checkpoint.json").exists()  # kept, not mixed in


def test_verdicts_follow_the_thresholds() -> None:
    up = Stop("x", "f", "p", (), lambda s: 0.0, "v", reproduced=0.5, partly=0.2)
    assert [up.verdict(v) for v in (0.6, 0.5, 0.3, 0.1, float("nan"))] == [
        "reproduced", "reproduced", "partly", "not at this scale", "no number"]  # fmt: skip
    down = Stop("x", "f", "p", (), lambda s: 0.0, "v", reproduced=1e-4, partly=1e-2, lower_is_better=True)
    assert [down.verdict(v) for v in (1e-6, 1e-3, 0.5)] == ["reproduced", "partly", "not at this scale"]


def test_bad_requests_are_refused_before_anything_runs(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown stop"):
        Reproduce(only=("nope",)).validate()
    with pytest.raises(ValueError, match="choices|one of|size"):
        Reproduce(size="huge").validate()
    with pytest.raises(ValueError, match="--size smoke"):
        run(Reproduce(only=("lens",)), model=ls.load_tiny("llama"), out=tmp_path, quiet=True)
    assert not (tmp_path / "lens").exists()
    typo = dataclasses.replace(STOPS[0], smoke={"nope": {}})
    with pytest.raises(ValueError, match="unknown step"):
        typo.plan("smoke")


def test_stop_names_are_unique_and_every_size_is_valid_experiments() -> None:
    names = [s.name for s in STOPS]
    assert len(names) == len(set(names))
    for s in STOPS:
        for size in ("full", "smoke") if s.smoke is not None else ("full",):
            for _, exp in s.plan(size):
                if "{stop}" not in str(exp.config()):  # (those read an earlier step's output or a smoke file)
                    exp.validate()  # every stop's settings pass the same checks the CLI applies


def _documented() -> dict[str, str]:
    """stop -> the identity the committed report in docs/reproduce.md gives for it."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\| ([a-z0-9-]+) \|.*\(([0-9a-f]{16})\) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_the_documented_report_covers_every_stop() -> None:
    assert set(_documented()) == {s.name for s in STOPS}, "rerun `lmscope reproduce` and paste report.md into docs"


def test_the_documented_report_comes_from_the_current_settings(smollm) -> None:
    """A stop whose settings, data or weights changed since docs/reproduce.md was written fails here."""
    documented = _documented()
    for stop in STOPS:
        step, exp = stop.steps[-1]
        if "{stop}" in str(exp.config()):
            continue  # reads an earlier step's output: its identity depends on that file
        assert documented[stop.name] == experiment_identity(exp, smollm).digest[:16], (
            f"docs/reproduce.md is stale for {stop.name}: rerun `lmscope reproduce --only {stop.name}`")
