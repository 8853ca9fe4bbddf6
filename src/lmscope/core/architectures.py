"""Per-family tables that say where each site lives in a Hugging Face model.

Architectures are data: one :class:`Architecture` per HF ``model_type``, naming module paths
(relative to the model, or to one decoder layer) and how the fused projections are laid out.
Method code never branches on the family; it asks the table. A family that is not in the table
falls back to discovering the single ``ModuleList`` of decoder layers, which gives the residual
sites only, and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Where each site lives in one HF model family. Paths use dots; ``None`` means "absent"."""

    name: str
    """The HF ``model_type`` values this entry serves, first one canonical."""
    layers: str
    """Path of the ``ModuleList`` of decoder layers, from the top-level model."""
    embed: str
    """Token embedding module (its output is the ``embed`` site, after any embedding scale)."""
    final_norm: str | None
    """Final norm module applied before the unembedding."""
    lm_head: str
    """Unembedding module (its output is the ``logits`` site)."""
    attn: str | None = None
    """Attention module inside a layer; its second output is the attention pattern (eager)."""
    o_proj: str | None = None
    """Attention output projection; its input is ``attn_z``."""
    attn_out: str | None = None
    """Module whose output is what attention adds to the residual (post-attention norm if any)."""
    mlp: str | None = None
    """MLP module; its input is ``mlp_in``."""
    mlp_out: str | None = None
    """Module whose output is what the MLP adds to the residual (post-MLP norm if any)."""
    down_proj: str | None = None
    """MLP down projection; its input is ``mlp_post`` (the neurons)."""
    mlp_first: tuple[str, ...] = ()
    """The MLP's first matrices (gate and up for gated MLPs), used by the implicit-update view."""
    mlp_norm: str | None = None
    """Norm in front of the MLP; its input is ``resid_mid``. None for parallel blocks."""
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    """Fused q/k/v projection, when the family has one."""
    qkv_layout: str | None = None
    """``"concat"`` ([q | k | v] along features) or ``"per_head"`` (GPT-NeoX: per head [q, k, v])."""
    parallel_attr: str | None = None
    """Config attribute that, when true, makes the block parallel (attention and MLP read the same input)."""

    def with_overrides(self, **changes: object) -> Architecture:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_LLAMA = Architecture(
    name="llama",
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    attn_out="self_attn.o_proj",
    mlp="mlp",
    mlp_out="mlp",
    down_proj="mlp.down_proj",
    mlp_first=("mlp.gate_proj", "mlp.up_proj"),
    mlp_norm="post_attention_layernorm",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
)
_GEMMA = _LLAMA.with_overrides(
    name="gemma2",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    mlp_norm="pre_feedforward_layernorm",
)
_GPT2 = Architecture(
    name="gpt2",
    layers="transformer.h",
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    attn="attn",
    o_proj="attn.c_proj",
    attn_out="attn.c_proj",
    mlp="mlp",
    mlp_out="mlp",
    down_proj="mlp.c_proj",
    mlp_first=("mlp.c_fc",),
    mlp_norm="ln_2",
    qkv="attn.c_attn",
    qkv_layout="concat",
)
_NEOX = Architecture(
    name="gpt_neox",
    layers="gpt_neox.layers",
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    lm_head="lm_head",
    attn="attention",
    o_proj="attention.dense",
    attn_out="attention.dense",
    mlp="mlp",
    mlp_out="mlp",
    down_proj="mlp.dense_4h_to_h",
    mlp_first=("mlp.dense_h_to_4h",),
    mlp_norm="post_attention_layernorm",
    qkv="attention.query_key_value",
    qkv_layout="per_head",
    parallel_attr="use_parallel_residual",
)
_PHI3 = _LLAMA.with_overrides(
    name="phi3",
    q=None,
    k=None,
    v=None,
    qkv="self_attn.qkv_proj",
    qkv_layout="concat",
    mlp_first=("mlp.gate_up_proj",),
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA.with_overrides(name="mistral"),
    "qwen2": _LLAMA.with_overrides(name="qwen2"),
    "qwen3": _LLAMA.with_overrides(name="qwen3"),
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA.with_overrides(name="gemma3_text"),
    "gemma3": _GEMMA.with_overrides(  # Gemma3ForConditionalGeneration: the text model sits under model.language_model
        name="gemma3",
        layers="model.language_model.layers",
        embed="model.language_model.embed_tokens",
        final_norm="model.language_model.norm",
    ),
    "gpt2": _GPT2,
    "gpt_neox": _NEOX,
    "phi3": _PHI3,
}
"""Supported families by HF ``model_type``. Map a new family by passing an Architecture to load()."""


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted path, with an error that says which part is missing."""
    try:
        return root.get_submodule(path)
    except AttributeError as exc:
        raise AttributeError(f"module path {path!r} not found in {type(root).__name__}: {exc}") from exc


def architecture_for(model: Any) -> Architecture:
    """The table entry for ``model``, or a discovered fallback with the residual sites only."""
    model_type = getattr(model.config, "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    return _discover(model, model_type)


def _discover(model: Any, model_type: str | None) -> Architecture:
    n_layers = getattr(model.config, "num_hidden_layers", None)
    candidates = [
        name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) == n_layers
    ]
    if len(candidates) != 1:
        raise NotImplementedError(
            f"unsupported architecture {model_type!r}: supported families are {sorted(ARCHITECTURES)}. "
            f"Discovery looked for one ModuleList of length num_hidden_layers={n_layers} and found "
            f"{candidates or 'none'}. Map the family by passing "
            "lmscope.Architecture(name=..., layers=..., embed=..., final_norm=..., lm_head=..., ...) "
            "to lmscope.load(..., architecture=...)."
        )
    embed = _path_of(model, model.get_input_embeddings())
    head = _path_of(model, model.get_output_embeddings())
    return Architecture(name=f"discovered:{model_type}", layers=candidates[0], embed=embed, final_norm=None, lm_head=head)


def _path_of(root: nn.Module, target: nn.Module | None) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise NotImplementedError(f"could not locate module {type(target).__name__} in {type(root).__name__}")
