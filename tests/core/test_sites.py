"""Sites: names round-trip in TransformerLens / SAELens spelling, and shapes match what is captured."""

from __future__ import annotations

import pytest

import lmscope as ls
from lmscope.core.sites import ALL_KINDS, Site, as_site

from ._util import PROMPTS

# Names as TransformerLens writes them (the oracle is the literal string, not our formatter).
TL_NAMES = {
    "hook_embed": Site("embed"),
    "blocks.0.hook_resid_pre": Site("resid_pre", 0),
    "blocks.12.hook_resid_mid": Site("resid_mid", 12),
    "blocks.12.hook_resid_post": Site("resid_post", 12),
    "blocks.3.hook_attn_out": Site("attn_out", 3),
    "blocks.3.hook_mlp_out": Site("mlp_out", 3),
    "blocks.3.hook_mlp_in": Site("mlp_in", 3),
    "blocks.5.mlp.hook_post": Site("mlp_post", 5),
    "blocks.3.attn.hook_z": Site("attn_z", 3),
    "blocks.3.attn.hook_q": Site("q", 3),
    "blocks.3.attn.hook_k": Site("k", 3),
    "blocks.3.attn.hook_v": Site("v", 3),
    "blocks.3.attn.hook_pattern": Site("attn_pattern", 3),
    "ln_final.hook_normalized": Site("final_norm"),
    "hook_logits": Site("logits"),
    "blocks.3.attn.hook_z.2": Site("attn_z", 3, head=2),
}


@pytest.mark.parametrize("name", list(TL_NAMES))
def test_names_round_trip(name: str) -> None:
    site = TL_NAMES[name]
    assert Site.parse(name) == site and as_site(name) == site
    assert str(site) == name and site.name == name
    assert Site.parse(str(site)) == site
    assert eval(repr(site), {"Site": Site}) == site


def test_aliases_parse() -> None:
    assert Site.parse("blocks.2.hook_z") == Site("attn_z", 2)
    assert Site.parse("blocks.2.hook_post") == Site("mlp_post", 2)
    assert Site("hook_pattern", 1) == Site("attn_pattern", 1)
    assert Site.parse("embed") == Site("embed") and Site.parse("logits") == Site("logits")
    assert Site("attn_z", 1, head=3).whole == Site("attn_z", 1)
    assert hash(Site("q", 1)) == hash(Site.parse("blocks.1.attn.hook_q"))


def test_depth_orders_the_forward_pass() -> None:
    order = [Site("embed"), Site("resid_pre", 0), Site("q", 0), Site("attn_pattern", 0), Site("attn_z", 0),
             Site("attn_out", 0), Site("resid_mid", 0), Site("mlp_in", 0), Site("mlp_post", 0), Site("mlp_out", 0),
             Site("resid_post", 0), Site("resid_pre", 1), Site("final_norm"), Site("logits")]  # fmt: skip
    assert sorted(reversed(order), key=lambda s: s.depth(2)) == order


def test_site_shapes_match_captured_tensors(tiny: ls.Model) -> None:
    """model.site_shape / site_width describe exactly what capture returns, for every site of the family."""
    kinds = [k for k in ALL_KINDS if not (k == "resid_mid" and tiny.is_parallel)]
    sites = tiny.sites(kinds) + [Site("attn_z", 1, head=0), Site("k", 1, head=1), Site("attn_pattern", 1, head=2)]
    assert len(tiny.sites()) == 3 + (11 if tiny.is_parallel else 12) * tiny.shape.n_layers
    assert set(tiny.sites()) == set(tiny.sites(kinds))
    batch = tiny.tokenize(PROMPTS)
    b, t = batch.shape
    with ls.capture(tiny, sites) as acts:
        tiny(batch)
    assert set(acts) == set(sites)
    for site in sites:
        named = tiny.site_shape(site)
        sizes = tuple(int(x.split("=")[1]) if "=" in x else {"batch": b, "seq": t}[x] for x in named)
        assert tuple(acts[site].shape) == sizes, site
        if site.kind != "attn_pattern":
            assert acts[site].shape[-1] == tiny.site_width(site)
