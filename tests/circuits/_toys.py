"""Tiny constructed models and tasks for the circuit tests (planted ground truths)."""

from __future__ import annotations

import torch

import lmscope as ls
from lmscope.circuits.tasks import TaskPairs

CLEAN = ["the dog saw Mary", "the fox saw John", "the dog saw world", "the fox saw hello"]
CORRUPT = ["the fox saw Mary", "the dog saw John", "the fox saw world", "the dog saw hello"]


def toy_task(model: ls.Model) -> TaskPairs:
    """Clean/corrupt differ in one early token; metric: logit of token 5 minus token 7 at the end."""
    t = TaskPairs("toy", list(CLEAN), list(CORRUPT), [[5], [9], [12], [20]], [[7], [30], [40], [50]])
    t.batches(model)  # checks equal lengths
    return t


def linear_readout(model: ls.Model) -> ls.Model:
    """Drop the final norm so logits are linear in the last residual stream."""
    model.hf.model.norm = torch.nn.Identity()
    with torch.no_grad():
        model.hf.lm_head.weight.mul_(100.0)
    return model


def planted(heads: set[tuple[int, int]], mlps: set[int], *, scale: float = 4.0) -> ls.Model:
    """Tiny llama where only the planted heads / MLPs write anything to the residual stream."""
    model = ls.load_tiny("llama")
    s = model.shape
    with torch.no_grad():
        for layer in range(s.n_layers):
            attn, mlp = model.hf.model.layers[layer].self_attn, model.hf.model.layers[layer].mlp
            w = attn.o_proj.weight.view(s.d_model, s.n_heads, s.d_head)
            for h in range(s.n_heads):
                w[:, h] *= scale if (layer, h) in heads else 0.0
            mlp.down_proj.weight.mul_(scale if layer in mlps else 0.0)
    return model
