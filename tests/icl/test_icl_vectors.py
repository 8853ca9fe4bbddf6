"""Tasks, in-context / task / function vectors, and the CLI, on tiny models (and one bundled check)."""

from __future__ import annotations

import json
import random

import pytest
import torch

import lmscope as ls
from lmscope.core.architectures import get_module
from lmscope.icl.function_vectors import HeadPrompts, aie_from_prompts, function_vector, mean_head_outputs, top_heads
from lmscope.icl.tasks import BUILTIN_TASKS, FORMATS, Pair, Task, load_task, make_queries, predict
from lmscope.icl.vectors import (
    add_at_last,
    build_vectors,
    injected_logits,
    injection_edits,
    last_token_states,
    liu_vectors,
)


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_task_splits_never_overlap(name: str) -> None:
    task = load_task(name)
    train, test = task.train, task.test
    assert len(train) >= 20 and len(test) >= 10
    assert not {p.input for p in train} & {p.input for p in test}
    assert not set(train) & set(test)


def test_task_refuses_overlap_and_demos_come_from_train(tiny_llama: ls.Model) -> None:
    with pytest.raises(ValueError, match="both train and test"):
        Task("bad", (Pair("a", "b", "train"), Pair("a", "c", "test")))
    task = load_task("antonyms")
    q = make_queries(tiny_llama, task, FORMATS["qa"], k=4, n=10)
    test_inputs = {p.input for p in task.test}
    for pair, prompt in zip(q.pairs, q.few_shot, strict=True):
        demo_inputs = [block.split("\n")[0][3:] for block in prompt.split("\n\n")[:-1]]
        assert len(demo_inputs) == 4 and not set(demo_inputs) & test_inputs
        assert prompt.endswith(FORMATS["qa"].ask(pair.input))


def test_scale_zero_is_a_noop(tiny_llama: ls.Model) -> None:
    prompts = ["hello world", "the quick brown fox"]
    v = torch.randn(tiny_llama.shape.d_model)
    assert torch.equal(predict(tiny_llama, prompts), add_at_last(tiny_llama, prompts, v, 1, scale=0.0))
    assert not torch.equal(predict(tiny_llama, prompts), add_at_last(tiny_llama, prompts, v, 1, scale=1.0))


def test_injection_touches_only_the_last_token(tiny_gpt2: ls.Model) -> None:
    """Oracle: the captured state equals the clean state plus v at each row's last token, and nothing else."""
    task = load_task("antonyms")
    vecs = build_vectors(tiny_gpt2, task, FORMATS["qa"], [1], k=2, n_prompts=4)
    prompts = ["hello world", "the lazy dog jumps"]
    batch = tiny_gpt2.tokenize(prompts)
    site = ls.Site("resid_post", 1)
    with ls.capture(tiny_gpt2, [site]) as clean:
        tiny_gpt2(batch)
    for method in ("icv", "task_vector"):
        with ls.intervene(tiny_gpt2, injection_edits(tiny_gpt2, method, vecs, 1, batch.last_index)):
            with ls.capture(tiny_gpt2, [site]) as got:
                tiny_gpt2(batch)
        diff = got[site] - clean[site]
        rows = torch.arange(2)
        want = vecs.icv[1] if method == "icv" else vecs.mean_state[1] - clean[site][rows, batch.last_index]
        assert torch.allclose(diff[rows, batch.last_index], want.expand(2, -1), atol=1e-5)
        diff[rows, batch.last_index] = 0
        assert float(diff.abs().max()) == 0.0


def test_icv_is_mean_difference(tiny_llama: ls.Model) -> None:
    task = load_task("singular_plural")
    vecs = build_vectors(tiny_llama, task, FORMATS["arrow"], [0, 2], k=2, n_prompts=5, seed=3)
    for layer in (0, 2):
        assert torch.allclose(vecs.icv[layer] + (vecs.mean_state[layer] - vecs.icv[layer]), vecs.mean_state[layer])
    assert sorted(vecs.liu) == list(range(tiny_llama.shape.n_layers))


def test_liu_vector_matches_a_naive_pca_of_the_reference_recipe(tiny_llama: ls.Model) -> None:
    """Liu et al.'s code: x and y encoded apart, last-token states of all layers concatenated, first principal
    component (largest |u| loading positive) plus the mean difference. Oracle: the covariance's top eigenvector."""
    demos = load_task("antonyms").train[:6]
    got = liu_vectors(tiny_llama, demos)
    n_layers = tiny_llama.shape.n_layers
    outs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, o: outs.append((o[0] if isinstance(o, tuple) else o)[0, -1]))
             for layer in tiny_llama.hf.model.layers]  # raw torch hooks on the decoder layers (pre final norm)
    rows = []
    try:
        for d in demos:  # one prompt at a time: no batching, no lmscope hooks
            states = []
            for text in (d.input, d.output):
                outs.clear()
                tiny_llama.hf(**tiny_llama.tokenize([text]).model_inputs())
                states.append(torch.cat(outs))
            rows.append((states[1] - states[0]).double())
    finally:
        for h in hooks:
            h.remove()
    x = torch.stack(rows)
    mean = x.mean(0)
    c = x - mean
    vals, vecs = torch.linalg.eigh(c.T @ c)
    pc = vecs[:, -1]
    scores = c @ pc
    pc = pc * torch.sign(scores[scores.abs().argmax()])
    want = (pc + mean).reshape(n_layers, -1)
    for layer in range(n_layers):
        assert torch.allclose(got[layer].double(), want[layer], atol=1e-4), layer


def test_liu_injection_is_the_reference_mlp_output_rotation(tiny_llama: ls.Model) -> None:
    vecs = build_vectors(tiny_llama, load_task("antonyms"), FORMATS["qa"], [1], k=2, n_prompts=4)
    batch = tiny_llama.tokenize(["hello world", "the dog"])
    sites = [ls.Site("mlp_out", layer) for layer in range(tiny_llama.shape.n_layers)]
    lam = 0.3
    with ls.intervene(tiny_llama, injection_edits(tiny_llama, "liu", vecs, None, batch.last_index, scale=lam)):
        with ls.capture(tiny_llama, sites) as got:
            tiny_llama(batch)
    edited = {}
    for layer in range(tiny_llama.shape.n_layers):  # naive: each layer's edit applied by hand, one layer at a time
        with ls.intervene(tiny_llama, {s: ls.edits.patch(got[s]) for s in sites[:layer]} if layer else {}):
            with ls.capture(tiny_llama, [sites[layer]]) as clean:
                tiny_llama(batch)
        m = clean[sites[layer]].double()
        v = vecs.liu[layer].double() / vecs.liu[layer].double().norm()
        for b in range(m.shape[0]):
            for t in range(m.shape[1]):
                row = m[b, t]
                cos = float(row @ -v) / float(row.norm())
                y = row / row.norm() + lam * (1 + max(0.0, cos)) * v
                edited[(layer, b, t)] = y / y.norm() * row.norm()
        want = torch.stack([torch.stack([edited[(layer, b, t)] for t in range(m.shape[1])]) for b in range(m.shape[0])])
        mask = batch.attention_mask.bool()
        assert torch.allclose(got[sites[layer]].double()[mask], want[mask], atol=1e-4), layer
        assert torch.allclose(got[sites[layer]].norm(dim=-1)[mask], clean[sites[layer]].norm(dim=-1)[mask], rtol=1e-5)


def _planted(family: str, layer: int, head: int) -> ls.Model:
    """Only one head reaches the residual stream: every other head's o_proj slice is zero, the planted one
    scaled up, and the unembedding sharpened so the output depends visibly on that head."""
    model = ls.load_tiny(family, seed=1)
    d = model.shape.d_head
    with torch.no_grad():
        for li in range(model.shape.n_layers):
            o = get_module(model.layers[li], model.arch.o_proj).weight
            for h in range(model.shape.n_heads):
                if (li, h) == (layer, head):
                    o[:, h * d : (h + 1) * d] *= 50.0
                else:
                    o[:, h * d : (h + 1) * d] = 0.0
        get_module(model.hf, model.arch.lm_head).weight *= 100.0
    return model


@pytest.mark.parametrize("family,layer,head", [("llama", 2, 1), ("qwen3", 1, 3)])
def test_aie_recovers_a_planted_head(family: str, layer: int, head: int) -> None:
    model = _planted(family, layer, head)
    rng = random.Random(0)
    words = ["fox", "dog", "world", "hello", "quick", "brown", "lazy", "store", "drink", "park"]
    demo = rng.sample(words, 3)
    clean = [" ".join(f"{w} = {w}." for w in demo) + " Mary ="] * 6  # one clean prompt: its mean z is its z
    corrupt = [" ".join(f"{w} = {rng.choice(words)}." for w in demo) + " Mary =" for _ in range(6)]
    targets = predict(model, clean).argmax(-1).tolist()  # the clean behaviour's answer
    aie = aie_from_prompts(model, HeadPrompts(clean, corrupt, targets))
    assert top_heads(aie, 1) == [(layer, head)]
    assert float(aie[layer, head]) > 0
    others = aie.clone()
    others[layer, head] = 0
    assert float(others.abs().max()) < 1e-6  # heads that cannot reach the output have no effect


def test_function_vector_is_the_heads_output(tiny_llama: ls.Model) -> None:
    """Oracle: o_proj run on the mean z with every other head zeroed."""
    prompts = ["hello world", "the quick brown fox jumps"]
    heads = [(1, 2), (2, 0)]
    fv = function_vector(tiny_llama, prompts, heads)
    means = mean_head_outputs(tiny_llama, prompts)
    want = torch.zeros_like(fv)
    for layer, head in heads:
        z = torch.zeros(tiny_llama.shape.n_heads, tiny_llama.shape.d_head)
        z[head] = means[layer, head]
        want += get_module(tiny_llama.layers[layer], "self_attn.o_proj")(z.flatten()[None])[0].detach()
    assert torch.allclose(fv, want, atol=1e-5)


def test_injected_logits_without_edits_equal_plain(tiny_gpt2: ls.Model) -> None:
    prompts = ["hello world", "a"]
    assert torch.equal(injected_logits(tiny_gpt2, prompts, lambda last: {}), predict(tiny_gpt2, prompts))
    states = last_token_states(tiny_gpt2, prompts, [0])
    assert states.shape == (2, 1, tiny_gpt2.shape.d_model)


def test_cli_writes_json_figures_html(tmp_path) -> None:
    from lmscope.cli.main import main

    out = tmp_path / "rank1"
    rc = main(["--threads", "1", "icl", "rank1", "--tiny", "llama", "--tasks", "antonyms,country_capital", "--queries", "1",
               "--sources", "1", "--targets", "3", "--k", "2", "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "result.json").read_text())["data"]
    assert max(c["rel_err_fp32"] for c in res["identity"]) < 1e-5
    assert (out / "index.html").exists() and (out / "rank1_identity.png").exists()


@pytest.mark.bundled
def test_icv_beats_zero_shot_on_bundled(smollm: ls.Model) -> None:
    task = load_task("antonyms")
    fmt = FORMATS["qa"]
    q = make_queries(smollm, task, fmt, k=5, n=12)
    vecs = build_vectors(smollm, task, fmt, [21], k=5, n_prompts=12)
    zero = float((predict(smollm, q.zero_shot).argmax(-1) == torch.tensor(q.targets)).float().mean())
    inj = add_at_last(smollm, q.zero_shot, vecs.icv[21], 21)  # layer 21: the band where ICVs work on SmolLM2
    acc = float((inj.argmax(-1) == torch.tensor(q.targets)).float().mean())
    assert acc >= zero + 0.25, (zero, acc)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_aie_with_cached_prefix_equals_full_passes(family: str) -> None:
    model = ls.load_tiny(family)
    task = load_task("antonyms")
    from lmscope.icl.function_vectors import head_prompts

    hp = head_prompts(model, task, FORMATS["qa"], k=2, n_prompts=3)
    fast = aie_from_prompts(model, hp, layers=[0, 2])
    slow = aie_from_prompts(model, hp, layers=[0, 2], reuse_prefix=False)
    assert torch.allclose(fast, slow, atol=1e-6), (fast - slow).abs().max()
    assert float(slow.abs().max()) > 0


def test_zero_shot_runs_started_at_the_layer_equal_full_forwards(tiny_llama) -> None:
    from lmscope.icl.vectors import ZeroShot, add_at_last, injected_logits

    model = tiny_llama
    prompts = ["the dog saw", "a fox ran far away from", "hello", "one two three four five six"]  # padded, lengths differ
    v = torch.randn(model.shape.d_model) * 2
    runs = ZeroShot(model, prompts, [1, 2], batch_size=3)
    for layer in (1, 2):
        assert torch.allclose(add_at_last(model, runs, v, layer), add_at_last(model, prompts, v, layer), atol=1e-5)
    every = {ls.Site("resid_post", la): ls.edits.add(v) for la in range(model.shape.n_layers)}
    assert torch.allclose(injected_logits(model, runs, lambda last: every), injected_logits(model, prompts, lambda last: every),
                          atol=1e-5)  # fmt: skip


def test_a_dev_split_is_drawn_from_train_and_shares_nothing() -> None:
    task = load_task("antonyms")
    split = task.with_dev(10, seed=1)
    assert len(split.dev) == 10 and len(split.train) == len(task.train) - 10 and split.test == task.test
    dev, train, test = ({p.input for p in ps} for ps in (split.dev, split.train, split.test))
    assert not dev & train and not dev & test and dev <= {p.input for p in task.train}
    assert split.dev == task.with_dev(10, seed=1).dev and split.dev != task.with_dev(10, seed=2).dev
    with pytest.raises(ValueError, match="dev split"):
        task.with_dev(len(task.train))


def test_the_vectors_report_chooses_on_dev_and_reports_on_test(tiny_llama: ls.Model) -> None:
    from lmscope.icl.vectors_report import METHODS, vectors_report

    res = vectors_report(tiny_llama, ["antonyms"], layers=[0, 1, 2], k=2, n=6, fv_tasks=0)
    row, s = res.data["tasks"]["antonyms"], res.data["summary"]["antonyms"]
    cells = [(m, j) for m in METHODS if m in row for j in range(3)]
    chosen = max(cells, key=lambda c: row["dev"][c[0]][c[1]])
    assert (s["best_method"], s["best_layer"]) == (chosen[0], [0, 1, 2][chosen[1]])
    assert s["best_acc"] == row[chosen[0]][chosen[1]] and s["best_dev_acc"] == row["dev"][chosen[0]][chosen[1]]
    assert row["n_dev"] == 6 and 0.0 <= s["control"] <= 1.0
    liu = max((0.05, 0.1, 0.2, 0.5), key=lambda x: row["dev"]["liu"][str(x)])
    assert s["liu_best_strength"] == liu and s["liu_best"] == row["liu"][str(liu)]
