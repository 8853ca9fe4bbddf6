"""The experiment substrate's identity and cell checkpoint: a rerun with one input changed never reuses old work."""

from __future__ import annotations

import pytest
import torch

from lmscope.experiments import CellCheckpoint, StaleResume, check_resume, fingerprint, identity


def test_fingerprint_sees_tensor_bytes_dtype_and_shape() -> None:
    t = torch.arange(6.0)
    assert fingerprint(t) == fingerprint(t.clone())
    assert fingerprint(t) != fingerprint(t.double())
    assert fingerprint(t) != fingerprint(t.reshape(2, 3))
    u = t.clone()
    u[3] = torch.nextafter(u[3], torch.tensor(10.0))  # one ulp
    assert fingerprint(t) != fingerprint(u)
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (dict(config={"lr": 3e-3, "seed": 0}), "config.lr was 0.001, now 0.003"),
        (dict(config={"lr": 1e-3, "seed": 0}, data=["a", "c"]), "input data differs"),
        (dict(config={"lr": 1e-3, "seed": 0}, weights="f" * 64), "model weights differ"),
    ],
)
def test_every_changed_part_is_named(change: dict, named: str) -> None:
    saved = identity({"lr": 1e-3, "seed": 0}, data=["a", "b"], weights="e" * 64).to_dict()
    now = identity(change["config"], data=change.get("data", ["a", "b"]), weights=change.get("weights", "e" * 64))
    with pytest.raises(StaleResume, match=named):
        check_resume(saved, now, "ckpt")


def test_a_version_change_is_named_and_a_missing_identity_is_refused() -> None:
    work = identity({"x": 1})
    old = {**work.to_dict(), "version": "0.0.1"}
    with pytest.raises(StaleResume, match="lmscope version was 0.0.1"):
        check_resume(old, work, "ckpt")
    with pytest.raises(StaleResume, match="without an identity"):
        check_resume(None, work, "ckpt")


def test_cell_checkpoint_resumes_only_the_same_work(tmp_path) -> None:
    path = tmp_path / "cells.json"
    ck = CellCheckpoint(path, identity({"behaviour": "b"}, data=["p1"]))
    ck.put("1,2.0", {"score": 0.5})
    assert CellCheckpoint(path, identity({"behaviour": "b"}, data=["p1"])).get("1,2.0") == {"score": 0.5}
    with pytest.raises(StaleResume, match="input data differs"):
        CellCheckpoint(path, identity({"behaviour": "b"}, data=["p2"]))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CellCheckpoint(path, identity({"behaviour": "b"}))
