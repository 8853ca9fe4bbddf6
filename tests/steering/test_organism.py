"""The refusal organism's machinery: LoRA against merged weights, training that resumes exactly, the data
splits, and the refusal experiment's interventions (tiny models; docs/steering.md gives the bundled run)."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.core.architectures import get_module
from lmscope.core.sites import Site
from lmscope.experiments.identity import StaleResume
from lmscope.steering.organism import LoRA, OrganismConfig, organism_data, organism_prompts, train_organism
from lmscope.steering.refusal import RefusalConfig, ablate_to_mean, refusal_page, run_refusal


def _randomised(model: ls.Model, seed: int = 0) -> LoRA:
    lora = LoRA.for_model(model, rank=3, alpha=6.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for b in lora.B:
            b.copy_(0.2 * torch.randn(b.shape, generator=g))
    return lora


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attached_lora_equals_the_naively_merged_weights(family: str) -> None:
    model = ls.load_tiny(family)
    lora = _randomised(model)
    ids = torch.randint(5, model.shape.vocab, (2, 7), generator=torch.Generator().manual_seed(3))
    before = model(ids)
    with lora.attached(model):
        hooked = model(ids)
    originals = {p: get_module(model.hf, p).weight.detach().clone() for p in lora.paths}
    with torch.no_grad():  # the oracle: W + (alpha / r) B A written by hand
        for i, p in enumerate(lora.paths):
            mod = get_module(model.hf, p)
            d = lora.scale * lora.B[i] @ lora.A[i]
            mod.weight.add_(d.T if type(mod).__name__ == "Conv1D" else d)
    naive = model(ids)
    with torch.no_grad():
        for p, w in originals.items():
            get_module(model.hf, p).weight.copy_(w)
    with lora.merged(model):
        merged = model(ids)
    torch.testing.assert_close(hooked, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, naive, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, naive, atol=1e-3)
    assert all(torch.equal(get_module(model.hf, p).weight, w) for p, w in originals.items())  # restored exactly


def test_merged_weights_come_back_after_an_error_and_zero_b_changes_nothing() -> None:
    model = ls.load_tiny("llama")
    fresh = LoRA.for_model(model, rank=2)
    ids = torch.randint(5, model.shape.vocab, (1, 5), generator=torch.Generator().manual_seed(0))
    ref = model(ids)
    with fresh.attached(model):
        torch.testing.assert_close(model(ids), ref, atol=0, rtol=0)
    lora = _randomised(model)
    w0 = get_module(model.hf, lora.paths[0]).weight.detach().clone()
    with pytest.raises(RuntimeError, match="boom"), lora.merged(model):
        raise RuntimeError("boom")
    assert torch.equal(get_module(model.hf, lora.paths[0]).weight, w0)
    assert not ls.active_hooks(model)


def test_splits_share_no_task_and_no_template() -> None:
    d = organism_data()
    for key in ("harmful", "harmless", "templates"):
        parts = [set(d[key][s]) for s in ("train", "dev", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]), key
    harmful, harmless = organism_prompts("test")
    assert "List three benefits of yoga." in harmless and len(harmful) == 20 * 3
    with pytest.raises(ValueError, match="split"):
        organism_prompts("validation")


CFG = OrganismConfig(rank=2, steps=4, batch_size=4, answer_tokens=4, checkpoint_every=1, lr=5e-3)


def test_training_lowers_the_loss_and_resumes_to_the_same_adapter(tmp_path) -> None:
    model = ls.load_tiny("llama")
    whole = train_organism(model, CFG.__class__(**{**CFG.__dict__, "steps": 12}))
    losses = [r["loss"] for r in whole.log]
    assert sum(losses[-4:]) < sum(losses[:4])
    full = train_organism(model, CFG)
    part = train_organism(model, CFG, out_dir=tmp_path, stop_after=2)
    assert len(part.log) == 2
    resumed = train_organism(model, CFG, out_dir=tmp_path)
    assert resumed.resumed_from == 2 and [r["step"] for r in resumed.log] == [1, 2, 3, 4]
    for name, t in full.lora.tensors().items():
        torch.testing.assert_close(resumed.lora.tensors()[name], t, atol=1e-6, rtol=1e-5)
    with pytest.raises(StaleResume):
        train_organism(model, CFG.__class__(**{**CFG.__dict__, "lr": 1e-2}), out_dir=tmp_path)
    assert all(p.requires_grad for p in model.hf.parameters())  # the model is left as it was


def test_adapter_round_trip_and_refusal_of_other_weights(tmp_path) -> None:
    model = ls.load_tiny("llama")
    lora = _randomised(model)
    path = lora.save(tmp_path / "adapter.safetensors", model)
    back = LoRA.load(path, model)
    assert all(torch.equal(back.tensors()[k], v) for k, v in lora.tensors().items())
    with pytest.raises(ValueError, match="other weights"):
        LoRA.load(path, ls.load_tiny("llama", seed=1))


def test_ablation_to_the_mean_sets_every_layers_projection() -> None:
    model = ls.load_tiny("llama")
    g = torch.Generator().manual_seed(0)
    u = torch.randn(model.shape.d_model, generator=g)
    means = torch.randn(model.shape.n_layers, generator=g)
    sites = [Site("resid_post", layer) for layer in range(model.shape.n_layers)]
    with ablate_to_mean(model, u, means), ls.capture(model, sites) as acts:
        model("the dog saw the cat")
    for layer, site in enumerate(sites):
        proj = acts[site] @ (u / u.norm())
        torch.testing.assert_close(proj, torch.full_like(proj, float(means[layer])), atol=1e-4, rtol=0)


def test_the_refusal_experiment_runs_end_to_end_with_its_controls() -> None:
    model = ls.load_tiny("llama")
    org = train_organism(model, CFG)
    data = run_refusal(model, org.lora, RefusalConfig(layers=(1,), scales=(2.0,), max_new_tokens=3, n_random=1))
    assert set(data["effects"]) == {"add_to_harmless", "subtract_from_harmful", "ablate_on_harmful", "ablate_to_mean_on_harmful"}
    for e in data["effects"].values():
        assert e["control_n"] == e["n"] and e["verdict"] in ("effect", "no effect")
        assert e["ci"][0] <= e["rate"] <= e["ci"][1]
    assert data["chosen"]["add"] == "1@2" and len(data["separability"]) == model.shape.n_layers
    assert data["n"]["test"] == {"harmful": 60, "harmless": 64}
    page = refusal_page(data)
    assert "add_verdict" in page.summary and "rates" in page.figures
    assert not ls.active_hooks(model)
