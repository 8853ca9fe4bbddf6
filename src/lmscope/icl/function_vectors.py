"""Function vectors (Todd et al. 2024, "Function vectors in large language models").

A few attention heads carry the task from the demonstrations to the last token. They are found by
their **average indirect effect** (AIE): take k-shot prompts whose labels are shuffled (the
demonstrations no longer show the task, so the model mostly fails), patch one head's output at the
last token with that head's *mean* output over clean k-shot prompts, and measure how much the
probability of the correct answer rises. Averaged over prompts (and tasks), the heads with the
largest AIE are the function-vector heads. The function vector of a task is the sum of those
heads' mean outputs, each mapped into the residual stream by its slice of the attention output
projection (``o_proj``); adding it to the residual after block L at the last token of a zero-shot
query makes the model perform the task.

Heads are patched at ``attn_z`` (the per-head input of ``o_proj``); all heads of a layer are
measured in one batched pass (row i * n_heads + j patches head j). Batches are left-padded, so the
last token is the last position of every row; the unchanged prefix runs once into a KV cache.

    >>> import lmscope as ls
    >>> from lmscope.icl.tasks import load_task, FORMATS
    >>> from lmscope.icl.function_vectors import head_aie
    >>> model = ls.load_tiny("llama")
    >>> aie = head_aie(model, load_task("antonyms"), FORMATS["qa"], k=2, n_prompts=3, layers=[0])
    >>> tuple(aie.shape) == (model.shape.n_layers, model.shape.n_heads)
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.architectures import get_module
from lmscope.core.hooks import capture, intervene
from lmscope.core.metrics import at_last
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.icl.rank1 import weight_matrix
from lmscope.icl.tasks import Pair, PromptFormat, Task, answer_token, sample_demos


@dataclass
class HeadPrompts:
    """Clean and label-shuffled k-shot prompts of one task, with the answers' first tokens."""

    clean: list[str]
    corrupted: list[str]
    targets: list[int]


def head_prompts(model: Model, task: Task, fmt: PromptFormat, *, k: int = 5, n_prompts: int = 10, seed: int = 0) -> HeadPrompts:
    """Prompts from train pairs; the corrupted twin has the same demos with their outputs shuffled."""
    rng = random.Random(seed)
    queries = rng.sample(task.train, min(n_prompts, len(task.train)))
    clean, corrupted = [], []
    for q in queries:
        demos = sample_demos(task.train, k, exclude=q.input, rng=rng)
        outs = [p.output for p in demos]
        shuffled = outs[:]
        for _ in range(10):  # a derangement when possible, so no demonstration keeps its label
            rng.shuffle(shuffled)
            if all(a != b for a, b in zip(outs, shuffled, strict=True)):
                break
        clean.append(fmt.prompt(demos, q.input))
        corrupted.append(fmt.prompt([Pair(p.input, o) for p, o in zip(demos, shuffled, strict=True)], q.input))
    return HeadPrompts(clean, corrupted, [answer_token(model, fmt, q.output) for q in queries])


def mean_head_outputs(model: Model, prompts: Sequence[str], layers: Sequence[int] | None = None) -> Tensor:
    """(layer, head, d_head) mean ``attn_z`` at the last token over ``prompts`` (zeros for layers not asked)."""
    s = model.shape
    layers = list(range(s.n_layers)) if layers is None else list(layers)
    batch = model.tokenize(list(prompts))
    with capture(model, [Site("attn_z", layer) for layer in layers]) as acts:
        model(batch)
    out = torch.zeros(s.n_layers, s.n_heads, s.d_head)
    r = torch.arange(batch.shape[0], device=batch.input_ids.device)
    for layer in layers:
        out[layer] = acts[Site("attn_z", layer)][r, batch.last_index].float().mean(0).cpu()
    return out


def head_aie(
    model: Model, task: Task, fmt: PromptFormat, *, k: int = 5, n_prompts: int = 10, seed: int = 0,
    layers: Sequence[int] | None = None,
) -> Tensor:  # fmt: skip
    """(layer, head) average indirect effect: P(answer) with the head's clean mean patched in, minus without."""
    hp = head_prompts(model, task, fmt, k=k, n_prompts=n_prompts, seed=seed)
    return aie_from_prompts(model, hp, layers=layers)


def aie_from_prompts(model: Model, hp: HeadPrompts, *, layers: Sequence[int] | None = None, reuse_prefix: bool = True) -> Tensor:
    """AIE per head for given clean/corrupted prompts (layers not asked stay 0).

    Patching the last token cannot change earlier positions (attention is causal), so with
    ``reuse_prefix`` the corrupted prompts' other tokens run once into a KV cache and every
    patched pass runs only the last token: about seq_len times cheaper, same numbers.
    """
    s = model.shape
    layers = list(range(s.n_layers)) if layers is None else list(layers)
    means = mean_head_outputs(model, hp.clean, layers)
    targets = torch.tensor(hp.targets)
    n, heads = len(hp.corrupted), s.n_heads
    batch = model.tokenize(hp.corrupted)
    big_targets = targets.repeat_interleave(heads)  # row i * heads + j: prompt i with head j patched
    last_only = _LastTokenRunner(model, batch, heads) if reuse_prefix else None
    full = None if reuse_prefix else model.tokenize([p for p in hp.corrupted for _ in range(heads)])

    def run(plan: dict) -> Tensor:
        with intervene(model, plan):
            if last_only is not None:
                return last_only()
            assert full is not None
            logits = model(full)
            assert logits is not None
            return at_last(logits, full.attention_mask)

    base = _probs(run({}), big_targets).view(n, heads)[:, 0]
    aie = torch.zeros(s.n_layers, heads)
    for layer in layers:
        mean_l = means[layer]

        def patch(z: Tensor, mean_l: Tensor = mean_l) -> Tensor:  # z: (batch, seq, head, d_head)
            z = z.clone()
            for j in range(heads):
                z[j::heads, -1, j] = mean_l[j].to(z.dtype).to(z.device)
            return z

        probs = _probs(run({Site("attn_z", layer): edits.custom(patch)}), big_targets)
        aie[layer] = (probs.view(n, heads) - base[:, None]).mean(0)
    return aie


def _probs(last_logits: Tensor, targets: Tensor) -> Tensor:
    p = last_logits.float().softmax(-1).cpu()
    return p[torch.arange(p.shape[0]), targets]


class _LastTokenRunner:
    """Runs only the last token of a left-padded batch (each row repeated ``repeat`` times) on a cached prefix."""

    def __init__(self, model: Model, batch, repeat: int) -> None:
        from transformers import DynamicCache

        self.model = model
        inputs = batch.model_inputs()
        self.prefix_len = batch.shape[1] - 1
        if self.prefix_len < 1:
            raise ValueError("prompts need at least two tokens to reuse a prefix")
        cache = DynamicCache()
        with torch.no_grad():
            model.hf(**{k: v[:, :-1] for k, v in inputs.items()}, past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(repeat)
        self.cache = cache
        self.ids = inputs["input_ids"][:, -1:].repeat_interleave(repeat, 0)
        self.pos = inputs["position_ids"][:, -1:].repeat_interleave(repeat, 0)
        self.mask = inputs["attention_mask"].repeat_interleave(repeat, 0)

    def __call__(self) -> Tensor:
        with torch.no_grad():
            out = self.model.hf(
                input_ids=self.ids, attention_mask=self.mask, position_ids=self.pos, past_key_values=self.cache, use_cache=True
            )
        self.cache.crop(-1)  # drop the last token again (negative: tokens to remove)
        return out.logits[:, -1]


def top_heads(aie: Tensor, n: int) -> list[tuple[int, int]]:
    """The ``n`` (layer, head) pairs with the largest AIE."""
    flat = aie.flatten().argsort(descending=True)[:n]
    return [(int(i) // aie.shape[1], int(i) % aie.shape[1]) for i in flat]


def function_vector(model: Model, clean_prompts: Sequence[str], heads: Sequence[tuple[int, int]]) -> Tensor:
    """(d_model,) sum over ``heads`` of their mean last-token output mapped through their o_proj slice."""
    s = model.shape
    if model.arch.o_proj is None:
        raise NotImplementedError(f"{model.arch.name}: attention output projection is not mapped")
    means = mean_head_outputs(model, clean_prompts, sorted({layer for layer, _ in heads}))
    fv = torch.zeros(s.d_model)
    for layer, head in heads:
        o_proj = get_module(model.layers[layer], model.arch.o_proj)
        w = weight_matrix(o_proj).detach().float().cpu()  # (d_model, n_heads * d_head)
        fv += w[:, head * s.d_head : (head + 1) * s.d_head] @ means[layer, head]
    return fv
