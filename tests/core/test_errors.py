"""RELIABILITY.md G (core rows): bad input gets a clear error that says what and the limit.

Every test checks the message carries the facts the user needs (names, widths, counts, limits),
and that nothing was left attached to the model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lmscope as ls
from lmscope.core import edits
from lmscope.core.architectures import ARCHITECTURES, architecture_for
from lmscope.core.sites import Site
from lmscope.core.tiny import tiny_tokenizer

from ._util import PROMPTS, hook_counts


@pytest.fixture(autouse=True)
def _no_leftovers(tiny_llama: ls.Model):
    before = hook_counts(tiny_llama)
    yield
    assert hook_counts(tiny_llama) == before and ls.active_hooks(tiny_llama) == []


# ---- site names and layers ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, closest",
    [
        ("blocks.1.hook_resid_pots", "blocks.1.hook_resid_post"),
        ("blocks.2.attn.hook_zz", "blocks.2.attn.hook_z"),
        ("blocks.0.mlp.hook_pots", "blocks.0.mlp.hook_post"),
        ("hook_embedd", "hook_embed"),
        ("resid_post", "hook_resid_post"),
        ("blocks.1.hook_resid_post.2", "blocks.1.hook_resid_post"),
    ],
)
def test_unknown_site_names_closest_valid_sites_and_n_layers(tiny_llama: ls.Model, name: str, closest: str) -> None:
    n = tiny_llama.shape.n_layers
    with pytest.raises(ValueError) as info:
        with ls.capture(tiny_llama, [name]):
            pass  # pragma: no cover
    msg = str(info.value)
    assert closest in msg and f"n_layers={n}" in msg, msg
    with pytest.raises(ValueError, match=f"n_layers={n}"):
        with ls.intervene(tiny_llama, {name: edits.zero()}):
            pass  # pragma: no cover


def test_unknown_site_kind_suggests_a_kind() -> None:
    with pytest.raises(ValueError, match="did you mean.*resid_post"):
        Site("resid_pots", 1)
    with pytest.raises(ValueError, match="needs a layer"):
        Site("resid_post")
    with pytest.raises(ValueError, match=">= 0"):
        Site("resid_post", -1)
    with pytest.raises(TypeError, match="int"):
        Site("resid_post", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no heads"):
        Site("mlp_out", 1, head=0)


@pytest.mark.parametrize("site", [Site("resid_post", 3), Site("attn_z", 7), Site("mlp_post", 100)])
def test_layer_out_of_range_names_n_layers(tiny_llama: ls.Model, site: Site) -> None:
    n = tiny_llama.shape.n_layers
    with pytest.raises(IndexError, match=f"n_layers={n}"):
        with ls.capture(tiny_llama, [site]):
            pass  # pragma: no cover
    with pytest.raises(IndexError, match=f"n_layers={n}"):
        with ls.intervene(tiny_llama, {site: edits.scale(2.0)}):
            pass  # pragma: no cover
    with pytest.raises(IndexError, match=f"n_layers={n}"):
        with ls.capture(tiny_llama, [str(site)]):
            pass  # pragma: no cover


def test_head_out_of_range_names_the_head_count(tiny_llama: ls.Model) -> None:
    s = tiny_llama.shape
    with pytest.raises(IndexError, match=f"{s.n_heads} heads"):
        with ls.capture(tiny_llama, [Site("attn_z", 0, head=s.n_heads)]):
            pass  # pragma: no cover
    with pytest.raises(IndexError, match=f"{s.n_kv_heads} heads"):
        with ls.intervene(tiny_llama, {Site("k", 0, head=s.n_kv_heads): edits.zero()}):
            pass  # pragma: no cover


def test_parallel_block_has_no_resid_mid() -> None:
    model = ls.load_tiny("gpt_neox")
    assert model.is_parallel
    with pytest.raises(NotImplementedError, match="resid_mid.*parallel"):
        with ls.capture(model, [Site("resid_mid", 0)]):
            pass  # pragma: no cover
    assert ls.active_hooks(model) == []


# ---- vectors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 63, 65, 128])
def test_vector_width_mismatch_names_both_widths(tiny_llama: ls.Model, width: int) -> None:
    d = tiny_llama.shape.d_model
    makers = [
        lambda v: edits.add(v),
        lambda v: edits.mean_ablate(v),
        lambda v: edits.project_out(v + 1),
        lambda v: edits.patch(v.expand(1, 4, width)),
        lambda v: edits.resample(v[None]),
    ]
    for make in makers:
        edit = make(torch.zeros(width))
        with pytest.raises(ValueError) as info:
            with ls.intervene(tiny_llama, {Site("resid_post", 0): edit}):
                pass  # pragma: no cover
        msg = str(info.value)
        assert f"width {width}" in msg and f"width {d}" in msg, msg


def test_index_selected_width_mismatch(tiny_llama: ls.Model) -> None:
    site = Site("mlp_post", 0)
    with ls.intervene(tiny_llama, {site: edits.add(torch.ones(2), index=[3, 7])}):
        tiny_llama("hi")
    with pytest.raises(ValueError, match="width 3.*width 2"):
        with ls.intervene(tiny_llama, {site: edits.add(torch.ones(3), index=[3, 7])}):
            pass  # pragma: no cover
    with pytest.raises(IndexError, match="width 128"):
        with ls.intervene(tiny_llama, {site: edits.zero(index=[5, 128])}):
            pass  # pragma: no cover


def test_vectors_are_never_broadcast(tiny_llama: ls.Model) -> None:
    with pytest.raises(ValueError, match="1-D"):
        edits.add(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="width 1"):
        with ls.intervene(tiny_llama, {Site("resid_post", 0): edits.replace(torch.zeros(1))}):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda v: edits.add(v), "steering vector"),
        (lambda v: edits.mean_ablate(v), "replacement value"),
        (lambda v: edits.project_out(v), "direction"),
        (lambda v: edits.patch(v[None, None]), "patch source"),
        (lambda v: edits.resample(v[None]), "resample pool"),
    ],
)
def test_nan_inf_named_with_count(make, name: str) -> None:
    v = torch.ones(64)
    v[3] = float("nan")
    v[10] = float("inf")
    v[11] = float("-inf")
    with pytest.raises(ValueError, match=f"{name} contains 3 NaN/Inf"):
        make(v)


def test_other_edit_misuse(tiny_llama: ls.Model) -> None:
    batch = tiny_llama.tokenize(PROMPTS)
    with pytest.raises(ValueError, match="positions must be one of"):
        edits.add(torch.ones(64), positions="last")
    with pytest.raises(ValueError, match="1-D LongTensor"):
        edits.add(torch.ones(64), positions=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="rows but the batch has"):
        with ls.intervene(tiny_llama, {Site("resid_post", 0): edits.add(torch.ones(64), positions=torch.tensor([1, 2]))}):
            tiny_llama(batch)
    with pytest.raises(IndexError, match="patch source has 2 positions"):
        with ls.intervene(tiny_llama, {Site("resid_post", 0): edits.patch(torch.zeros(1, 2, 64))}):
            tiny_llama(batch)
    with pytest.raises(ValueError, match="patch source has batch 2 but the run has batch 3"):
        with ls.intervene(tiny_llama, {Site("resid_post", 0): edits.patch(torch.zeros(2, 20, 64))}):
            tiny_llama(batch)
    with pytest.raises(ValueError, match="custom edit returned shape"):
        with ls.intervene(tiny_llama, {Site("resid_post", 0): edits.custom(lambda x: x[..., :3])}):
            tiny_llama(batch)
    with pytest.raises(NotImplementedError, match="read-only"):
        with ls.intervene(tiny_llama, {Site("attn_pattern", 0): edits.zero()}):
            pass  # pragma: no cover
    with pytest.raises(TypeError, match="lmscope Edit"):
        with ls.intervene(tiny_llama, {Site("resid_post", 0): [lambda x: x]}):  # type: ignore[list-item]
            pass  # pragma: no cover
    with pytest.raises(TypeError, match="lmscope Edit"):
        with ls.intervene(tiny_llama, {Site("resid_post", 0): lambda x: x}):  # type: ignore[dict-item]
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="at least one site"):
        with ls.capture(tiny_llama, []):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="stop_early"):
        with ls.capture(tiny_llama, [Site("resid_post", 0)], grads=True, stop_early=True):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="non-zero"):
        edits.project_out(torch.zeros(64))


def test_missing_capture_key_says_what_was_captured(tiny_llama: ls.Model) -> None:
    with ls.capture(tiny_llama, [Site("resid_post", 0)]) as acts:
        tiny_llama("hi")
    with pytest.raises(KeyError, match="blocks.1.hook_resid_post was not captured.*blocks.0.hook_resid_post"):
        acts[Site("resid_post", 1)]


# ---- architectures ------------------------------------------------------------------------------
class _Weird(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "weird", "num_hidden_layers": 2})()
        self.a = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        self.b = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])


def test_unsupported_architecture_lists_families_and_how_to_map() -> None:
    with pytest.raises(NotImplementedError) as info:
        architecture_for(_Weird())
    msg = str(info.value)
    assert "'weird'" in msg and "Architecture(" in msg
    for family in ("llama", "gpt2", "gpt_neox", "gemma2", "phi3", "qwen3"):
        assert family in msg
    assert set(ARCHITECTURES) >= {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "phi3"}


def test_discovered_family_gives_residual_sites_only() -> None:
    """An unmapped family (OPT) is discovered: resid_post matches HF; finer sites say they are unmapped."""
    from transformers import OPTConfig, OPTForCausalLM

    tok = tiny_tokenizer()
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=32)  # fmt: skip
    torch.manual_seed(0)
    model = ls.Model(OPTForCausalLM(cfg), tok, model_id="tiny-opt")
    assert model.arch.name == "discovered:opt"
    assert {s.kind for s in model.sites()} == {"embed", "resid_pre", "resid_post", "logits"}
    batch = model.tokenize(PROMPTS)
    with ls.capture(model, [Site("resid_post", 0)]) as acts:
        model(batch)
    with torch.no_grad():
        hs = model.hf(**batch.model_inputs(), output_hidden_states=True).hidden_states
    assert torch.equal(acts[Site("resid_post", 0)], hs[1])
    with pytest.raises(NotImplementedError, match="not mapped.*discovered"):
        with ls.capture(model, [Site("attn_z", 0)]):
            pass  # pragma: no cover
    with pytest.raises(NotImplementedError, match="final norm"):
        model.unembed(torch.zeros(1, 32))
    assert ls.active_hooks(model) == []
