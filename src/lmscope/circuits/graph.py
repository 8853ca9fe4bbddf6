"""The component graph of a transformer, and one forward pass that ablates or patches its edges.

Circuit methods need to cut single *edges* — "head 3.7's output as read by layer 9's attention" —
without touching the rest of the residual stream. This module does it with the core's edits
only, never rewriting the HF forward:

- **Writers** (upstream nodes): the token embedding, every attention head (its ``attn_z`` slice
  times its block of the output projection) and every MLP (``mlp_out``).
- **Readers** (downstream nodes): the input of each layer's attention (all its heads: q, k and v
  are computed from one normed input, so heads of a layer share their reader), the input of each
  MLP, and the logits.
- An edge (u, v) exists when writer u comes before reader v. Cutting it adds
  ``delta = ablated_u - actual_u`` to what v reads and nothing else.

How the delta reaches one reader only: to change the attention input of layer l by delta we add
delta to ``resid_pre`` and subtract it from ``attn_out``, so the residual stream after attention
is unchanged and only q/k/v saw it; for the MLP input we add delta to ``attn_out`` and subtract it
from ``mlp_out``; for the logits we add it to the last ``resid_post``. ``actual_u`` is read during
the same forward, so ablating an upstream edge correctly changes what downstream writers produce.
Rows of the batch may carry different edge masks: K copies of a batch, each with its own cut
edges, run as one forward (the speed lever of patching and pruning). A float mask in [0, 1]
interpolates, which is what learned masks train.

Assumptions: sequential blocks (attention then MLP; parallel blocks raise), a linear output
projection (``nn.Linear`` or GPT-2's ``Conv1D``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lmscope.core import edits
from lmscope.core.architectures import get_module
from lmscope.core.hooks import capture, intervene
from lmscope.core.sites import Site

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lmscope.core.inputs import Batch
    from lmscope.core.model import Model


@dataclass(frozen=True)
class ComponentGraph:
    """Writers, readers and which edges exist, for a model of ``n_layers`` x ``n_heads``."""

    n_layers: int
    n_heads: int

    @classmethod
    def of(cls, model: Model) -> ComponentGraph:
        if model.is_parallel:
            raise NotImplementedError("edge ablation needs sequential attention -> MLP blocks; this model is parallel")
        return cls(model.shape.n_layers, model.shape.n_heads)

    @property
    def writers(self) -> list[str]:
        """Writer names: "embed", "a{l}.h{h}", "mlp{l}" in forward order."""
        out = ["embed"]
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"mlp{layer}"]
        return out

    @property
    def readers(self) -> list[str]:
        """Reader names: "attn{l}.in", "mlp{l}.in", "logits" in forward order."""
        out = []
        for layer in range(self.n_layers):
            out += [f"attn{layer}.in", f"mlp{layer}.in"]
        return out + ["logits"]

    @property
    def n_writers(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_readers(self) -> int:
        return 2 * self.n_layers + 1

    def writer_index(self, layer: int, head: int | None) -> int:
        """Index of head ``head`` of ``layer`` (or of its MLP when head is None)."""
        return 1 + layer * (self.n_heads + 1) + (self.n_heads if head is None else head)

    def layer_writers(self, layer: int) -> slice:
        """Writers of one layer (its heads, then its MLP)."""
        lo = 1 + layer * (self.n_heads + 1)
        return slice(lo, lo + self.n_heads + 1)

    def attn_reader(self, layer: int) -> int:
        return 2 * layer

    def mlp_reader(self, layer: int) -> int:
        return 2 * layer + 1

    @property
    def logits_reader(self) -> int:
        return 2 * self.n_layers

    def valid(self) -> Tensor:
        """(writer, reader) bool: the edge exists (writer strictly upstream of reader)."""
        v = torch.zeros(self.n_writers, self.n_readers, dtype=torch.bool)
        v[0] = True
        for layer in range(self.n_layers):
            heads = slice(1 + layer * (self.n_heads + 1), 1 + layer * (self.n_heads + 1) + self.n_heads)
            mlp = self.writer_index(layer, None)
            v[heads, self.mlp_reader(layer) :] = True
            v[mlp, self.attn_reader(layer + 1) if layer + 1 < self.n_layers else self.logits_reader :] = True
        return v


def _o_weight(model: Model, layer: int) -> Tensor:
    """Output projection weight as (d_model, head, d_head)."""
    mod = get_module(model.layers[layer], model.arch.o_proj) if model.arch.o_proj else None
    if isinstance(mod, nn.Linear):
        w = mod.weight
    elif mod is not None and hasattr(mod, "nf"):  # GPT-2 Conv1D stores (in, out)
        w = mod.weight.T
    else:
        raise NotImplementedError(f"head outputs need a linear output projection; {model.arch.name} has {type(mod).__name__}")
    s = model.shape
    return w.reshape(s.d_model, s.n_heads, s.d_head)


def head_outputs(z: Tensor, w_o: Tensor) -> Tensor:
    """(batch, seq, head, d_head) z and (d_model, head, d_head) weight -> (batch, seq, head, d_model)."""
    return torch.einsum("bshk,dhk->bshd", z, w_o.to(z.dtype))


@torch.no_grad()
def writer_outputs(model: Model, batch: Batch) -> Tensor:
    """What every writer adds to the residual stream: (batch, seq, writer, d_model)."""
    g = ComponentGraph.of(model)
    L = g.n_layers
    sites = [Site("embed")] + [Site("attn_z", layer) for layer in range(L)] + [Site("mlp_out", layer) for layer in range(L)]
    with capture(model, sites) as acts:
        model(batch)
    parts = [acts[Site("embed")][:, :, None]]
    for layer in range(L):
        parts.append(head_outputs(acts[Site("attn_z", layer)], _o_weight(model, layer)))
        parts.append(acts[Site("mlp_out", layer)][:, :, None])
    return torch.cat(parts, dim=2)


def repeat_batch(batch: Batch, k: int) -> Batch:
    """K stacked copies of a batch (copy c holds rows c*n .. (c+1)*n - 1)."""
    from lmscope.core.inputs import Batch as _Batch

    return _Batch(batch.input_ids.repeat(k, 1), batch.attention_mask.repeat(k, 1), batch.position_ids.repeat(k, 1))


@contextmanager
def edge_edits(
    model: Model,
    graph: ComponentGraph,
    *,
    removed: Tensor | None = None,
    ablated: Tensor | None = None,
    const: Mapping[int, Tensor] | None = None,
) -> Iterator[None]:
    """Within the block, every forward cuts edges and/or adds constant deltas to readers.

    Args:
        removed: (rows or 1, writer, reader) weights in [0, 1]: reader v reads
            ``actual_u + removed[u, v] * (ablated_u - actual_u)`` from writer u (1 = cut).
        ablated: (rows or 1, seq, writer, d_model) replacement writer outputs (mean, zero,
            corrupted run...), required with ``removed``.
        const: reader index -> (rows or 1, seq, d_model) delta added to that reader's input (edge
            patching with precomputed differences; a zero tensor with requires_grad gives the
            gradient of the output with respect to the reader's input).
    """
    if removed is not None and ablated is None:
        raise ValueError("removed edges need ablated writer outputs")
    const = dict(const or {})
    L = graph.n_layers
    # reader -> accumulated sum over cut writers of removed[u, v] * (ablated_u - actual_u), built as each
    # writer's output appears (memory: one (rows, seq, d) tensor per downstream reader, not per writer)
    acc: dict[int, Tensor] = {}
    wo = [_o_weight(model, layer) for layer in range(L)]

    def diff(start: int, actual: Tensor, first_reader: int) -> None:
        if removed is None:
            return
        ws = slice(start, start + actual.shape[2])
        w_all = removed[:, ws, first_reader:]
        if not bool((w_all != 0).any()):
            return
        a = ablated[:, :, ws].to(actual.dtype)  # type: ignore[index]
        if a.shape[0] not in (1, actual.shape[0]):  # one reference per example, tiled over stacked copies
            a = a.repeat(actual.shape[0] // a.shape[0], 1, 1, 1)
        d = a - actual  # (rows, seq, writers, d_model)
        for j in range(w_all.shape[-1]):
            w = w_all[:, :, j].to(actual.dtype)
            if not bool((w != 0).any()):
                continue
            add = torch.einsum("rswd,rw->rsd", d, w.expand(d.shape[0], -1) if w.shape[0] == 1 else w)
            r = first_reader + j
            acc[r] = add if r not in acc else acc[r] + add

    def delta(reader: int, like: Tensor) -> Tensor | None:
        out = const.get(reader)
        out = None if out is None else out.to(like.dtype)
        cut = acc.pop(reader, None)
        if cut is not None:
            out = cut if out is None else out + cut
        return out

    def plus(x: Tensor, *ds: tuple[Tensor | None, float]) -> Tensor:
        for d, sign in ds:
            if d is not None:
                x = x + sign * d
        return x

    def on_embed(x: Tensor) -> Tensor:
        acc.clear()
        diff(0, x[:, :, None], 0)
        return x

    plan: dict[Site, edits.Edit] = {Site("embed"): edits.custom(on_embed)}
    for layer in range(L):
        pending: dict[str, Tensor | None] = {}

        def on_pre(x: Tensor, layer: int = layer, pending: dict = pending) -> Tensor:
            pending["attn"] = delta(graph.attn_reader(layer), x)
            return plus(x, (pending["attn"], 1.0))

        def on_z(z: Tensor, layer: int = layer) -> Tensor:
            diff(graph.writer_index(layer, 0), head_outputs(z, wo[layer]), graph.mlp_reader(layer))
            return z

        def on_attn_out(x: Tensor, layer: int = layer, pending: dict = pending) -> Tensor:
            pending["mlp"] = delta(graph.mlp_reader(layer), x)
            return plus(x, (pending["mlp"], 1.0), (pending.get("attn"), -1.0))

        def on_mlp_out(x: Tensor, layer: int = layer, pending: dict = pending) -> Tensor:
            diff(graph.writer_index(layer, None), x[:, :, None], graph.mlp_reader(layer) + 1)
            out = plus(x, (pending.get("mlp"), -1.0))
            if layer == L - 1:
                out = plus(out, (delta(graph.logits_reader, x), 1.0))
            return out

        plan[Site("resid_pre", layer)] = edits.custom(on_pre)
        plan[Site("attn_z", layer)] = edits.custom(on_z)
        plan[Site("attn_out", layer)] = edits.custom(on_attn_out)
        plan[Site("mlp_out", layer)] = edits.custom(on_mlp_out)
    with intervene(model, plan):
        yield


def ablation_values(reference: Tensor, kind: str, *, seed: int = 0) -> Tensor:
    """Replacement writer outputs from a reference run's (n, seq, writer, d) outputs.

    kind: "mean" (mean over the reference examples, per position), "zero", "resample" (another
    reference example, drawn with ``seed``) or "corrupt" (the same example's reference run,
    i.e. patching from the corrupted prompt). Per-example values are tiled over stacked copies
    by :func:`edge_edits`.
    """
    n = reference.shape[0]
    if kind == "mean":
        return reference.mean(0, keepdim=True)
    if kind == "zero":
        return torch.zeros_like(reference[:1])
    if kind == "corrupt":
        return reference
    if kind == "resample":
        gen = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, max(n, 2), (n,), generator=gen)
        perm = (torch.arange(n) + shift) % n if n > 1 else torch.zeros(1, dtype=torch.long)
        return reference[perm]
    raise ValueError(f"ablation must be 'mean', 'zero', 'resample' or 'corrupt', got {kind!r}")
