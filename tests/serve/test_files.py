"""The explorer reads only under its results folder; listing finds results and artifacts by header."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmscope.serve.files import Forbidden, Root


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "..", "sub/../../", "a\x00b", "C:/Windows", "\\\\host\\x"])
def test_paths_outside_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    (tmp_path / "root" / "a").mkdir(parents=True)
    with pytest.raises(Forbidden):
        Root(tmp_path / "root").resolve(bad)


def test_a_symlink_out_of_the_root_is_refused_and_not_listed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "result.json").write_text("{}")
    os.symlink(secret, root / "link")
    r = Root(root)
    with pytest.raises(Forbidden):
        r.resolve("link/result.json")
    assert r.results() == []


def test_inside_paths_resolve(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert Root(tmp_path).resolve("a/b/../b") == (tmp_path / "a" / "b").resolve()


def test_listing_reads_results_and_artifacts(results: Path) -> None:
    r = Root(results)
    rows = {row["path"]: row for row in r.results()}
    assert set(rows) == {"patch", "broken"}
    assert rows["patch"]["command"] == "patch" and rows["patch"]["identity"] == "ab" * 8
    assert rows["patch"]["summary"]["accuracy"] == 0.75
    assert "not valid JSON" in rows["broken"]["error"]
    arts = r.artifacts()
    assert [a["path"] for a in arts["steering_vector"]] == ["steer/vector.safetensors"]
    assert arts["steering_vector"][0]["layers"] == [1]
    assert [a["path"] for a in arts["sae"]] == ["sae-train/sae"] and arts["sae"][0]["hook"] == "blocks.1.hook_resid_post"


def test_a_file_that_only_looks_like_an_artifact_is_not_listed(results: Path) -> None:
    (results / "fake.safetensors").write_bytes(b"\xff" * 64)
    (results / "weights.pt").write_bytes(b"\x80\x04pickle")
    arts = Root(results).artifacts()
    assert all("fake" not in a["path"] and "weights" not in a["path"] for k in arts for a in arts[k])
