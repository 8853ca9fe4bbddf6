"""How to read and write one site's tensor at the module hook where it lives.

``resolve(model, site)`` turns a Site into an :class:`Access`: which module to hook, whether
the tensor is that module's input or output, and two functions that view the raw hooked
tensor as the site's tensor and put an edited site tensor back. Per-head and fused-projection
sites are views and slices of the raw tensor; nothing here touches HF's forward code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import Tensor, nn

from lmscope.core.architectures import get_module
from lmscope.core.sites import Site

if TYPE_CHECKING:
    from lmscope.core.model import Model

Reader = Callable[[Tensor], Tensor]
Writer = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Access:
    """Where a site is hooked and how its tensor is read from / written into the raw tensor."""

    module: nn.Module
    point: Literal["input", "output"]
    output_index: int
    """Index into a tuple output (0 for the hidden states, 1 for attention weights)."""
    read: Reader
    write: Writer | None
    """None for read-only sites (the attention pattern)."""


def _identity_write(raw: Tensor, new: Tensor) -> Tensor:
    return new


def _heads(n_heads: int, d_head: int, lo: int = 0, per_head_stride: int | None = None) -> tuple[Reader, Writer]:
    """View features [lo, lo + n_heads * d_head) of the last axis as (head, d_head).

    With ``per_head_stride`` (GPT-NeoX fused qkv), head h's slice starts at h * stride + lo.
    """

    def read(raw: Tensor) -> Tensor:
        if per_head_stride is not None:
            # (batch, seq, head, 3 * d_head) -> this projection's (batch, seq, head, d_head)
            return raw.unflatten(-1, (n_heads, per_head_stride))[..., lo : lo + d_head]
        return raw[..., lo : lo + n_heads * d_head].unflatten(-1, (n_heads, d_head))

    def write(raw: Tensor, new: Tensor) -> Tensor:
        whole = per_head_stride is None and lo == 0 and raw.shape[-1] == n_heads * d_head
        if whole:
            return new.flatten(-2)
        out = raw.clone()
        read(out).copy_(new)
        return out

    return read, write


def _select_head(read: Reader, write: Writer, head: int) -> tuple[Reader, Writer]:
    def read_h(raw: Tensor) -> Tensor:
        return read(raw)[..., head, :]

    def write_h(raw: Tensor, new: Tensor) -> Tensor:
        full = read(raw).clone()
        full[..., head, :] = new
        return write(raw, full)

    return read_h, write_h


def resolve(model: Model, site: Site) -> Access:
    """The hook point of ``site`` in ``model``, with clear errors for what the family lacks."""
    arch, cfg = model.arch, model.shape
    if site.kind == "embed":
        return Access(get_module(model.hf, arch.embed), "output", 0, lambda t: t, _identity_write)
    if site.kind == "final_norm":
        if arch.final_norm is None:
            raise NotImplementedError(f"architecture {arch.name!r} has no mapped final norm")
        return Access(get_module(model.hf, arch.final_norm), "output", 0, lambda t: t, _identity_write)
    if site.kind == "logits":
        return Access(get_module(model.hf, arch.lm_head), "output", 0, lambda t: t, _identity_write)

    assert site.layer is not None
    if site.layer >= cfg.n_layers:
        raise IndexError(f"layer {site.layer} out of range for {site}: the model has n_layers={cfg.n_layers}")
    layer = model.layers[site.layer]
    if site.head is not None:
        n = cfg.n_kv_heads if site.kind in ("k", "v") else cfg.n_heads
        if not 0 <= site.head < n:
            raise IndexError(f"head {site.head} out of range for {site}: {n} heads")

    def sub(path: str | None, what: str) -> nn.Module:
        if path is None:
            raise NotImplementedError(
                f"site {site} ({what}) is not mapped for architecture {arch.name!r}; "
                "only resid_pre/resid_post are available for discovered families"
            )
        return get_module(layer, path)

    kind = site.kind
    if kind == "resid_pre":
        acc = Access(layer, "input", 0, lambda t: t, _identity_write)
    elif kind == "resid_post":
        acc = Access(layer, "output", 0, lambda t: t, _identity_write)
    elif kind == "resid_mid":
        if model.is_parallel:
            raise NotImplementedError(
                f"resid_mid is undefined for {arch.name!r} with parallel attention/MLP blocks; "
                "use resid_pre, attn_out, mlp_out or resid_post"
            )
        # Read at the MLP norm's input; writes are redirected through attn_out (see hooks.py).
        acc = Access(sub(arch.mlp_norm, "MLP norm"), "input", 0, lambda t: t, _identity_write)
    elif kind == "attn_out":
        acc = Access(sub(arch.attn_out, "attention output"), "output", 0, lambda t: t, _identity_write)
    elif kind == "mlp_out":
        acc = Access(sub(arch.mlp_out, "MLP output"), "output", 0, lambda t: t, _identity_write)
    elif kind == "mlp_in":
        acc = Access(sub(arch.mlp, "MLP"), "input", 0, lambda t: t, _identity_write)
    elif kind == "mlp_post":
        acc = Access(sub(arch.down_proj, "MLP down projection"), "input", 0, lambda t: t, _identity_write)
    elif kind == "attn_z":
        read, write = _heads(cfg.n_heads, cfg.d_head)
        acc = Access(sub(arch.o_proj, "attention output projection"), "input", 0, read, write)
    elif kind in ("q", "k", "v"):
        acc = _qkv_access(model, layer, site)
    elif kind == "attn_pattern":
        acc = Access(sub(arch.attn, "attention"), "output", 1, lambda t: t, None)
    else:  # pragma: no cover - Site validates kinds
        raise ValueError(f"unhandled site kind {kind!r}")

    if site.head is not None and kind != "attn_pattern":
        assert acc.write is not None
        read, write = _select_head(acc.read, acc.write, site.head)
        acc = Access(acc.module, acc.point, acc.output_index, read, write)
    elif site.head is not None:
        head = site.head
        acc = Access(acc.module, acc.point, acc.output_index, lambda t: t[:, head], None)
    return acc


def _qkv_access(model: Model, layer: nn.Module, site: Site) -> Access:
    arch, cfg = model.arch, model.shape
    n = cfg.n_heads if site.kind == "q" else cfg.n_kv_heads
    separate = {"q": arch.q, "k": arch.k, "v": arch.v}[site.kind]
    if separate is not None:
        read, write = _heads(n, cfg.d_head)
        return Access(get_module(layer, separate), "output", 0, read, write)
    if arch.qkv is None:
        raise NotImplementedError(f"site {site} is not mapped for architecture {arch.name!r}")
    module = get_module(layer, arch.qkv)
    index = "qkv".index(site.kind)
    if arch.qkv_layout == "per_head":
        read, write = _heads(n, cfg.d_head, lo=index * cfg.d_head, per_head_stride=3 * cfg.d_head)
    else:
        widths = [cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head]
        read, write = _heads(n, cfg.d_head, lo=sum(widths[:index]))
    return Access(module, "output", 0, read, write)
