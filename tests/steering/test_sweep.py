"""The sweep engine: baseline, cells, checkpoint resume, files."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.core.metrics import at_last
from lmscope.steering import Capability, SteeringVector, steer, sweep


def _behaviour(m) -> float:
    batch = m.tokenize(["hello world", "the quick brown fox"])
    return float(at_last(m(batch), batch.attention_mask)[:, 5].mean())


def test_sweep_cells_match_direct_steering(tiny_llama, tmp_path) -> None:
    m = tiny_llama
    d = m.shape.d_model
    vec = SteeringVector({0: torch.randn(d, generator=torch.Generator().manual_seed(0)), 1: torch.ones(d) / d**0.5}, d)
    cap = Capability(["the quick brown fox jumps", "hello world"], [("hello", "world")], max_new_tokens=3)
    ck = tmp_path / "ck.json"
    res = sweep(m, vec, _behaviour, layers=[0, 1], scales=[0.0, 3.0], capability=cap, checkpoint=ck, progress=None,
                extra={"twice": lambda mm: 2 * _behaviour(mm)})  # fmt: skip
    assert all(c.extra["twice"] == pytest.approx(2 * c.behaviour) for c in [res.baseline, *res.cells])
    assert res.header()[-1] == "twice" and len(res.rows()[0]) == len(res.header())
    assert res.baseline.behaviour == pytest.approx(_behaviour(m))
    by = {(c.layer, c.scale): c for c in res.cells}
    assert by[(0, 0.0)].behaviour == res.baseline.behaviour and by[(0, 0.0)].perplexity == res.baseline.perplexity
    with steer(m, vec, layers=[1], scale=3.0):
        assert by[(1, 3.0)].behaviour == pytest.approx(_behaviour(m))
    assert len(json.loads(ck.read_text())["cells"]) == 5

    def boom(model) -> float:
        raise AssertionError("a resumed sweep must not recompute finished cells")

    again = sweep(m, vec, boom, layers=[0, 1], scales=[0.0, 3.0], capability=cap, checkpoint=ck, progress=None,
                  extra={"twice": boom})  # fmt: skip
    assert again.rows() == res.rows()
    best = res.best(goal=1, max_ppl_ratio=1e9)
    assert best is not None and best.behaviour == max(c.behaviour for c in res.cells)
    folder = res.write(tmp_path / "out")
    assert (folder / "heatmap.png").stat().st_size > 0 and (folder / "index.html").exists()
    with pytest.raises(KeyError, match="layers"):
        sweep(m, vec, _behaviour, layers=[2], scales=[1.0], capability=cap, progress=None)
