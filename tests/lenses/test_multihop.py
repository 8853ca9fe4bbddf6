"""Multi-hop: the generator only composes table facts the model knows; backpatching j -> j is a no-op."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmscope as ls
from lmscope.data.bundled import load_json, load_jsonl
from lmscope.lenses import logit_lens
from lmscope.lenses import multihop as mh

PROMPT = "The capital of France is"
names = st.text(alphabet="abcdef", min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(names, names, max_size=8), st.dictionaries(names, names, max_size=8))
def test_compose_emits_only_table_facts(hop1: dict[str, str], hop2: dict[str, str]) -> None:
    queries = mh.compose(hop1, hop2, "q {} ?")
    for q in queries:
        assert hop1[q["subject"]] == q["bridge"] and hop2[q["bridge"]] == q["answer"]
        assert q["prompt"] == f"q {q['subject']} ?"
    assert len(queries) == sum(b in hop2 for b in hop1.values())


def test_build_two_hop_keeps_only_known_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stub 'model' that knows every third fact: the dataset is exactly the compositions of those."""
    ids: dict[str, int] = {}
    monkeypatch.setattr(mh, "_single", lambda model, word: ids.setdefault(word, len(ids)))
    truth = {}
    for rel in ("landmark_country", "company_country", "country_capital", "country_language"):
        for n, r in enumerate(load_jsonl(f"relations/{rel}.jsonl")):
            truth[(rel, r["subject"])] = (r["object"], n % 3 == 0)
    templates = load_json("relations/templates.json")
    by_prompt = {templates[rel]["prompt"].format(s): obj_known for (rel, s), obj_known in truth.items()}

    def fake_top1(model, prompts, batch_size=16):
        return [mh._single(model, by_prompt[p][0]) if by_prompt[p][1] else -1 for p in prompts]

    monkeypatch.setattr(mh, "_top1", fake_top1)
    data = mh.build_two_hop(object())
    assert data.queries
    for q in data.queries:
        assert truth[(q["hop1"], q["subject"])] == (q["bridge"], True)
        assert truth[(q["hop2"], q["bridge"])] == (q["answer"], True)
    expected = sum(
        truth.get((h2, truth[(h1, s)][0]), (None, False))[1]
        for (h1, h2) in mh.TWO_HOP_TEMPLATES for (rel, s), (_, known) in truth.items() if rel == h1 and known
    )
    assert len(data.queries) == expected


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_backpatch_same_layer_is_a_no_op(family: str) -> None:
    model = ls.load_tiny(family)
    states = mh._last_states(model, PROMPT)
    plain = model(PROMPT)
    for j in range(model.shape.n_layers):
        with ls.intervene(model, {ls.Site("resid_post", j): ls.edits.replace(states[j], positions=[-1])}):
            assert torch.equal(model(PROMPT), plain)
        n = model.shape.n_layers
        for reuse in (True, False):
            assert mh._patched_top1(model, PROMPT, states[j].expand(n, -1), [j] * n, reuse_prefix=reuse) == \
                [int(plain[0, -1].argmax())] * n  # fmt: skip


def test_prefix_cache_equals_full_forward(tiny_llama: ls.Model) -> None:
    v = torch.randn(6, tiny_llama.shape.d_model, generator=torch.Generator().manual_seed(1)) * 5
    layers = [0, 1, 2, 0, 1, 2]
    assert mh._patched_top1(tiny_llama, PROMPT, v, layers) == mh._patched_top1(tiny_llama, PROMPT, v, layers, reuse_prefix=False)


def test_backpatch_and_analysis_on_planted_queries(tiny_llama: ls.Model, tmp_path) -> None:
    top = int(tiny_llama(PROMPT)[0, -1].argmax())
    words = ["the", "world"]
    query = {"prompt": PROMPT, "subject": "x", "bridge": words[0], "answer": words[1], "hop1": "a", "hop2": "b"}
    data = mh.TwoHopDataset([query], {})
    analysis = mh.analyze_two_hop(tiny_llama, data, within=50)
    ids = [tiny_llama.token_id(" " + w) for w in words[:2]]
    for k, key in enumerate(("bridge_layer", "answer_layer")):
        ref = logit_lens(tiny_llama, PROMPT, target=ids[k])
        first = ref.emergence(stay=False, within=50)[0]
        assert analysis.queries[0][key] == first
    result = mh.backpatch(tiny_llama, [{"prompt": PROMPT, "answer": "?", "answer_id": top}], pairs=[(2, 0), (1, 0), (2, 1)])
    assert result.same_layer_fixed.all()  # the answer is the unpatched top-1, and j -> j changes nothing
    assert result.fixed.shape == (1, 3) and result.control_fixed.shape == (1, 3)
    folder = mh.save_multihop(tmp_path, data, analysis, result)
    assert (folder / "backpatch_heatmap.png").is_file() and (folder / "result.json").is_file()
    with pytest.raises(ValueError, match="pairs"):
        mh.backpatch(tiny_llama, [], pairs=[(1, 1)])


@pytest.mark.bundled
def test_bundled_two_hop_query_and_no_op_backpatch(smollm: ls.Model) -> None:
    prompt = "The capital of the country where the Eiffel Tower is located is"
    states = mh._last_states(smollm, prompt)
    plain = int(smollm(prompt)[0, -1].argmax())
    layers = [0, 10, 20, 29]
    assert mh._patched_top1(smollm, prompt, states[layers], layers) == [plain] * 4
    data = mh.TwoHopDataset([{"prompt": prompt, "subject": "the Eiffel Tower", "bridge": "France", "answer": "Paris",
                              "hop1": "landmark_country", "hop2": "country_capital"}], {})  # fmt: skip
    q = mh.analyze_two_hop(smollm, data).queries[0]
    assert q["correct"] == (plain == smollm.token_id(" Paris"))
    assert q["answer_layer"] is None or q["answer_layer"] >= 15
