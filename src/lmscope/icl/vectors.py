"""In-context vectors and task vectors: a few-shot prompt's effect squeezed into one residual vector.

Three ways to carry a task from demonstrations to a bare query, all read at and written to the
residual stream after block L (``resid_post``) at the last token:

- **In-context vector** (the lecture's ICV; Liu et al. / Todd et al. style mean difference):
  v_L = mean over k-shot prompts of h_L(last token) - mean over the same queries asked zero-shot
  of h_L(last token). Injected by *adding* v_L at the query's last token. (``raw=True`` adds the
  mean k-shot state itself, the lecture's literal recipe, which doubles the state's size.)
- **Task vector** (Hendel et al. 2023, "In-context learning creates task vectors"): theta_L =
  mean k-shot last-token state; injected by *replacing* the query's last-token state at layer L.
- **ICV of Liu et al. 2024** ("In-context vectors", following their code): each demonstration's
  input x and output y are encoded *separately*; the last-token residual states of every layer are
  concatenated, one PCA is fitted to the differences h(y) - h(x) over demonstrations, and the
  vector is its first component (signed as scikit-learn's ``svd_flip``) plus the mean difference,
  cut back into layers. At inference each layer's *MLP output* m becomes
  ``normalize(normalize(m) + lam * (1 + max(0, cos(m, -v))) * normalize(v)) * |m|`` at every position.

The seed's claim: vectors from early/middle layers work, late ones do not; check it with
:func:`evaluate_injection` per layer on held-out queries.

    >>> import lmscope as ls
    >>> from lmscope.icl.tasks import load_task, FORMATS
    >>> from lmscope.icl.vectors import build_vectors, evaluate_injection
    >>> model = ls.load_tiny("llama")
    >>> vecs = build_vectors(model, load_task("antonyms"), FORMATS["qa"], layers=[1], k=2, n_prompts=4)
    >>> vecs.icv[1].shape[0] == model.shape.d_model
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.edits import Edit
from lmscope.core.hooks import capture, intervene
from lmscope.core.metrics import at_last
from lmscope.core.model import Model
from lmscope.core.prefix import Prefix
from lmscope.core.sites import Site
from lmscope.icl.tasks import Pair, PromptFormat, Task, first_token_accuracy, sample_demos


def last_token_states(
    model: Model, prompts: Sequence[str], layers: Sequence[int], *, kind: str = "resid_post", batch_size: int = 16
) -> Tensor:
    """(prompt, layer, d_model) states at each prompt's last token."""
    sites = [Site(kind, layer) for layer in layers]
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = model.tokenize(list(prompts[i : i + batch_size]))
        with capture(model, sites, stop_early=True) as acts:
            model(batch)
        r = torch.arange(batch.shape[0], device=batch.input_ids.device)
        out.append(torch.stack([acts[s][r, batch.last_index].float().cpu() for s in sites], 1))
    return torch.cat(out)


@dataclass
class TaskVectors:
    """Per-layer vectors of one task, built from train pairs only."""

    layers: list[int]
    icv: dict[int, Tensor]
    """Layer -> mean k-shot state minus mean zero-shot state (added)."""
    mean_state: dict[int, Tensor]
    """Layer -> mean k-shot last-token state (the task vector, patched in; or added raw)."""
    liu: dict[int, Tensor]
    """Every layer -> Liu et al.'s in-context vector (steers every layer's MLP output)."""


def build_vectors(
    model: Model, task: Task, fmt: PromptFormat, layers: Sequence[int], *, k: int = 5, n_prompts: int = 20, seed: int = 0
) -> TaskVectors:
    """All vectors of ``task`` from ``n_prompts`` k-shot prompts whose queries and demos are train pairs."""
    rng = random.Random(seed)
    train = task.train
    queries = rng.sample(train, min(n_prompts, len(train)))
    few = [fmt.prompt(sample_demos(train, k, exclude=q.input, rng=rng), q.input) for q in queries]
    zero = [fmt.ask(q.input) for q in queries]
    layers = list(layers)
    h_few = last_token_states(model, few, layers)
    h_zero = last_token_states(model, zero, layers)
    icv = {layer: h_few[:, j].mean(0) - h_zero[:, j].mean(0) for j, layer in enumerate(layers)}
    mean_state = {layer: h_few[:, j].mean(0) for j, layer in enumerate(layers)}
    return TaskVectors(layers, icv, mean_state, liu_vectors(model, queries))


def liu_vectors(model: Model, demos: Sequence[Pair]) -> dict[int, Tensor]:
    """Liu et al.'s in-context vector per layer from demonstrations (x, y), each side encoded on its own."""
    all_layers = list(range(model.shape.n_layers))
    h_x = last_token_states(model, [d.input for d in demos], all_layers)
    h_y = last_token_states(model, [d.output for d in demos], all_layers)
    diffs = (h_y - h_x).reshape(len(demos), -1)  # (demonstration, layer * d_model): one PCA over all layers
    mean = diffs.mean(0)
    u, _, vh = torch.linalg.svd(diffs - mean, full_matrices=False)
    pc = vh[0] * torch.sign(u[u[:, 0].abs().argmax(), 0])  # svd_flip: the largest loading of u is positive
    return dict(zip(all_layers, (pc + mean).reshape(len(all_layers), -1), strict=True))


def _liu_steer(vector: Tensor, strength: float):
    """The reference's MLP-output edit: rotate towards the vector (more where the output points away), keep the norm."""

    def fn(m: Tensor) -> Tensor:
        v = torch.nn.functional.normalize(vector.to(device=m.device, dtype=torch.float32), dim=-1)
        x = m.float()
        away = torch.nn.functional.cosine_similarity(x, -v.expand_as(x), dim=-1).clamp_min(0).unsqueeze(-1)
        y = torch.nn.functional.normalize(torch.nn.functional.normalize(x, dim=-1) + strength * (1 + away) * v, dim=-1)
        return (y * x.norm(dim=-1, keepdim=True)).to(m.dtype)

    return fn


def injection_edits(model: Model, method: str, vecs: TaskVectors, layer: int | None, last: Tensor, *,
                    scale: float = 1.0) -> dict[Site, Edit]:  # fmt: skip
    """The edits that inject one method's vector into a batch whose last tokens are ``last``."""
    if method == "liu":
        return {Site("mlp_out", l_): edits.custom(_liu_steer(v, scale)) for l_, v in vecs.liu.items()}
    assert layer is not None
    site = Site("resid_post", layer)
    if method == "icv":
        return {site: edits.add(vecs.icv[layer], scale, positions=last)}
    if method == "icv_raw":
        return {site: edits.add(vecs.mean_state[layer], scale, positions=last)}
    if method == "task_vector":
        return {site: edits.replace(vecs.mean_state[layer], positions=last)}
    raise ValueError(f"unknown method {method!r}; choose icv, icv_raw, task_vector or liu")


class ZeroShot:
    """Prompts run once with each batch's inputs of ``layers`` kept, so that a vector injected at
    layer L re-runs only layers L and above (the values equal a full forward's)."""

    def __init__(self, model: Model, prompts: Sequence[str], layers: Sequence[int], *, batch_size: int = 16) -> None:
        self.model = model
        self.batches = [model.tokenize(list(prompts[i : i + batch_size])) for i in range(0, len(prompts), batch_size)]
        self.prefixes = []
        for batch in self.batches:
            prefix = Prefix(model, batch, layers=layers, positions=False)
            prefix.logits = None
            self.prefixes.append(prefix)

    def logits(self, edit_fn, *, start: int = 0) -> Tensor:
        """(n, vocab) last-token logits with ``edit_fn(last_index)`` active, run from layer ``start``."""
        out = []
        for batch, prefix in zip(self.batches, self.prefixes, strict=True):
            with intervene(self.model, edit_fn(batch.last_index)):
                logits = prefix.forward(copies=1, layer=start)
            out.append(at_last(logits, batch.attention_mask).float().cpu())
        return torch.cat(out)


def injected_logits(model: Model, prompts: Sequence[str] | ZeroShot, edit_fn, *, batch_size: int = 16,
                    start: int = 0) -> Tensor:  # fmt: skip
    """(n, vocab) last-token logits with ``edit_fn(last_index) -> {site: edit}`` active.

    With a :class:`ZeroShot` the passes start at layer ``start`` (every edit must be at or above it)."""
    if isinstance(prompts, ZeroShot):
        return prompts.logits(edit_fn, start=start)
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = model.tokenize(list(prompts[i : i + batch_size]))
        with intervene(model, edit_fn(batch.last_index)):
            logits = model(batch)
        assert logits is not None
        out.append(at_last(logits, batch.attention_mask).float().cpu())
    return torch.cat(out)


def evaluate_injection(
    model: Model, prompts: Sequence[str] | ZeroShot, targets: Sequence[int], method: str, vecs: TaskVectors,
    layer: int | None, *, scale: float = 1.0,
) -> float:  # fmt: skip
    """First-token accuracy of zero-shot ``prompts`` with one method's vector injected."""
    start = 0 if method == "liu" or layer is None else layer
    logits = injected_logits(model, prompts, lambda last: injection_edits(model, method, vecs, layer, last, scale=scale),
                             start=start)  # fmt: skip
    return first_token_accuracy(logits, targets)


def add_at_last(model: Model, prompts: Sequence[str] | ZeroShot, vector: Tensor, layer: int, *,
                scale: float = 1.0) -> Tensor:  # fmt: skip
    """(n, vocab) logits with ``scale * vector`` added to resid_post[layer] at each prompt's last token."""
    return injected_logits(model, prompts, lambda last: {Site("resid_post", layer): edits.add(vector, scale, positions=last)},
                           start=layer)  # fmt: skip
