"""Logit lens: last layer == model logits; every layer == a naive HF reference; padding; emergence."""

from __future__ import annotations

import json

import pytest
import torch

import lmscope as ls
from lmscope.cli.main import main
from lmscope.lenses import LogitLensResult, logit_lens

PROMPTS = ["hello world", "The capital of France is Paris"]


def test_last_layer_equals_model_logits(tiny: ls.Model) -> None:
    res = logit_lens(tiny, PROMPTS, k=5)
    logits = tiny(tiny.tokenize(PROMPTS)).float()
    probs, ids = logits.softmax(-1).topk(5, dim=-1)
    m = res.mask.bool()
    torch.testing.assert_close(res.top_probs[:, -1][m], probs[m], atol=1e-5, rtol=0)
    assert torch.equal(res.top_ids[:, -1, :, 0][m], ids[..., 0][m])
    assert float(res.kl_to_final[:, -1][m].abs().max()) <= 1e-5


def _final_norm_and_head(model: ls.Model):
    hf = model.hf
    norm = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    return norm, hf.lm_head


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_layer_matches_naive_reference(family: str) -> None:
    model = ls.load_tiny(family)
    batch = model.tokenize(PROMPTS)
    target = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    res = logit_lens(model, PROMPTS, target=target, k=4)
    with torch.no_grad():
        out = model.hf(**batch.model_inputs(), output_hidden_states=True)
        norm, head = _final_norm_and_head(model)
        final = out.logits.log_softmax(-1)
        for layer in range(model.shape.n_layers - 1):  # hidden_states[-1] is already normalised
            logp = head(norm(out.hidden_states[layer + 1])).log_softmax(-1)
            v, i = logp.topk(4, dim=-1)
            m = batch.attention_mask.bool()
            torch.testing.assert_close(res.top_probs[:, layer][m], v.exp()[m], atol=1e-6, rtol=1e-5)
            ent = -(logp.exp() * logp).sum(-1)
            kl = (final.exp() * (final - logp)).sum(-1)
            torch.testing.assert_close(res.entropy[:, layer][m], ent[m], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(res.kl_to_final[:, layer][m], kl[m], atol=1e-5, rtol=1e-5)
            rank = (logp > logp[..., target : target + 1]).sum(-1)
            assert torch.equal(res.target_rank[:, layer][m], rank[m])


def test_attn_out_site_matches_raw_module_hook(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    seen = {}
    handle = model.hf.model.layers[1].self_attn.o_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("o", o))
    try:
        res = logit_lens(model, PROMPTS[:1], sites=[ls.Site("attn_out", 1), "blocks.1.hook_mlp_out"], k=3)
    finally:
        handle.remove()
    ref = model.hf.lm_head(model.hf.model.norm(seen["o"])).softmax(-1).topk(3, dim=-1)
    torch.testing.assert_close(res.top_probs[:, 0], ref.values, atol=1e-6, rtol=1e-5)
    assert [s.kind for s in res.sites] == ["attn_out", "mlp_out"]


@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "mlp_out"])
def test_other_residual_kinds_run(tiny_llama: ls.Model, kind: str) -> None:
    res = logit_lens(tiny_llama, PROMPTS, sites=kind, k=2)
    assert len(res.sites) == tiny_llama.shape.n_layers and all(s.kind == kind for s in res.sites)
    assert torch.isfinite(res.kl_to_final).all() and (res.kl_to_final >= 0).all()


def test_padded_batch_equals_single_prompts(tiny_gpt2: ls.Model) -> None:
    both = logit_lens(tiny_gpt2, PROMPTS, target=" the", k=3)
    for row, prompt in enumerate(PROMPTS):
        one = logit_lens(tiny_gpt2, [prompt], target=" the", k=3)
        m = both.mask[row].bool()
        torch.testing.assert_close(both.top_probs[row][:, m], one.top_probs[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both.kl_to_final[row][:, m], one.kl_to_final[0], atol=1e-5, rtol=1e-4)
        assert both.tokens(row) == one.tokens(0)


def _planted(rank_rows: list[list[int]]) -> LogitLensResult:
    """A hand-made result whose last-token target ranks are ``rank_rows`` (batch, layer)."""
    b, n = len(rank_rows), len(rank_rows[0])
    rank = torch.tensor(rank_rows)[:, :, None]  # (batch, layer, seq=1)
    top = torch.where(rank == 0, 7, 3)[..., None]  # target id 7 is top-1 exactly where rank == 0
    z = torch.zeros(b, n, 1)
    return LogitLensResult(
        model_id="planted", lens="logit", prompts=["p"] * b, sites=[ls.Site("resid_post", i) for i in range(n)],
        input_ids=torch.zeros(b, 1, dtype=torch.long), mask=torch.ones(b, 1, dtype=torch.long),
        top_ids=top, top_probs=z[..., None] + 0.5, entropy=z, kl_to_final=z,
        final_top_ids=top[:, -1], final_top_probs=z[:, -1, :, None] + 0.5, target_ids=torch.full((b,), 7),
        target_rank=rank, target_prob=z, vocab={3: "x", 7: "y"},
    )  # fmt: skip


def test_emergence_on_planted_ranks() -> None:
    res = _planted([[5, 0, 3, 0, 0], [9, 9, 9, 9, 2], [0, 0, 0, 0, 0], [20, 8, 4, 1, 0]])
    assert res.emergence() == [3, None, 0, 4]
    assert res.emergence(stay=False) == [1, None, 0, 4]
    assert res.emergence(within=10) == [0, 0, 0, 1]
    assert res.model_correct() == [True, False, True, True]
    assert res.select([1, 3]).emergence() == [None, 4]


def test_bad_inputs(tiny_llama: ls.Model) -> None:
    with pytest.raises(ValueError, match="one token"):
        logit_lens(tiny_llama, "hello", target="hello world again")
    with pytest.raises(ValueError, match="residual basis"):
        logit_lens(tiny_llama, "hello", sites=[ls.Site("mlp_post", 0)])
    with pytest.raises(ValueError, match="out of range"):
        logit_lens(tiny_llama, "hello", sites=[ls.Site("resid_post", 99)])
    with pytest.raises(ValueError, match="2 targets for 1 prompts"):
        logit_lens(tiny_llama, "hello", target=[3, 4])


def test_save_and_cli_write_json_png_html(tiny_llama: ls.Model, tmp_path) -> None:
    res = logit_lens(tiny_llama, PROMPTS, target=" the", k=3)
    folder = res.save(tmp_path / "api")
    data = json.loads((folder / "result.json").read_text())["data"]
    assert [p["emergence_layer"] for p in data["prompts"]] == res.emergence()
    assert {"index.html", "rank.png", "curves.png", "heatmap_0.png"} <= {p.name for p in folder.iterdir()}
    recs = tmp_path / "p.jsonl"
    recs.write_text("\n".join(json.dumps({"prompt": p, "target": " the"}) for p in PROMPTS))
    assert main(["lens", "--tiny", "llama", "--prompts", str(recs), "--out", str(tmp_path / "cli")]) == 0
    assert len(json.loads((tmp_path / "cli" / "result.json").read_text())["data"]["prompts"]) == 2
    assert main(["lens", "--tiny", "llama", "hello world", "--out", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "heatmap.png").is_file()


@pytest.mark.bundled
def test_bundled_capital_emerges_late(smollm: ls.Model) -> None:
    res = logit_lens(smollm, "The capital of France is", target=" Paris")
    logits = smollm("The capital of France is")[0, -1].float()
    assert float(res.kl_to_final[0, -1, -1]) <= 1e-5
    assert int(res.top_ids[0, -1, -1, 0]) == int(logits.argmax()) == smollm.token_id(" Paris")
    (layer,) = res.emergence()
    assert layer is not None and layer >= 20  # the seeds: answers surface in the last layers
    assert int(res.target_rank[0, 27, -1]) < int(res.target_rank[0, 10, -1])
