"""Helpers shared by the core reliability tests (oracles that do not go through lmscope's hooks)."""

from __future__ import annotations

import torch
from torch import Tensor

import lmscope as ls
from lmscope.core.sites import ALL_KINDS, HEAD_KINDS, Site

PROMPTS = ["hello world", "The capital of France is Paris", "the quick brown fox"]


def hook_counts(model: ls.Model) -> dict[str, tuple[int, int, int, int]]:
    """Per-module counts of forward, forward-pre, backward and backward-pre hooks."""
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
        for name, m in model.hf.named_modules()
    }


def editable_sites(model: ls.Model, *, heads: bool = True) -> list[Site]:
    """Every writable site kind at every layer, plus a few per-head sites."""
    kinds = [k for k in ALL_KINDS if k != "attn_pattern"]
    if model.is_parallel:
        kinds.remove("resid_mid")
    sites = model.sites(kinds)
    if heads:
        last = model.shape.n_layers - 1
        for kind in HEAD_KINDS:
            if kind != "attn_pattern":
                sites += [Site(kind, 0, head=0), Site(kind, last, head=1)]
    return sites


def hf_forward(model: ls.Model, batch: ls.Batch, **kwargs) -> object:
    """A plain HF forward pass with the batch's mask and positions."""
    with torch.no_grad():
        return model.hf(**batch.model_inputs(), use_cache=False, **kwargs)


def clean_logits(model: ls.Model, batch: ls.Batch) -> Tensor:
    return hf_forward(model, batch).logits
