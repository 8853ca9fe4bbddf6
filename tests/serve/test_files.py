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


def test_notebook_html_fetches_nothing(results: Path) -> None:
    import re

    from lmscope.experiments import Result

    html = Result.load(results / "patch")._repr_html_()
    assert "lmscopeViews.render" in html and '"view": "result"' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", html)
    assert "</script><" not in html.split("<script>", 1)[1][:-len("</script>")]  # data cannot close the script early


def test_the_serve_command_starts_answers_and_stops_on_ctrl_c(results: Path) -> None:
    import re
    import signal
    import subprocess
    import sys
    import time

    import httpx

    # Started with SIGINT ignored, as a background job of a script is (and as something earlier in the full suite
    # leaves this process): the server must still stop on Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "lmscope", "serve", str(results), "--tiny", "llama",
                             "--port", "0"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "lmscope serve exited early"
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = m and m.group(1)
        assert url, "no URL printed"
        import threading

        rest: list[str] = []  # keep reading its stderr, so a full pipe can never block the server
        threading.Thread(target=lambda: rest.extend(proc.stderr), daemon=True).start()
        info = httpx.get(f"{url}/api/info", timeout=30).json()
        assert info["model"]["model"].startswith("tiny-llama")
        lens = httpx.post(f"{url}/api/lens", json={"prompt": "the dog"}, timeout=60)
        assert lens.status_code == 200 and lens.json()["layers"]
        proc.send_signal(signal.SIGINT)
        try:  # alone it exits in about a second; a loaded 2-core machine has taken over 30 s
            assert proc.wait(180) == 0, "".join(rest)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack: where it hangs
            proc.wait(60)
            time.sleep(1)
            raise AssertionError("lmscope serve did not exit within 180 s of Ctrl-C; its threads:\n"
                                 + "".join(rest)[-6000:]) from None
    finally:
        proc.kill()
