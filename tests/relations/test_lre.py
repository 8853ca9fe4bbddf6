"""LRE estimation recovers a planted affine map; editing through its inverse hits the target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lmscope as ls
from lmscope import relations as R
from lmscope.core.sites import Site

TOY = R.Relation(
    "toy", "the dog saw {}",
    train=[("Mary", "a"), ("John", "b"), ("hello", "c"), ("world", "d")],
    test=[("fox", "e"), ("dog", "f")],
)  # fmt: skip


class _Linear(nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T


def planted_linear(seed: int = 0) -> tuple[ls.Model, torch.Tensor]:
    """Tiny llama whose layers after 0 add A @ h at the same position and nothing else: o = (I + A) s."""
    model = ls.load_tiny("llama")
    d = model.shape.d_model
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed)) / d**0.5
    with torch.no_grad():
        for layer in (1, 2):
            model.hf.model.layers[layer].self_attn.o_proj.weight.zero_()
            model.hf.model.layers[layer].mlp.down_proj.weight.zero_()
        model.hf.model.layers[2].post_attention_layernorm = nn.Identity()
        model.hf.model.layers[2].mlp = _Linear(a)
    return model, torch.eye(d) + a


def test_jacobian_matches_autograd_on_the_whole_forward() -> None:
    model = ls.load_tiny("llama")
    ids = model.tokenizer("the dog saw Mary and John")["input_ids"]
    J, s, o = R.jacobian(model, ids, 3, 0, chunk=40)
    x = torch.tensor([ids])

    def f(h: torch.Tensor) -> torch.Tensor:
        seen = {}

        def feed(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            t[0, 3] = h
            return t

        def keep(t: torch.Tensor) -> torch.Tensor:
            seen["o"] = t
            return t

        with ls.intervene(model, {Site("resid_post", 0): ls.edits.custom(feed), Site("resid_post", 2): ls.edits.custom(keep)}):
            model(x, grad=True)
        return seen["o"][0, -1]

    h = s.clone().requires_grad_(True)
    out = f(h)
    for i in (0, 5, 17, 63):  # independent reference: plain autograd through the whole forward, row by row
        (row,) = torch.autograd.grad(out[i], h, retain_graph=True)
        assert torch.allclose(J[i], row, atol=1e-6)
    assert torch.allclose(out.detach(), o, atol=1e-6)
    assert ls.active_hooks(model) == []


def test_lre_recovers_a_planted_affine_map_and_inverts_it(tmp_path) -> None:
    model, w_true = planted_linear()
    lre = R.estimate_lre(model, TOY, layer=0, n_prompts=3, prompting=R.Prompting(n_icl=2))
    assert torch.allclose(lre.weight, w_true, atol=1e-5)
    assert lre.bias.abs().max() < 1e-4
    st = R.subject_states(model, TOY, TOY.test, 0, R.Prompting(n_icl=2))
    # the model's final state is exactly the LRE's prediction, so the decoded answers agree
    f = R.faithfulness(model, TOY, lre, prompting=R.Prompting(n_icl=2))
    assert f.faithfulness_all == 1.0 and f.n == 2
    # inverse edit (full rank) lands exactly on the target representation
    s, t = st.states[0], st.states[1]
    edited = s + lre.inverse_delta(lre(t), lre(s), rank=None)
    assert torch.allclose(lre(edited), lre(t), atol=1e-3)
    back = R.LRE.load(lre.save(tmp_path / "lre.safetensors"))
    assert torch.equal(back.weight, lre.weight) and back.layer == 0 and back.subjects == lre.subjects


def test_relations_load_and_bad_input() -> None:
    names = R.relation_names()
    assert len(names) >= 8 and "country_capital" in names
    rel = R.load_relation("country_capital")
    assert rel.template.count("{}") == 1 and rel.train and rel.test
    assert not {s for s, _ in rel.train} & {s for s, _ in rel.test}
    with pytest.raises(ValueError, match="unknown relation"):
        R.load_relation("nope")
    with pytest.raises(ValueError, match="exactly one"):
        R.Relation("x", "no slot", [("a", "b"), ("c", "d")], [("e", "f")])
    model = ls.load_tiny("llama")
    with pytest.raises(IndexError, match="layer"):
        R.estimate_lre(model, TOY, layer=2)


@pytest.mark.bundled
def test_bundled_model_knows_most_capitals(smollm: ls.Model) -> None:
    rel = R.load_relation("country_capital")
    st = R.subject_states(smollm, rel, rel.test[:12], layer=8)
    assert float(st.correct.float().mean()) >= 0.5


def test_the_experiment_chooses_the_layer_on_dev_subjects(tmp_path) -> None:
    import math

    from lmscope.experiments import run
    from lmscope.relations.experiments import LRE as LREExperiment

    res = run(LREExperiment(relations=("country_capital",), layers=(0, 1), n_prompts=1, n_icl=1), model=ls.load_tiny("llama"),
              out=tmp_path, quiet=True)  # fmt: skip
    rows, best = res.data["rows"], res.data["best"]["country_capital"]
    dev = [-1.0 if math.isnan(r["dev_faithfulness"]) else r["dev_faithfulness"] for r in rows]
    assert best["layer"] == rows[dev.index(max(dev))]["layer"]  # the first layer with the best dev score
    assert all("dev_faithfulness" in r for r in rows)
