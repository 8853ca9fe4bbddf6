"""Splicing, metrics, SAELens interop, features, dashboards and steering."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file as load
from safetensors.torch import save_file

import lmscope as ls
from lmscope.saes import SAE, SAEConfig
from lmscope.saes.dashboard import write_dashboards
from lmscope.saes.features import harvest_acts, latent_stats, logit_effects
from lmscope.saes.interop import load_saelens, save_saelens
from lmscope.saes.metrics import check_site, clamp_latent, evaluate_sae, splice
from lmscope.saes.steering import mention_rate

SITE = "blocks.1.hook_resid_post"


def _random_sae(model: ls.Model, arch: str = "topk", d_sae: int = 96, seed: int = 0) -> SAE:
    cfg = SAEConfig(arch, model.shape.d_model, d_sae, k=6, hook_name=SITE, model_name=model.model_id)
    return SAE(cfg, generator=torch.Generator().manual_seed(seed)).eval()


def _identity_sae(model: ls.Model) -> SAE:
    """relu(x) - relu(-x) = x: a ReLU SAE that reconstructs exactly (the oracle for FVU 0, CE recovered 1)."""
    d = model.shape.d_model
    sae = SAE(SAEConfig("standard", d, 2 * d, hook_name=SITE, model_name=model.model_id))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_splice_with_error_term_keeps_logits(family: str) -> None:
    model = ls.load_tiny(family)
    sae = _random_sae(model)
    ids = torch.randint(0, 200, (2, 10))
    clean = model(ids)
    with ls.intervene(model, {SITE: splice(sae, with_error=True)}):
        kept = model(ids)
    with ls.intervene(model, {SITE: splice(sae)}):
        changed = model(ids)
    assert (kept - clean).abs().max() <= 1e-5
    assert (changed - clean).abs().max() > 1e-3  # the reconstruction alone does change them


def test_evaluate_identity_sae_gives_perfect_scores(tiny_llama: ls.Model) -> None:
    ids = torch.randint(0, 200, (4, 12))
    ev = evaluate_sae(tiny_llama, _identity_sae(tiny_llama), ids, skip_first=1, batch_size=2)
    assert ev.fvu < 1e-10 and ev.kl_spliced < 1e-8
    assert abs(ev.ce_recovered - 1.0) < 1e-4
    assert ev.tokens == 4 * 11
    # Oracle for L0: every coordinate is non-zero in exactly one of the two halves.
    assert abs(ev.l0 - tiny_llama.shape.d_model) < 1e-9


def test_evaluate_matches_a_hand_computed_fvu(tiny_llama: ls.Model) -> None:
    sae = _random_sae(tiny_llama)
    ids = torch.randint(0, 200, (3, 9))
    ev = evaluate_sae(tiny_llama, sae, ids, skip_first=1)
    with ls.capture(tiny_llama, [SITE]) as acts:
        tiny_llama(ids)
    x = acts[SITE][:, 1:].reshape(-1, tiny_llama.shape.d_model)
    with torch.no_grad():
        z = sae.encode(x)
        fvu = float((x - sae.decode(z)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert abs(ev.fvu - fvu) < 1e-5
    assert abs(ev.l0 - float((z > 0).sum(-1).float().mean())) < 1e-9
    assert ev.dead_frac == float(((z > 0).sum(0) == 0).float().mean())


def test_check_site_errors_and_warnings(tiny_llama: ls.Model) -> None:
    sae = _random_sae(tiny_llama)
    assert check_site(tiny_llama, sae) == ls.Site("resid_post", 1)
    with pytest.raises(ValueError, match="trained at blocks.1.hook_resid_post"):
        check_site(tiny_llama, sae, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="d_in=64.*width 128"):
        check_site(tiny_llama, SAE(SAEConfig("topk", 64, 8, k=2, hook_name="blocks.0.mlp.hook_post")))
    other = SAE(SAEConfig("topk", 64, 8, k=2, hook_name=SITE, model_name="someone/else"))
    with pytest.warns(UserWarning, match="someone/else"):
        check_site(tiny_llama, other)


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk", "jumprelu"])
def test_saelens_layout_round_trip(arch: str, tmp_path) -> None:
    x = torch.randn(50, 16) * 3
    sae = SAE(SAEConfig(arch, 16, 40, k=4, hook_name=SITE, model_name="m", normalize_activations="expected_average_only_in",
                        scaling_factor=0.37), generator=torch.Generator().manual_seed(1)).eval()  # fmt: skip
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
        sae.log_threshold.fill_(-1.0)
    folder = save_saelens(sae, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == ("jumprelu" if arch == "batchtopk" else arch)
    assert cfg["metadata"]["hook_name"] == SITE and cfg["normalize_activations"] == "none"
    back = load_saelens(folder)
    assert torch.allclose(back.decode(back.encode(x)), sae.decode(sae.encode(x)), atol=1e-5)
    assert torch.allclose(back.encode(x), sae.encode(x), atol=1e-5)


def _write(tmp_path, cfg: dict, tensors: dict | None = None):
    from safetensors.torch import save_file

    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    t = tensors or {"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 4), "b_dec": torch.zeros(4)}
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    return tmp_path


def test_loader_refuses_missing_rule_unknown_architecture_and_bad_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="refusing to guess ReLU"):
        load_saelens(_write(tmp_path, {"d_in": 4, "d_sae": 8}))
    with pytest.raises(ValueError, match=r"unsupported SAE architecture 'gated'.*standard.*topk.*jumprelu"):
        load_saelens(_write(tmp_path, {"d_in": 4, "d_sae": 8, "architecture": "gated"}))
    with pytest.raises(ValueError, match="needs 'k'"):
        load_saelens(_write(tmp_path, {"d_in": 4, "d_sae": 8, "architecture": "topk"}))
    with pytest.raises(ValueError, match="lacks tensor 'threshold'"):
        load_saelens(_write(tmp_path, {"d_in": 4, "d_sae": 8, "architecture": "jumprelu"}))
    with pytest.raises(ValueError, match="W_dec has shape"):
        load_saelens(_write(tmp_path, {"d_in": 4, "d_sae": 8, "architecture": "standard"},
                            {"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(4, 8),
                             "b_dec": torch.zeros(4)}))  # fmt: skip
    (tmp_path / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_saelens(tmp_path)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_saelens(tmp_path / "nowhere")


@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="sae-lens is not installed")
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_itself_reads_our_files(arch: str, tmp_path) -> None:
    from sae_lens import SAE as SaeLensSAE

    sae = SAE(SAEConfig(arch, 16, 40, k=4, hook_name=SITE, scaling_factor=2.0), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.b_dec.normal_()
    theirs = SaeLensSAE.load_from_disk(str(save_saelens(sae.eval(), tmp_path)))
    x = torch.randn(20, 16)
    assert torch.allclose(theirs.encode(x), sae.encode(x), atol=1e-5)
    assert torch.allclose(theirs.decode(theirs.encode(x)), sae.decode(sae.encode(x)), atol=1e-5)


def test_latent_stats_match_brute_force(tiny_llama: ls.Model) -> None:
    sae = _random_sae(tiny_llama)
    acts, ids = harvest_acts(tiny_llama, SITE, torch.randint(0, 200, (6, 10)))
    st = latent_stats(sae, acts, ids, top_k=4, block=7)
    z = sae.encode(acts)
    assert torch.allclose(st.density, (z > 0).float().mean(0))
    assert torch.allclose(st.top_values, z.t().topk(4, dim=-1).values.clamp(min=0))
    for lat in range(sae.cfg.d_sae):
        for v, i in zip(st.top_values[lat], st.top_index[lat], strict=True):
            if v > 0:  # encoded in blocks of 7 rows vs all at once: equal up to float rounding, not bitwise
                assert torch.isclose(z[i, lat], v, rtol=1e-5, atol=1e-6)


def test_logit_effects_match_manual_unembedding(tiny_llama: ls.Model) -> None:
    sae = _random_sae(tiny_llama)
    eff = logit_effects(tiny_llama, sae, [3], top=5)
    norm_w = tiny_llama.hf.model.norm.weight
    logits = (sae.W_dec[3] * norm_w) @ tiny_llama.hf.lm_head.weight.T
    top = logits.topk(5).indices.tolist()
    assert [t for t, _ in eff[3]["promoted"]] == [tiny_llama.tokenizer.decode([i]) for i in top]


def test_dashboards_are_written_with_a_searchable_index(tiny_llama: ls.Model, tmp_path) -> None:
    sae = _random_sae(tiny_llama)
    acts, ids = harvest_acts(tiny_llama, SITE, torch.randint(0, 200, (4, 12)))
    st = latent_stats(sae, acts, ids)
    live = (st.density > 0).nonzero()[:3, 0].tolist()
    folder = write_dashboards(tiny_llama, sae, st, tmp_path, live)
    index = (folder / "index.html").read_text()
    assert "oninput" in index and all(f"latent_{i}.html" in index for i in live)
    page = (folder / f"latent_{live[0]}.html").read_text()
    assert "Top activating contexts" in page and "class='pk'" in page
    import re

    from lmscope.saes.features import sample_codes

    z = sample_codes(sae, st)[:, live[0]]
    counts = [int(c) for c in re.findall(r"<title>[^<]*: (\d+)</title>", page)]
    assert sum(counts) == int((z > 0).sum()) and len(counts) == 24  # the histogram counts every active token once
    assert page.count("<div style='background:#3a3") == 10  # ten promoted-token bars


def test_clamp_sets_the_latent_and_mention_rate_counts_whole_words(tiny_llama: ls.Model) -> None:
    sae = _identity_sae(tiny_llama)
    x = torch.randn(3, 5, tiny_llama.shape.d_model).abs()  # positive: latent i of the identity SAE is x_i
    out = clamp_latent(sae, 2, 7.5)(x, torch.arange(5), 5)
    assert torch.allclose(sae.encode(out)[..., 2], torch.full((3, 5), 7.5), atol=1e-5)
    assert mention_rate(["The Bridge!", "bridges", "no", "bridgework"], ["bridge"]) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        mention_rate([], ["a"])


@pytest.mark.bundled
def test_splice_with_error_keeps_bundled_logits(smollm: ls.Model) -> None:
    """The bundled model has residual norms ~25,000 on sink tokens: the error term must still restore x exactly."""
    site = "blocks.12.hook_resid_post"
    sae = SAE(SAEConfig("topk", 576, 1152, k=16, hook_name=site, model_name=smollm.model_id),
              generator=torch.Generator().manual_seed(0)).eval()  # fmt: skip
    batch = smollm.tokenize(["def f(x):\n    return 'a' + x", "The capital of Poland is"])
    clean = smollm(batch)
    with ls.intervene(smollm, {site: splice(sae, with_error=True)}):
        out = smollm(batch)
    assert (out - clean).abs().max() <= 1e-5


@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="sae-lens is not installed")
def test_saelens_rescale_acts_by_decoder_norm_matches_saelens(tmp_path) -> None:
    """A TopK file with rescale_acts_by_decoder_norm and non-unit decoder rows: our codes equal SAELens' own."""
    from sae_lens import SAE as SaeLensSAE

    sae = SAE(SAEConfig("topk", 16, 40, k=4, hook_name=SITE), generator=torch.Generator().manual_seed(3))
    folder = save_saelens(sae.eval(), tmp_path)
    w = load(str(folder / "sae_weights.safetensors"))
    gen = torch.Generator().manual_seed(4)
    w["W_dec"] = w["W_dec"] * (0.1 + 5 * torch.rand(40, 1, generator=gen))  # rows far from unit norm
    save_file(w, str(folder / "sae_weights.safetensors"))
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["rescale_acts_by_decoder_norm"] = True
    (folder / "cfg.json").write_text(json.dumps(cfg))
    theirs = SaeLensSAE.load_from_disk(str(folder))
    ours = load_saelens(folder)
    x = torch.randn(32, 16, generator=gen) * 3
    assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-4)
    assert torch.allclose(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)), atol=1e-4)


def test_saelens_flags_that_change_the_computation_are_refused(tmp_path) -> None:
    sae = SAE(SAEConfig("topk", 16, 40, k=4, hook_name=SITE), generator=torch.Generator().manual_seed(3))
    folder = save_saelens(sae.eval(), tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value, match in [("reshape_activations", "hook_z", "reshape_activations"),
                              ("hook_head_index", 2, "hook_head_index"),
                              ("some_future_flag", True, "some_future_flag")]:  # fmt: skip
        (folder / "cfg.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(ValueError, match=match):
            load_saelens(folder)


def test_a_flipped_bit_in_an_saelens_folder_is_caught(tmp_path) -> None:
    sae = SAE(SAEConfig("topk", 16, 40, k=4, hook_name=SITE), generator=torch.Generator().manual_seed(3))
    folder = save_saelens(sae.eval(), tmp_path)
    path = folder / "sae_weights.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_saelens(folder)


def test_splice_refuses_a_site_of_another_width_or_name(tiny_llama: ls.Model) -> None:
    sae = _random_sae(tiny_llama)
    batch = tiny_llama.tokenize(["hello world"])
    with pytest.raises(ValueError, match="trained at"):
        with ls.intervene(tiny_llama, {"blocks.0.hook_resid_post": splice(sae)}):
            tiny_llama(batch)
    with pytest.raises(ValueError, match="width"):
        with ls.intervene(tiny_llama, {"blocks.1.hook_mlp_post": clamp_latent(sae, 0, 1.0)}):
            tiny_llama(batch)
    assert ls.active_hooks(tiny_llama) == []
