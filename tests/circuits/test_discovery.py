"""Pruning recovers a planted circuit; edge cuts equal node ablation; necessity/sufficiency extremes."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope import circuits as C
from lmscope.core import edits
from lmscope.core.sites import Site

from ._toys import planted, toy_task

HEADS = {(1, 2), (2, 0)}
MLPS = {2}
PLANTED = {f"a{la}.h{h}" for la, h in HEADS} | {f"mlp{la}" for la in MLPS}


@pytest.fixture(scope="module")
def toy() -> tuple[ls.Model, C.TaskPairs, C.Setup]:
    model = planted(HEADS, MLPS)
    task = toy_task(model)
    return model, task, C.setup(model, task, ablation="corrupt")


def test_no_cut_is_bitwise_identity_and_cuts_equal_node_ablation() -> None:
    model = ls.load_tiny("llama")
    g = C.ComponentGraph.of(model)
    batch = model.tokenize(["the dog saw Mary", "the fox saw John"])
    ref = model(batch)
    zeros = torch.zeros(1, 1, g.n_writers, model.shape.d_model)
    with C.edge_edits(model, g, removed=torch.zeros(1, g.n_writers, g.n_readers), ablated=zeros):
        assert torch.equal(model(batch), ref)
    # writers sum to the last residual stream
    with ls.capture(model, [Site("resid_post", g.n_layers - 1)]) as acts:
        model(batch)
    assert torch.allclose(C.writer_outputs(model, batch).sum(2), acts[Site("resid_post", g.n_layers - 1)], atol=1e-5)
    for site, w in ((Site("attn_z", 1, head=2), g.writer_index(1, 2)), (Site("mlp_out", 0), g.writer_index(0, None))):
        removed = torch.zeros(1, g.n_writers, g.n_readers)
        removed[0, w] = 1.0  # every outgoing edge of the node, zero-ablated
        with C.edge_edits(model, g, removed=removed, ablated=zeros):
            cut = model(batch)
        with ls.intervene(model, {site: edits.zero()}):
            node = model(batch)
        assert torch.allclose(cut, node, atol=1e-5) and not torch.allclose(cut, ref, atol=1e-3)
    assert ls.active_hooks(model) == []


def test_acdc_nodes_recovers_the_planted_circuit(toy) -> None:
    model, task, s = toy
    circ = C.acdc(model, task, level="nodes", threshold=0.02, prepared=s)
    assert set(circ.nodes) == PLANTED
    assert circ.faithfulness == pytest.approx(1.0, abs=1e-4)  # the rest writes exactly nothing


def test_acdc_edges_keeps_only_planted_writers(toy) -> None:
    model, task, s = toy
    circ = C.acdc(model, task, level="edges", threshold=0.02, prepared=s)
    writers = {w for w, _ in circ.edges}
    assert writers <= PLANTED | {"embed"} and writers & PLANTED
    assert circ.faithfulness > 0.9
    assert circ.summary()["edges"] < int(s.valid.sum())


def test_learned_mask_prunes_to_the_planted_nodes(toy) -> None:
    model, task, s = toy
    circ = C.learned_mask(model, task, level="nodes", prepared=s, steps=60, sparsity=0.05)
    assert set(circ.nodes) <= PLANTED and len(circ.nodes) >= 2
    assert circ.faithfulness > 0.8


def test_necessity_sufficiency_extremes(toy) -> None:
    model, task, s = toy
    g = s.graph
    for level in ("nodes", "edges"):
        empty = C.Circuit(g, torch.zeros_like(s.valid), torch.zeros(s.valid.shape), "empty")
        full = C.Circuit(g, s.valid.clone(), torch.zeros(s.valid.shape), "full")
        ne = C.necessity_sufficiency(model, task, empty, level=level, prepared=s, n_random=2)
        nf = C.necessity_sufficiency(model, task, full, level=level, prepared=s, n_random=2)
        assert ne.necessity == pytest.approx(1.0, abs=1e-5)  # ablating nothing
        assert ne.sufficiency == pytest.approx(ne.ablated_all, abs=1e-5)  # keeping nothing
        assert nf.necessity == pytest.approx(nf.ablated_all, abs=1e-5)
        assert nf.sufficiency == pytest.approx(1.0, abs=1e-5)
    found = C.acdc(model, task, level="nodes", threshold=0.02, prepared=s)
    ns = C.necessity_sufficiency(model, task, found, prepared=s, n_random=5)
    assert ns.sufficiency == pytest.approx(1.0, abs=1e-4)
    assert ns.necessity == pytest.approx(ns.ablated_all, abs=1e-4)  # nothing else carries the task


def test_faithfulness_curve_and_artifact_round_trip(toy, tmp_path) -> None:
    model, task, s = toy
    eap = C.edge_attribution(model, task)
    curve = C.faithfulness_curve(s, eap.scores.abs(), [0, int(s.valid.sum())])
    assert float(curve.faithfulness[0]) == pytest.approx(0.0, abs=1e-5)
    assert float(curve.faithfulness[-1]) == pytest.approx(1.0, abs=1e-5)
    circ = C.acdc(model, task, level="nodes", prepared=s)
    path = circ.save(tmp_path / "c.safetensors")
    back = C.Circuit.load(path)
    assert torch.equal(back.kept, circ.kept) and back.method == circ.method
    assert torch.equal(back.scores.isnan(), circ.scores.isnan())
    assert (tmp_path / "c.json").exists()
    assert circ.draw() is not None


@pytest.mark.parametrize("level", ["nodes", "edges"])
def test_sequential_acdc_recovers_the_planted_circuit(toy, level: str) -> None:
    model, task, s = toy
    circ = C.acdc(model, task, level=level, threshold=0.02, prepared=s, sequential=True)
    writers = set(circ.nodes) if level == "nodes" else {w for w, _ in circ.edges} - {"embed"}
    assert writers == PLANTED if level == "nodes" else (writers <= PLANTED and writers)
    assert circ.faithfulness == pytest.approx(1.0, abs=0.02) and "sequential" in circ.method


def test_sequential_acdc_equals_a_naive_one_edge_at_a_time_loop(toy) -> None:
    """Oracle: the published loop written plainly, every candidate tried against the current circuit."""
    model, task, s = toy
    g = s.graph
    cand = torch.zeros_like(s.valid)
    cand[:, g.logits_reader] = s.valid[:, g.logits_reader]  # only the edges into the logits: no dead readers
    got = C.acdc(model, task, level="edges", threshold=0.05, prepared=s, candidates=cand, sequential=True)
    kept = s.valid & cand
    cur = float(s.evaluate((s.valid & ~kept)[None])[0])
    for w in range(g.n_writers):
        if kept[w, g.logits_reader]:
            trial = kept.clone()
            trial[w, g.logits_reader] = False
            val = float(s.evaluate((s.valid & ~trial)[None])[0])
            if abs(cur - val) / abs(s.clean - s.empty) < 0.05:
                kept, cur = trial, val
    assert torch.equal(got.kept, kept)
    assert got.faithfulness == pytest.approx(float(s.normalize(cur)), abs=1e-6)
