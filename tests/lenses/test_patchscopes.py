"""Patchscopes: same-state patch is a no-op; rows are independent; KV-cache semantics; mapping."""

from __future__ import annotations

import json

import pytest
import torch

import lmscope as ls
from lmscope.cli.main import main
from lmscope.lenses.patchscopes import patched_generate, patchscope, patchscope_sweep, preset_sweep, source_states

PROMPT = "The capital of France is"


def _plain(model: ls.Model, prompt: str, n: int) -> tuple[list[int], float]:
    tokens = model.generate_tokens([prompt], max_new_tokens=n)[0].tolist()
    logits = model(prompt)
    return tokens, float(logits[0, -1].float().softmax(-1)[tokens[0]])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_source_equals_target_same_layer_is_a_no_op(family: str) -> None:
    model = ls.load_tiny(family)
    tokens, prob = _plain(model, PROMPT, 6)
    for layer in range(model.shape.n_layers):
        r = patchscope(model, PROMPT, source_layer=layer, target_prompt=PROMPT, source_position=-2, target_position=-2,
                       max_new_tokens=6)  # fmt: skip
        assert r.continuation == model.tokenizer.decode(tokens, skip_special_tokens=True)
        assert r.first_token_prob == prob  # bitwise: the written value is the value that was there


def test_rows_of_a_batched_sweep_equal_single_runs(tiny_llama: ls.Model) -> None:
    sweep = patchscope_sweep(tiny_llama, "hello world", target_prompt=PROMPT, target_layer=0, max_new_tokens=5)
    assert [r.source_layer for r in sweep.rows] == list(range(tiny_llama.shape.n_layers))
    for r in sweep.rows:
        one = patchscope(tiny_llama, "hello world", source_layer=r.source_layer, target_layer=0, target_prompt=PROMPT,
                         max_new_tokens=5)  # fmt: skip
        assert (one.continuation, one.first_token) == (r.continuation, r.first_token)
        assert abs(one.first_token_prob - r.first_token_prob) < 1e-6


def test_patch_matches_a_naive_no_cache_loop(tiny_gpt2: ls.Model) -> None:
    model = tiny_gpt2
    vec = torch.randn(1, model.shape.d_model, generator=torch.Generator().manual_seed(0)) * 20
    texts, _, _, pos = patched_generate(model, vec, PROMPT, [1], target_position=-1, max_new_tokens=6)
    ids = model.tokenize(PROMPT).input_ids
    with ls.intervene(model, {ls.Site("resid_post", 1): ls.edits.replace(vec[0], positions=[pos])}):
        for _ in range(6):  # recompute the whole sequence each step; the prompt's last position is patched every time
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert pos == ids.shape[1] - 7
    assert texts[0] == model.tokenizer.decode(ids[0, -6:], skip_special_tokens=True)
    plain, _ = _plain(model, PROMPT, 6)
    assert ids[0, -6:].tolist() != plain  # a large write does change the continuation


def test_mapping_is_applied(tiny_llama: ls.Model) -> None:
    zero = patchscope(tiny_llama, "hello", source_layer=1, mapping=lambda v: v * 0, max_new_tokens=4)
    zeros = torch.zeros(1, tiny_llama.shape.d_model)
    ref, _, _, _ = patched_generate(tiny_llama, zeros, zero.target_prompt, [1], max_new_tokens=4)
    assert zero.continuation == ref[0]
    with pytest.raises(ValueError, match="width"):
        patchscope(tiny_llama, "hello", source_layer=1, mapping=lambda v: v[:3])


def test_bad_inputs_and_cli(tiny_llama: ls.Model, tmp_path) -> None:
    with pytest.raises(IndexError, match="source position"):
        source_states(tiny_llama, "hello", [0], position=50)
    with pytest.raises(ValueError, match="out of range"):
        patchscope(tiny_llama, "hello", source_layer=9)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_sweep(tiny_llama, "nope", "hello")
    assert main(["patchscope", "--tiny", "llama", "hello", "world", "--layers", "0-2", "--max-new-tokens", "3",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    doc = json.loads((tmp_path / "result.json").read_text())
    assert sorted(doc["data"]["sources"]) == ["hello", "world"] and doc["data"]["layers"] == [0, 1, 2]
    assert "world: Per source layer" in (tmp_path / "index.html").read_text()


@pytest.mark.bundled
def test_bundled_description_names_the_entity_in_middle_layers(smollm: ls.Model) -> None:
    sweep = preset_sweep(smollm, "description", "Diana, Princess of Wales", source_layers=[9, 12], max_new_tokens=8)
    assert any(sweep.contains("British")) or any(sweep.contains("princess")), sweep.table()


def test_next_token_curve_matches_per_prompt_patchscopes_and_a_hidden_states_logit_lens(tiny_llama: ls.Model,
                                                                                       tmp_path) -> None:  # fmt: skip
    """The relation's prompts through the next-token preset: each layer's precision@1 equals single patchscopes'
    share of first tokens that are the model's own next token, and the lens column equals HF's hidden states
    decoded by the final norm and unembedding (the last layer: the output itself)."""
    from lmscope.data.bundled import load_json, load_jsonl
    from lmscope.lenses.patchscopes import IDENTITY_PROMPT

    n = tiny_llama.shape.n_layers
    assert main(["patchscope", "--tiny", "llama", "--relation", "country_capital", "--preset", "next_token",
                 "--layers", f"0-{n - 1}", "--quiet", "--out", str(tmp_path)]) == 0  # fmt: skip
    doc = json.loads((tmp_path / "result.json").read_text())
    curve = doc["data"]["next_token"]
    template = load_json("relations/templates.json")["country_capital"]["prompt"]
    prompts = [template.format(r["subject"]) for r in load_jsonl("relations/country_capital.jsonl")]
    hf = tiny_llama.hf
    patch, lens = [[0.0] * n, [0.0] * n]
    for prompt in prompts:
        ids = tiny_llama.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = hf(**ids, output_hidden_states=True)
        own = int(out.logits[0, -1].argmax())
        for layer in range(n):
            first = patchscope(tiny_llama, prompt, source_layer=layer, target_prompt=IDENTITY_PROMPT, max_new_tokens=1)
            patch[layer] += (first.first_token == tiny_llama.tokenizer.decode([own])) / len(prompts)
            if layer == n - 1:
                top = own
            else:
                with torch.no_grad():
                    top = int(hf.lm_head(hf.model.norm(out.hidden_states[layer + 1][0, -1])).argmax())
            lens[layer] += (top == own) / len(prompts)
    assert curve["layers"] == list(range(n))
    assert curve["patchscope"] == pytest.approx(patch, abs=1e-9)
    assert curve["logit_lens"] == pytest.approx(lens, abs=1e-6) and lens[-1] == pytest.approx(1.0)
    s = doc["summary"]
    assert s["next_token_minus_lens"] == pytest.approx(sum(patch) / n - sum(lens) / n, abs=1e-6)
    assert (tmp_path / "next_token_precision.png").is_file()
    bad = main(["patchscope", "--tiny", "llama", "--relation", "nope", "--preset", "next_token", "--out", str(tmp_path / "x")])
    assert bad == 2 and not (tmp_path / "x").exists()
