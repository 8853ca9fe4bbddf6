"""RELIABILITY.md D18: same seed, same outputs, bitwise, on CPU for capture, patch and steer."""

from __future__ import annotations

import torch

import lmscope as ls
from lmscope.core import edits
from lmscope.core.sites import Site

from ._util import PROMPTS


def _run(model: ls.Model) -> dict[str, torch.Tensor]:
    """Capture, patch and steer outputs of one model (everything derived from seeded inputs)."""
    batch = model.tokenize(PROMPTS)
    L = model.shape.n_layers
    sites = model.sites(["resid_post", "attn_z", "mlp_post"])
    out: dict[str, torch.Tensor] = {}
    with ls.capture(model, sites) as acts:
        out["logits"] = model(batch)
    out.update({str(s): acts[s] for s in sites})
    corrupt = model.tokenize(list(reversed(PROMPTS)))
    with ls.capture(model, [Site("resid_post", 0)]) as src:
        model(corrupt)
    with ls.intervene(model, {Site("resid_post", 0): edits.patch(src[Site("resid_post", 0)], positions=[1, 2])}):
        out["patched"] = model(batch)
    v = torch.randn(model.shape.d_model, generator=torch.Generator().manual_seed(7))
    with ls.intervene(model, {Site("resid_post", L - 2): edits.add(v, scale=4.0)}), ls.capture(model, sites[-1:]) as st:
        out["steered"] = model(batch)
    out["steered_act"] = st[sites[-1]]
    pool = acts[Site("mlp_post", 0)].flatten(0, 1)
    with ls.intervene(model, {Site("mlp_post", 0): edits.resample(pool, seed=3)}):
        out["resampled"] = model(batch)
    return out


def test_d18_same_seed_same_outputs(tiny: ls.Model) -> None:
    family = tiny.model_id[len("tiny-") : tiny.model_id.rindex("-seed")]
    twin = ls.load_tiny(family, seed=0)
    a, b, again = _run(tiny), _run(twin), _run(tiny)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: a fresh model with the same seed differs"
        assert torch.equal(a[key], again[key]), f"{key}: a second run of the same model differs"
    other = _run(ls.load_tiny(family, seed=1))
    assert not torch.equal(a["logits"], other["logits"])
    assert not torch.equal(a["steered"], a["logits"]) and not torch.equal(a["patched"], a["logits"])
