"""The implicit rank-1 weight update of in-context learning, computed and checked on a real model.

Dherin et al. 2025 ("Learning without training: the implicit dynamics of in-context learning")
view a transformer layer as a *contextual block*: a contextual layer A (attention, plus whatever
sits between it and the MLP) followed by an MLP whose first layer has weights W. Let A(x) be what
the MLP's first matrices see at the query's last token when the query x runs alone, and A(C, x)
the same vector when a context C precedes the query. Then with dA = A(C, x) - A(x)::

    dW = (W dA) A(x)^T / ||A(x)||^2         (rank 1)
    (W + dW) A(x) = W A(x) + W dA = W A(C, x)

so the MLP's output on the query alone, with W replaced by W + dW, equals its output with the
context. Biases are untouched (they add the same term on both sides).

**Which tensor is A.** The identity holds for exactly the vector that W multiplies, so A is the
``mlp_in`` site: the input of the MLP module, i.e. the output of the norm in front of the MLP
(Llama/Qwen/Mistral/Phi-3: ``post_attention_layernorm``; Gemma: ``pre_feedforward_layernorm``;
GPT-2: ``ln_2``; GPT-NeoX: ``post_attention_layernorm``). For sequential blocks that is
norm(resid_pre + attn_out), so the context reaches A through attention, the residual and the
norm; for parallel blocks (GPT-NeoX) it is norm(resid_pre) and the context reaches A only
through earlier layers. Taking A before the norm (``resid_mid``) breaks the identity: the norm is
not linear, so W norm(r + dr) != (W + dW) norm(r) for a dW built from dr.

**The whole layer.** A decoder layer outputs skip + MLP(A), with skip = resid_pre + attn_out. The
update above fixes the MLP term only; the context also changes the skip term. A second rank-1
update of the down projection absorbs it: with m the neurons (``mlp_post``) at the query's last
token (which, after the first update, equal the with-context neurons) and
dR = skip(C, x) - skip(x), ``dW_down = dR m^T / ||m||^2`` adds exactly dR to the layer output.
Applying both updates layer by layer, each computed on the query *with the earlier layers'
updates already in place* (the updates change the query's other positions too, which later
attention reads), makes the query alone reproduce the with-context last-token state and hence
its next-token distribution (:func:`absorb_context`). Families with a norm after the MLP
(Gemma's sandwich norms) cannot absorb dR in the down projection; absorption refuses them.

    >>> import lmscope as ls
    >>> from lmscope.icl.rank1 import verify_rank1
    >>> model = ls.load_tiny("llama")
    >>> checks = verify_rank1(model, "the quick brown fox. ", "hello world")
    >>> max(c.rel_err_fp32 for c in checks) < 1e-5
    True
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmscope.core import edits
from lmscope.core.architectures import get_module
from lmscope.core.edits import Edit
from lmscope.core.hooks import capture, intervene
from lmscope.core.metrics import kl_div
from lmscope.core.model import Model
from lmscope.core.sites import Site


# ---- the contextual block ---------------------------------------------------------------------
@dataclass(frozen=True)
class ContextualBlock:
    """One decoder layer seen as a contextual block: A = ``mlp_in``, W = the MLP's first matrices."""

    layer: int
    mlp: nn.Module
    first: tuple[tuple[str, nn.Module], ...]
    """(path inside the layer, module) of each first matrix (gate and up for gated MLPs)."""
    down: tuple[str, nn.Module]
    """(path inside the layer, module) of the down projection (its input is ``mlp_post``)."""
    mlp_path: str
    """Path of the MLP module inside the layer (first-matrix paths start with it)."""
    a_site: Site
    """Where A is read: the MLP's input, after its norm."""
    post_norm: bool
    """True when a norm follows the MLP (Gemma): the down-projection absorption is then impossible."""


def contextual_block(model: Model, layer: int) -> ContextualBlock:
    """The contextual-block view of ``layer`` (uses the family table's ``mlp_first``)."""
    arch = model.arch
    if not 0 <= layer < model.shape.n_layers:
        raise IndexError(f"layer {layer} out of range: the model has n_layers={model.shape.n_layers}")
    if not arch.mlp_first or arch.mlp is None or arch.down_proj is None:
        raise NotImplementedError(f"architecture {arch.name!r} does not map the MLP's first matrices (mlp_first)")
    block = model.layers[layer]
    first = tuple((p, get_module(block, p)) for p in arch.mlp_first)
    return ContextualBlock(
        layer, get_module(block, arch.mlp), first, (arch.down_proj, get_module(block, arch.down_proj)),
        arch.mlp, Site("mlp_in", layer), post_norm=arch.mlp_out != arch.mlp,
    )  # fmt: skip


def _weight(module: nn.Module) -> Tensor:
    w = module.weight
    if not isinstance(w, Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return w


def weight_matrix(module: nn.Module) -> Tensor:
    """A linear map's weight as (out, in); GPT-2's Conv1D stores (in, out) and is transposed."""
    w = _weight(module)
    return w.T if type(module).__name__ == "Conv1D" else w


def _add_to_weight(module: nn.Module, delta: Tensor) -> None:
    """weight += delta, with delta given as (out, in)."""
    d = delta.T if type(module).__name__ == "Conv1D" else delta
    w = _weight(module)
    w.data.add_(d.to(w.dtype))


# ---- one rank-1 update ------------------------------------------------------------------------
@dataclass
class Rank1Update:
    """dW = u v^T for each matrix of one layer (u = W dA or dR, v = a / ||a||^2)."""

    layer: int
    a: Tensor
    """(d_in,) the input the matrices see without the context: A(x), or the neurons m for the down projection."""
    u: dict[str, Tensor]
    """Matrix path -> (out,) left factor."""

    @property
    def v(self) -> Tensor:
        """(d_in,) the right factor a / ||a||^2, shared by every matrix of the update."""
        return self.a / self.a.pow(2).sum()

    @property
    def lr(self) -> float:
        """The paper's learning rate h = 1 / ||A(x)||^2."""
        return float(1.0 / self.a.double().pow(2).sum())

    def delta(self, path: str) -> Tensor:
        """(out, in) dW of one matrix."""
        return torch.outer(self.u[path], self.v)

    def norm(self) -> float:
        """Frobenius norm of all the layer's dW together: sqrt(sum ||u||^2) * ||v||."""
        total = torch.stack([u.double().pow(2).sum() for u in self.u.values()]).sum()
        return float(total.sqrt() * self.v.double().norm())


def _ids(model: Model, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos(model: Model) -> list[int]:
    tok = model.tokenizer
    with_special = tok("a")["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    return list(with_special[: len(with_special) - len(plain)]) if len(with_special) > len(plain) else []


def join_ids(model: Model, context: str | Sequence[int], query: str | Sequence[int]) -> tuple[Tensor, Tensor]:
    """(query ids, context + query ids), each 1-D, tokenized separately so the query's tokens are identical."""
    c = _ids(model, context) if isinstance(context, str) else list(context)
    q = _ids(model, query) if isinstance(query, str) else list(query)
    if not q:
        raise ValueError("the query is empty")
    bos = _bos(model)
    return torch.tensor(bos + q), torch.tensor(bos + c + q)


def _last_states(model: Model, ids: Tensor, sites: Sequence[Site]) -> dict[Site, Tensor]:
    """Each site's (width,) value at the last token of one unpadded sequence."""
    with capture(model, sites, stop_early=True) as acts:
        model(ids[None].to(model.device))
    return {s: acts[s][0, -1].float().detach().clone() for s in sites}


def rank1_update(model: Model, layer: int, context: str | Sequence[int], query: str | Sequence[int]) -> Rank1Update:
    """dW of ``layer``'s first MLP matrices for ``context`` and ``query`` (both models' forward passes unedited)."""
    block = contextual_block(model, layer)
    q_ids, cq_ids = join_ids(model, context, query)
    a = _last_states(model, q_ids, [block.a_site])[block.a_site]
    a_ctx = _last_states(model, cq_ids, [block.a_site])[block.a_site]
    return _first_update(block, a, a_ctx)


def _first_update(block: ContextualBlock, a: Tensor, a_ctx: Tensor) -> Rank1Update:
    if float(a.norm()) == 0:
        raise ValueError(f"A(x) is zero at layer {block.layer}: the update is undefined")
    d_a = (a_ctx - a).to(_weight(block.first[0][1]).dtype)
    u = {p: weight_matrix(m).detach() @ d_a.to(_weight(m).device) for p, m in block.first}
    return Rank1Update(block.layer, a.to(d_a.dtype), u)


@contextmanager
def applied(model: Model, updates: Sequence[Rank1Update]) -> Iterator[None]:
    """Add every update's dW to the weights inside the block; restore the exact original weights on exit."""
    saved: list[tuple[nn.Module, Tensor]] = []
    try:
        for upd in updates:
            block = model.layers[upd.layer]
            for path in upd.u:
                module = get_module(block, path)
                saved.append((module, _weight(module).data.clone()))
                _add_to_weight(module, upd.delta(path).to(_weight(module).device))
        yield
    finally:
        for module, original in reversed(saved):
            _weight(module).data.copy_(original)


# ---- checking the identity layer by layer -----------------------------------------------------
@dataclass(frozen=True)
class LayerCheck:
    """Relative errors ||MLP_{W'}(A(x)) - MLP_W(A(C,x))|| / ||MLP_W(A(C,x))|| at one layer."""

    layer: int
    rel_err_fp32: float
    """With W' = W + dW, computed in float32."""
    rel_err_fp64: float
    """Same in float64 (A and W cast up): the identity's error without rounding."""
    rel_err_no_update: float
    """With W' = W: how much the context changes the MLP output (the scale to beat)."""
    rel_err_perturbed: float
    """Negative control: dW built from a perturbed dA (10% random noise); must be far from 0."""
    dw_norm: float
    lr: float


def _mlp_with(block: ContextualBlock, upd: Rank1Update | None, x: Tensor, dtype: torch.dtype) -> Tensor:
    mlp = copy.deepcopy(block.mlp).to(dtype)
    mats = dict(mlp.named_modules())
    prefix = block.mlp_path + "."  # first-matrix paths are relative to the layer, e.g. "mlp.gate_proj"
    if upd is not None:
        for path in upd.u:
            mod = mats[path[len(prefix) :]] if path.startswith(prefix) else mats[path]
            delta = torch.outer(upd.u[path].to(dtype), upd.a.to(dtype) / upd.a.to(dtype).pow(2).sum())
            _add_to_weight(mod, delta.to(_weight(mod).device))
    with torch.no_grad():
        return mlp(x.to(dtype)[None, None].to(next(mlp.parameters()).device))[0, 0]


def _rel(x: Tensor, ref: Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300))


def verify_rank1(
    model: Model, context: str | Sequence[int], query: str | Sequence[int], layers: Sequence[int] | None = None, *, seed: int = 0
) -> list[LayerCheck]:
    """Check (W + dW) A(x) through the MLP equals the MLP on A(C, x), per layer, fp32 and fp64."""
    layers = list(range(model.shape.n_layers)) if layers is None else list(layers)
    blocks = [contextual_block(model, layer) for layer in layers]
    q_ids, cq_ids = join_ids(model, context, query)
    sites = [b.a_site for b in blocks]
    a_all = _last_states(model, q_ids, sites)
    c_all = _last_states(model, cq_ids, sites)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in blocks:
        a, a_ctx = a_all[b.a_site], c_all[b.a_site]
        target32 = _mlp_with(b, None, a_ctx, torch.float32)
        target64 = _mlp_with(b, None, a_ctx.double(), torch.float64)
        upd32 = _first_update(b, a, a_ctx)
        upd64 = Rank1Update(b.layer, a.double(), {p: weight_matrix(m).detach().double() @ (a_ctx.double() - a.double()).to(
            _weight(m).device) for p, m in b.first})  # fmt: skip
        d_a = a_ctx - a
        noisy = a_ctx + 0.1 * d_a.norm() * torch.randn(d_a.shape, generator=gen) / d_a.numel() ** 0.5
        bad = _first_update(b, a, noisy)
        out.append(
            LayerCheck(
                layer=b.layer,
                rel_err_fp32=_rel(_mlp_with(b, upd32, a, torch.float32), target32),
                rel_err_fp64=_rel(_mlp_with(b, upd64, a.double(), torch.float64), target64),
                rel_err_no_update=_rel(_mlp_with(b, None, a, torch.float32), target32),
                rel_err_perturbed=_rel(_mlp_with(b, bad, a, torch.float32), target32),
                dw_norm=upd32.norm(),
                lr=upd32.lr,
            )
        )
    return out


# ---- whole-model absorption -------------------------------------------------------------------
@dataclass
class Absorption:
    """Every layer's rank-1 updates that make the query alone behave as if the context were there."""

    updates: list[Rank1Update]
    """First-matrix updates, then (with ``residual=True``) down-projection updates, layer by layer."""
    kl_query_alone: float
    """KL(with context || query alone) at the next token, nats: the context's effect."""
    kl_absorbed: float
    """KL(with context || query alone with every update applied)."""
    top1_match: bool
    """Whether the absorbed query's top token equals the with-context top token."""
    ctx_logits: Tensor
    absorbed_logits: Tensor


def _live_updates(
    model: Model, blocks: list[ContextualBlock], q_ids: Tensor, ctx: dict[Site, Tensor], residual: bool
) -> list[Rank1Update]:
    """Build every layer's updates in one forward pass of the query.

    Layer l's update needs A_l(x) as it is *after* layers < l were updated; in a single pass that
    is exactly what the MLP of layer l receives, so each update is computed in a hook at the
    moment its layer is reached and written into the weights before the layer's matrices run
    (the same as n sequential passes, n times cheaper). Weights are restored when the pass ends.
    """
    updates: list[Rank1Update] = []
    live: dict[Site, Tensor] = {}

    def record(site: Site):
        def fn(x: Tensor) -> Tensor:
            live[site] = x[0, -1].float().detach().clone()
            return x

        return fn

    with ExitStack() as stack:

        def first_hook(b: ContextualBlock):
            def fn(x: Tensor) -> Tensor:
                upd = _first_update(b, x[0, -1].float().detach().clone(), ctx[b.a_site])
                updates.append(upd)
                stack.enter_context(applied(model, [upd]))
                return x

            return fn

        def down_hook(b: ContextualBlock):
            def fn(m: Tensor) -> Tensor:
                pre, att = Site("resid_pre", b.layer), Site("attn_out", b.layer)
                d_r = (ctx[pre] + ctx[att]) - (live[pre] + live[att])
                upd = Rank1Update(b.layer, m[0, -1].float().detach().clone(), {b.down[0]: d_r})
                updates.append(upd)
                stack.enter_context(applied(model, [upd]))
                return m

            return fn

        plan: dict[Site | str, Edit | Sequence[Edit]] = {}
        for b in blocks:
            plan[b.a_site] = edits.custom(first_hook(b))
            if residual:
                for kind in ("resid_pre", "attn_out"):
                    plan[Site(kind, b.layer)] = edits.custom(record(Site(kind, b.layer)))
                plan[Site("mlp_post", b.layer)] = edits.custom(down_hook(b))
        with intervene(model, plan):
            model(q_ids[None].to(model.device))
    return updates


def absorb_context(
    model: Model, context: str | Sequence[int], query: str | Sequence[int], *, residual: bool = True
) -> Absorption:
    """Compute every layer's updates (sequentially, in one pass) and check the next-token distribution they give.

    With ``residual=False`` only the first matrices are updated (the paper's form); the skip
    term's change is then lost and the KL stays above zero.
    """
    n = model.shape.n_layers
    blocks = [contextual_block(model, layer) for layer in range(n)]
    if residual and any(b.post_norm for b in blocks):
        raise NotImplementedError(
            f"{model.arch.name}: a norm follows the MLP, so the residual change cannot be absorbed in the down "
            "projection; use residual=False"
        )
    q_ids, cq_ids = join_ids(model, context, query)
    skip_sites = [s for layer in range(n) for s in (Site("resid_pre", layer), Site("attn_out", layer))]
    with capture(model, [b.a_site for b in blocks] + skip_sites) as acts:
        ctx_logits = model(cq_ids[None].to(model.device))[0, -1].float()  # type: ignore[index]
    ctx = {s: acts[s][0, -1].float() for s in acts}
    alone_logits = model(q_ids[None].to(model.device))[0, -1].float()  # type: ignore[index]
    updates = _live_updates(model, blocks, q_ids, ctx, residual)
    with applied(model, updates):  # the check uses the stored updates, not the pass that built them
        absorbed = model(q_ids[None].to(model.device))[0, -1].float()  # type: ignore[index]
    return Absorption(
        updates=updates,
        kl_query_alone=float(kl_div(ctx_logits, alone_logits)),
        kl_absorbed=float(kl_div(ctx_logits, absorbed)),
        top1_match=bool(ctx_logits.argmax() == absorbed.argmax()),
        ctx_logits=ctx_logits.cpu(),
        absorbed_logits=absorbed.cpu(),
    )
