"""Concept vectors against a direct computation, the trial prompt, and injection mechanics."""

from __future__ import annotations

import pytest
import torch

from lmscope.core.hooks import capture, intervene
from lmscope.core.inputs import chat_text
from lmscope.core.sites import Site
from lmscope.introspection import (
    PREAMBLE,
    ConceptWords,
    IntrospectionConfig,
    RowwiseInjection,
    concept_vectors,
    golden_gate,
    introspection_grid,
    run_trials,
    trial_ids,
    trial_text,
)


@pytest.fixture(scope="module")
def tiny_long():
    """A tiny Llama with a context long enough for the trial dialogue (~450 tiny-tokenizer tokens)."""
    import lmscope as ls

    return ls.load_tiny("llama", config_overrides={"max_position_embeddings": 1024})


def _single(m, text: str, index: int, layer: int) -> torch.Tensor:
    ids = m.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    site = Site("resid_post", layer)
    with capture(m, [site]) as acts:
        m(ids)
    return acts[site][0, index]


@pytest.mark.parametrize("read", ["last", "word"])
def test_concept_vector_is_concept_minus_baseline_mean(tiny_llama, read: str) -> None:
    m = tiny_llama
    cv = concept_vectors(m, ["fox"], ["dog", "world", "store"], layers=[0, 2], read=read)
    for layer in (0, 2):

        def act(w: str, layer: int = layer) -> torch.Tensor:
            text = chat_text(m.tokenizer, f"Tell me about {w}")
            if read == "last":
                return _single(m, text, -1, layer)
            enc = m.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            end = text.find(f"about {w}") + len(f"about {w}")
            idx = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end <= b)
            assert w.endswith(m.tokenizer.decode(enc["input_ids"][idx]).strip()[-1])
            return _single(m, text, idx, layer)

        ref = act("fox") - torch.stack([act(w) for w in ("dog", "world", "store")]).mean(0)
        assert torch.allclose(cv.at("fox", layer), ref, atol=1e-5)
    with pytest.raises(ValueError, match="cancel"):
        concept_vectors(m, ["dog"], ["dog", "cat"])


def test_trial_prompt_layout(tiny_llama) -> None:
    m = tiny_llama
    text, char = trial_text(m)
    assert PREAMBLE in text and "Ok." in text and text.index("Ok.") < text.index("Trial 1")
    assert text[char] == "\n" and text[char + 1 :].startswith("Trial 1")
    ids, start = trial_ids(m)
    assert m.tokenizer.decode(ids[start:]).startswith("\nTrial 1")
    assert "Trial" not in m.tokenizer.decode(ids[:start])
    assert trial_ids(m, "generated")[1] == len(ids)


def test_rowwise_injection_touches_only_its_rows_and_positions(tiny_llama) -> None:
    m = tiny_llama
    d = m.shape.d_model
    ids = m.tokenizer("the quick brown fox jumps", return_tensors="pt")["input_ids"].repeat(2, 1)
    v = torch.stack([torch.zeros(d), torch.randn(d, generator=torch.Generator().manual_seed(0))])
    site = Site("resid_post", 1)
    with capture(m, [site]) as clean:
        m(ids)
    with intervene(m, {site: RowwiseInjection(vectors=v, strength=2.0, start=3)}), capture(m, [site]) as st:
        m(ids)
    assert torch.equal(st[site][0], clean[site][0])  # control row untouched
    assert torch.equal(st[site][1, :3], clean[site][1, :3])
    assert torch.allclose(st[site][1, 3:], clean[site][1, 3:] + 2.0 * v[1], atol=1e-6)


def test_trials_same_with_and_without_kv_cache(tiny_long, monkeypatch) -> None:
    m = tiny_long
    d = m.shape.d_model
    v = torch.stack([torch.zeros(d), torch.randn(d, generator=torch.Generator().manual_seed(2)) * 3])
    cached = run_trials(m, v, layer=1, strength=2.0, max_new_tokens=6, do_sample=False)
    orig = m.generate_tokens
    monkeypatch.setattr(m, "generate_tokens", lambda *a, **k: orig(*a, **{**k, "use_cache": False}))
    plain = run_trials(m, v, layer=1, strength=2.0, max_new_tokens=6, do_sample=False)
    assert cached == plain and cached[0] != cached[1]


def test_grid_and_golden_gate_run_end_to_end(tiny_long, tmp_path) -> None:
    m = tiny_long
    words = ConceptWords(["fox", "dog"], ["world", "store", "hello"], {"fox": ["foxes"]})
    cfg = IntrospectionConfig(layers=[1], strengths=[2.0], n_concepts=2, n_baseline=3, n_trials=2, max_new_tokens=4)
    res = introspection_grid(m, cfg, words=words, checkpoint=tmp_path / "ck.json", progress=None)
    r = res.rates[(1, 2.0)]
    assert r["n_injected"] == 2 and r["n_control"] == 2
    assert len(res.trials) == 4 and sum(t["concept"] is None for t in res.trials) == 2
    assert (res.write(tmp_path / "out") / "introspection_grid.png").exists()
    cv = concept_vectors(m, ["fox", "dog"], ["world", "store"], layers=[1])
    gg = golden_gate(m, cv, words, layers=[1], strengths=[0.0, 8.0], max_new_tokens=4, progress=None)
    assert gg.rows[0]["mention_rate"] == gg.baseline_mention  # strength 0 is the unsteered model
    assert len(gg.samples) == 4
