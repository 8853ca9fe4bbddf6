"""The tour runs its tiny-capable recipes, writes an index, and resumes instead of redoing work."""

from __future__ import annotations

import json

import pytest

from lmscope.tour import RECIPES, run_tour


def test_tour_runs_and_resumes_on_a_tiny_model(tmp_path) -> None:
    out = run_tour(tmp_path, tiny="llama", only=["icl-rank1", "lens"])
    page = (out / "index.html").read_text()
    assert "icl-rank1" in page and "skipped (no tiny mode)" in page
    marker = out / "icl-rank1" / "tour-done.json"
    assert marker.exists() and json.loads(marker.read_text())["seconds"] > 0
    assert (out / "icl-rank1" / "result.json").exists()
    mtime = (out / "icl-rank1" / "result.json").stat().st_mtime
    run_tour(tmp_path, tiny="llama", only=["icl-rank1"])
    assert (out / "icl-rank1" / "result.json").stat().st_mtime == mtime  # resumed, not redone
    assert "done earlier" in (out / "index.html").read_text()


def test_unknown_recipe_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown recipe"):
        run_tour(tmp_path, only=["nope"])


def test_recipe_names_are_unique_and_every_step_names_its_output() -> None:
    names = [r.name for r in RECIPES]
    assert len(names) == len(set(names))
    for r in RECIPES:
        assert any("{dir}" in a for step in r.steps for a in step), r.name
