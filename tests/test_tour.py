"""The tour is a list of experiment values: it runs them, computes each verdict from the result, and
resumes by identity (a finished step is reused only for the very same work)."""

from __future__ import annotations

import dataclasses

import pytest

import lmscope as ls
import lmscope.tour as tour_mod
from lmscope.experiments import read_result, run
from lmscope.tour import STOPS, Stop, Tour


def test_tour_runs_verdicts_and_resumes_on_a_tiny_model(tmp_path) -> None:
    model = ls.load_tiny("llama")
    res = run(Tour(only=("icl-rank1", "lens")), model=model, out=tmp_path, quiet=True)
    page = (tmp_path / "index.html").read_text()
    assert "skipped (no tiny mode)" in page and "icl-rank1/rank1/index.html" in page
    step = read_result(tmp_path / "icl-rank1" / "rank1")
    value = res.data["icl-rank1"]["value"]
    assert value == step["summary"]["max_rel_err_fp32"]  # the verdict reads the experiment's own result
    assert res.data["icl-rank1"]["verdict"] == "reproduced" and value < 1e-4  # an identity holds on any weights
    mtime = (tmp_path / "icl-rank1" / "rank1" / "result.json").stat().st_mtime_ns
    again = run(Tour(only=("icl-rank1",)), model=model, out=tmp_path, quiet=True)
    assert again.data["icl-rank1"]["status"] == "done earlier"
    assert (tmp_path / "icl-rank1" / "rank1" / "result.json").stat().st_mtime_ns == mtime


def test_a_stop_with_one_setting_changed_runs_again(tmp_path, monkeypatch) -> None:
    model = ls.load_tiny("llama")
    run(Tour(only=("icl-rank1",)), model=model, out=tmp_path, quiet=True)
    stop = next(s for s in STOPS if s.name == "icl-rank1")
    (name, exp), = stop.steps
    changed = dataclasses.replace(stop, steps=((name, dataclasses.replace(exp, queries=1)),))
    monkeypatch.setattr(tour_mod, "STOPS", tuple(changed if s is stop else s for s in STOPS))
    again = run(Tour(only=("icl-rank1",)), model=model, out=tmp_path, quiet=True)
    assert again.data["icl-rank1"]["status"] == "ran"
    assert read_result(tmp_path / "icl-rank1" / "rank1")["config"]["queries"] == 1


def test_verdicts_follow_the_thresholds() -> None:
    up = Stop("x", "f", "p", (), lambda s: 0.0, "v", reproduced=0.5, partly=0.2)
    assert [up.verdict(v) for v in (0.6, 0.5, 0.3, 0.1, float("nan"))] == [
        "reproduced", "reproduced", "partly", "not at this scale", "no number"]  # fmt: skip
    down = Stop("x", "f", "p", (), lambda s: 0.0, "v", reproduced=1e-4, partly=1e-2, lower_is_better=True)
    assert [down.verdict(v) for v in (1e-6, 1e-3, 0.5)] == ["reproduced", "partly", "not at this scale"]


def test_unknown_stop_is_refused_before_anything_runs(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown stop"):
        Tour(only=("nope",)).validate()


def test_stop_names_are_unique_and_steps_are_experiments() -> None:
    names = [s.name for s in STOPS]
    assert len(names) == len(set(names))
    for s in STOPS:
        for _, exp in s.steps:
            if "{stop}" not in str(exp.config()):  # (those read an earlier step's output)
                exp.validate()  # every stop's settings pass the same checks the CLI applies
