"""RELIABILITY.md B8, B9, B12: what lmscope reads equals what Hugging Face computes.

Oracles: HF's own ``output_hidden_states`` / ``output_attentions`` and naive recomputation of a
site from the module weights (o_proj(z) == attn_out, down_proj(mlp_post) == mlp_out, z == pattern @ v).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmscope as ls
from lmscope.core.architectures import get_module
from lmscope.core.sites import Site

from ._util import PROMPTS, hf_forward


def _acts(model: ls.Model, batch: ls.Batch, sites: list[Site]):
    with ls.capture(model, sites) as acts:
        logits = model(batch)
    return acts, logits


# ---- B8 -------------------------------------------------------------------------------------------
def test_b8_resid_post_equals_hf_hidden_states(tiny: ls.Model) -> None:
    batch = tiny.tokenize(PROMPTS)
    out = hf_forward(tiny, batch, output_hidden_states=True)
    L = tiny.shape.n_layers
    acts, logits = _acts(tiny, batch, [*tiny.sites(["resid_pre", "resid_post"]), Site("final_norm"), Site("logits")])
    assert len(out.hidden_states) == L + 1
    for layer in range(L - 1):
        assert torch.equal(acts[Site("resid_post", layer)], out.hidden_states[layer + 1]), f"resid_post {layer}"
    for layer in range(L):
        assert torch.equal(acts[Site("resid_pre", layer)], out.hidden_states[layer]), f"resid_pre {layer}"
    # The last hidden state is after the final norm in HF; lmscope's final_norm site is that tensor.
    assert (acts[Site("final_norm")] - out.hidden_states[-1]).abs().max() <= 1e-6
    assert torch.allclose(tiny.hf.get_submodule(tiny.arch.final_norm)(acts[Site("resid_post", L - 1)]),
                          out.hidden_states[-1], atol=1e-6)  # fmt: skip
    cap = getattr(tiny.hf.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 soft-caps after lm_head: the logits site is lm_head's output, before the cap
        assert torch.allclose(torch.tanh(acts[Site("logits")] / cap) * cap, out.logits, atol=1e-5)
    else:
        assert torch.equal(acts[Site("logits")], out.logits)
    assert torch.equal(logits, out.logits)


def test_b8_embed_site(tiny: ls.Model) -> None:
    batch = tiny.tokenize(PROMPTS)
    out = hf_forward(tiny, batch, output_hidden_states=True)
    acts, _ = _acts(tiny, batch, [Site("embed")])
    table = tiny.hf.get_input_embeddings()
    raw = F.embedding(batch.input_ids, table.weight)
    if tiny.arch.name == "gpt2":  # token embedding only; positions are added after it
        assert torch.equal(acts[Site("embed")], raw)
        wpe = tiny.hf.transformer.wpe(batch.position_ids)
        assert torch.allclose(raw + wpe, out.hidden_states[0], atol=0)
    else:  # the embed site is what the first block reads (after Gemma's sqrt(d) scale)
        assert torch.equal(acts[Site("embed")], out.hidden_states[0])


def test_b8_attention_and_mlp_sites_against_recomputation(tiny: ls.Model) -> None:
    """z == pattern @ v, o_proj(z) -> attn_out, down_proj(mlp_post) -> mlp_out, and the residual sums."""
    batch = tiny.tokenize(PROMPTS)
    arch, s = tiny.arch, tiny.shape
    kinds = ["resid_pre", "attn_out", "mlp_out", "mlp_in", "mlp_post", "attn_z", "q", "k", "v", "attn_pattern", "resid_post"]
    if not tiny.is_parallel:
        kinds.append("resid_mid")
    acts, _ = _acts(tiny, batch, tiny.sites(kinds))
    out = hf_forward(tiny, batch, output_attentions=True)
    b, t = batch.shape
    for layer in range(s.n_layers):
        A = lambda kind, layer=layer: acts[Site(kind, layer)]  # noqa: E731
        block = tiny.layers[layer]
        # Shapes follow model.site_shape.
        assert A("q").shape == (b, t, s.n_heads, s.d_head)
        assert A("k").shape == A("v").shape == (b, t, s.n_kv_heads, s.d_head)
        assert A("attn_z").shape == (b, t, s.n_heads, s.d_head)
        assert A("attn_pattern").shape == (b, s.n_heads, t, t)
        assert torch.equal(A("attn_pattern"), out.attentions[layer])
        # z == pattern @ v (v before any rotary; GQA heads share their kv head).
        v = A("v").repeat_interleave(s.n_heads // s.n_kv_heads, dim=2).transpose(1, 2)  # (b, h, t, d)
        z = (A("attn_pattern") @ v).transpose(1, 2)
        assert torch.allclose(z, A("attn_z"), atol=1e-5), f"z != pattern @ v at layer {layer}"
        # o_proj(z) (then Gemma's post-attention norm) == attn_out.
        o = get_module(block, arch.o_proj)(A("attn_z").flatten(-2))
        if arch.attn_out != arch.o_proj:
            o = get_module(block, arch.attn_out)(o)
        assert torch.allclose(o, A("attn_out"), atol=1e-6)
        # down_proj(mlp_post) (then Gemma's post-feedforward norm) == mlp_out.
        m = get_module(block, arch.down_proj)(A("mlp_post"))
        if arch.mlp_out != arch.mlp:
            m = get_module(block, arch.mlp_out)(m)
        assert torch.allclose(m, A("mlp_out"), atol=1e-6)
        # The MLP maps mlp_in to mlp_out.
        mlp_out = get_module(block, arch.mlp)(A("mlp_in"))
        if arch.mlp_out != arch.mlp:
            mlp_out = get_module(block, arch.mlp_out)(mlp_out)
        assert torch.allclose(mlp_out, A("mlp_out"), atol=1e-6)
        # Residual bookkeeping.
        if tiny.is_parallel:
            assert torch.allclose(A("resid_pre") + A("attn_out") + A("mlp_out"), A("resid_post"), atol=1e-5)
        else:
            assert torch.allclose(A("resid_pre") + A("attn_out"), A("resid_mid"), atol=1e-6)
            assert torch.allclose(A("resid_mid") + A("mlp_out"), A("resid_post"), atol=1e-6)
            assert torch.allclose(get_module(block, arch.mlp_norm)(A("resid_mid")), A("mlp_in"), atol=1e-6)
        if layer + 1 < s.n_layers:
            assert torch.equal(A("resid_post"), acts[Site("resid_pre", layer + 1)])


def test_b8_llama_projections_by_hand(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    batch = model.tokenize(PROMPTS)
    s = model.shape
    heads = [Site(kind, layer, head=1) for kind in "qkv" for layer in range(s.n_layers)]
    acts, _ = _acts(model, batch, model.sites(["resid_pre", "q", "k", "v", "mlp_in", "mlp_post"]) + heads)
    for layer, block in enumerate(model.layers):
        x = block.input_layernorm(acts[Site("resid_pre", layer)])
        for kind, proj, n in (("q", block.self_attn.q_proj, s.n_heads), ("k", block.self_attn.k_proj, s.n_kv_heads),
                              ("v", block.self_attn.v_proj, s.n_kv_heads)):  # fmt: skip
            want = (x @ proj.weight.T).unflatten(-1, (n, s.d_head))
            assert torch.allclose(acts[Site(kind, layer)], want, atol=1e-6)
            assert torch.equal(acts[Site(kind, layer, head=1)], acts[Site(kind, layer)][:, :, 1])
        h = acts[Site("mlp_in", layer)]
        want = F.silu(h @ block.mlp.gate_proj.weight.T) * (h @ block.mlp.up_proj.weight.T)
        assert torch.allclose(acts[Site("mlp_post", layer)], want, atol=1e-6)


def test_b8_gpt2_fused_qkv_by_hand(tiny_gpt2: ls.Model) -> None:
    model = tiny_gpt2
    batch = model.tokenize(PROMPTS)
    s = model.shape
    acts, _ = _acts(model, batch, model.sites(["resid_pre", "q", "k", "v", "mlp_post", "resid_mid"]))
    for layer, block in enumerate(model.layers):
        qkv = block.attn.c_attn(block.ln_1(acts[Site("resid_pre", layer)]))
        for i, kind in enumerate("qkv"):
            want = qkv[..., i * s.d_model : (i + 1) * s.d_model].unflatten(-1, (s.n_heads, s.d_head))
            assert torch.allclose(acts[Site(kind, layer)], want, atol=1e-6)
        h = block.ln_2(acts[Site("resid_mid", layer)])
        want = block.mlp.act(block.mlp.c_fc(h))
        assert torch.allclose(acts[Site("mlp_post", layer)], want, atol=1e-6)


def test_b8_neox_per_head_qkv_by_hand() -> None:
    model = ls.load_tiny("gpt_neox")
    batch = model.tokenize(PROMPTS)
    s = model.shape
    acts, _ = _acts(model, batch, model.sites(["resid_pre", "q", "k", "v"]))
    for layer, block in enumerate(model.layers):
        raw = block.attention.query_key_value(block.input_layernorm(acts[Site("resid_pre", layer)]))
        per_head = raw.unflatten(-1, (s.n_heads, 3 * s.d_head))
        for i, kind in enumerate("qkv"):
            assert torch.allclose(acts[Site(kind, layer)], per_head[..., i * s.d_head : (i + 1) * s.d_head], atol=1e-6)


# ---- B9 -------------------------------------------------------------------------------------------
def test_b9_logit_lens_at_last_layer_equals_logits(tiny: ls.Model) -> None:
    batch = tiny.tokenize(PROMPTS)
    L = tiny.shape.n_layers
    acts, logits = _acts(tiny, batch, [Site("resid_post", L - 1)])
    lens = tiny.unembed(acts[Site("resid_post", L - 1)])
    assert (lens - logits).abs().max() <= 1e-5
    # Earlier layers differ (the lens is not trivially the logits).
    acts, _ = _acts(tiny, batch, [Site("resid_post", 0)])
    assert (tiny.unembed(acts[Site("resid_post", 0)]) - logits).abs().max() > 1e-3


# ---- B12 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ls.TINY_FAMILIES)
def test_b12_eager_vs_sdpa(family: str) -> None:
    if family == "gemma2":
        with pytest.raises(ValueError, match="eager"):  # transformers itself refuses sdpa for Gemma 2
            ls.load_tiny(family, attn_implementation="sdpa")
        return
    eager = ls.load_tiny(family)
    sdpa = ls.load_tiny(family, attn_implementation="sdpa")
    assert sdpa.attn_implementation == "sdpa"
    for (n, p), (_, q) in zip(eager.hf.named_parameters(), sdpa.hf.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    batch = eager.tokenize(PROMPTS)
    sites = eager.sites(["resid_post", "attn_z"])
    a, la = _acts(eager, batch, sites)
    b, lb = _acts(sdpa, batch, sites)
    mask = batch.attention_mask.bool()
    assert (la - lb)[mask].abs().max() <= 1e-4
    for site in sites:
        assert (a[site] - b[site])[mask].abs().max() <= 1e-4, site


def test_b8_gemma3_multimodal_checkpoint_maps_its_text_model() -> None:
    """Gemma3ForConditionalGeneration (model_type "gemma3") keeps its text blocks under model.language_model."""
    import transformers as tf

    from lmscope.core.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, vocab_size=len(tok), max_position_embeddings=256, sliding_window=64)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    hf = tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    hf.config._attn_implementation = "eager"
    model = ls.Model(hf, tok, model_id="tiny-gemma3-mm")
    assert model.arch.layers == "model.language_model.layers" and model.shape.n_layers == 2
    batch = model.tokenize(PROMPTS)
    out = hf_forward(model, batch, output_hidden_states=True)
    acts, logits = _acts(model, batch, [Site("resid_post", 0), Site("final_norm"), Site("attn_z", 1)])
    assert torch.equal(acts[Site("resid_post", 0)], out.hidden_states[1]) and torch.equal(logits, out.logits)
    assert (acts[Site("final_norm")] - out.hidden_states[-1]).abs().max() <= 1e-6
    assert ls.active_hooks(model) == []
