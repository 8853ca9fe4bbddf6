"""Consuming a context token by token as a sequence of rank-1 updates: the implicit "gradient descent".

Dherin et al. 2025 (see :mod:`lmscope.icl.rank1`): with A_i = A(c_1..c_i, x) the MLP input at the
query's last token after the first i context tokens (A_0 = A(x)), the cumulative update is
dW_i = (W (A_i - A_0)) A_0^T / ||A_0||^2, and one step is

    W_{i+1} - W_i = -h * G_i,   h = 1 / ||A_0||^2,   G_i = W (A_i - A_{i+1}) A_0^T

so each new token moves W like one step of gradient descent on the loss L_i(W) = trace(G_i^T W)
with learning rate h. h depends only on the query, not on i. The paper predicts the updates
shrink as the context grows (the "gradient" vanishes, dW converges). :func:`trajectory` measures
that: ||dW_i||, ||W_{i+1} - W_i||, ||G_i|| and cos(dW_i, dW_n) for every prefix of the context,
at every requested layer (one batched forward over all prefixes).

    >>> import lmscope as ls
    >>> from lmscope.icl.trajectory import trajectory
    >>> model = ls.load_tiny("llama")
    >>> tr = trajectory(model, "the quick brown fox. hello world. ", "the lazy dog", layers=[1])
    >>> tr.dw_norm.shape[1] == len(tr.tokens) + 1
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.core.hooks import capture
from lmscope.core.inputs import Batch, pad_rows
from lmscope.core.model import Model
from lmscope.icl.rank1 import _bos, _ids, contextual_block, weight_matrix


@dataclass
class Trajectory:
    """Per layer and per context prefix, the implicit update's size and direction."""

    layers: list[int]
    tokens: list[str]
    """The context tokens c_1..c_n."""
    lr: list[float]
    """h = 1 / ||A(x)||^2 per layer (constant along the trajectory)."""
    dw_norm: Tensor
    """(layer, n + 1) ||dW_i||_F for i = 0..n (dW_0 = 0)."""
    step_norm: Tensor
    """(layer, n) ||W_{i+1} - W_i||_F = h ||G_i||_F."""
    grad_norm: Tensor
    """(layer, n) ||G_i||_F, the "gradient" of step i."""
    cos_to_final: Tensor
    """(layer, n + 1) cosine between dW_i and the full-context dW_n (0 for i = 0)."""
    example_ends: list[int]
    """Prefix lengths i at which a demonstration ends (given by the caller, else empty)."""
    example_step_norm: Tensor
    """(layer, len(example_ends)) ||dW_{e_j} - dW_{e_(j-1)}||_F between consecutive demonstration ends (e_0 = 0)."""

    def convergence(self) -> list[float]:
        """Per layer: mean step norm over the last quarter of the context / over the first quarter."""
        n = self.step_norm.shape[1]
        q = max(1, n // 4)
        first, last = self.step_norm[:, :q].mean(1), self.step_norm[:, -q:].mean(1)
        return (last / first.clamp_min(1e-30)).tolist()

    def to_json(self) -> dict:
        return {
            "layers": self.layers, "tokens": self.tokens, "lr": self.lr, "dw_norm": self.dw_norm.tolist(),
            "step_norm": self.step_norm.tolist(), "grad_norm": self.grad_norm.tolist(),
            "cos_to_final": self.cos_to_final.tolist(), "example_ends": self.example_ends,
            "example_step_norm": self.example_step_norm.tolist(),
            "convergence_last_over_first_quarter": self.convergence(),
        }  # fmt: skip


def _padded(rows: list[list[int]], pad_id: int, max_len: int | None = None) -> Batch:
    width = max(len(r) for r in rows)
    if max_len is not None and width > max_len:
        raise ValueError(f"a prompt has {width} tokens, longer than the model's context window of {max_len}")
    return pad_rows(rows, pad_id)


def last_token_inputs(model: Model, rows: Sequence[Sequence[int]], layers: Sequence[int], *, batch_size: int = 16) -> Tensor:
    """(rows, layer, d_model) the MLP input A at each row's last token, for token-id rows (left-padded batches)."""
    sites = [contextual_block(model, layer).a_site for layer in layers]
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out = []
    for i in range(0, len(rows), batch_size):
        batch = _padded([list(r) for r in rows[i : i + batch_size]], pad, model.shape.max_positions).to(model.device)
        with capture(model, sites, stop_early=True) as acts:
            model(batch)
        last = batch.last_index
        rows_idx = torch.arange(len(last), device=last.device)
        out.append(torch.stack([acts[s][rows_idx, last].float().cpu() for s in sites], 1))
    return torch.cat(out)


def first_matrix(model: Model, layer: int) -> Tensor:
    """The layer's first matrices stacked along their outputs, (sum of outs, d_model), float32."""
    block = contextual_block(model, layer)
    return torch.cat([weight_matrix(m).detach().float().cpu() for _, m in block.first])


def trajectory(
    model: Model,
    context: str | Sequence[int],
    query: str | Sequence[int],
    layers: Sequence[int] | None = None,
    *,
    example_ends: Sequence[int] = (),
    batch_size: int = 16,
) -> Trajectory:
    """The token-by-token implicit update of ``layers`` while ``context`` is consumed before ``query``."""
    layers = list(range(model.shape.n_layers)) if layers is None else list(layers)
    c = _ids(model, context) if isinstance(context, str) else list(context)
    q = _ids(model, query) if isinstance(query, str) else list(query)
    if not c or not q:
        raise ValueError("trajectory needs a non-empty context and query")
    bos = _bos(model)
    rows = [bos + c[:i] + q for i in range(len(c) + 1)]
    acts = last_token_inputs(model, rows, layers, batch_size=batch_size)  # (n + 1, layer, d_model)
    lr, dw, step, grad, cos, ex = [], [], [], [], [], []
    ends = [0, *example_ends]
    for j, layer in enumerate(layers):
        w = first_matrix(model, layer)
        a_seq = acts[:, j]  # (n + 1, d_model)
        a0 = a_seq[0]
        h = 1.0 / float(a0.double().pow(2).sum())
        wd = (a_seq - a0) @ w.T  # (n + 1, out): W dA_i, the left factor of dW_i
        ws = (a_seq[:-1] - a_seq[1:]) @ w.T  # (n, out): W (A_i - A_{i+1})
        norm_a = float(a0.norm())
        lr.append(h)
        dw.append(wd.norm(dim=1) / norm_a)
        grad.append(ws.norm(dim=1) * norm_a)
        step.append(ws.norm(dim=1) / norm_a)
        final = wd[-1]
        cos.append((wd @ final) / (wd.norm(dim=1) * final.norm()).clamp_min(1e-30))
        ex.append(
            torch.stack([(wd[e] - wd[b]).norm() / norm_a for b, e in zip(ends[:-1], ends[1:], strict=True)])
            if example_ends
            else torch.zeros(0)
        )
    return Trajectory(
        layers=layers, tokens=[model.tokenizer.decode([t]) for t in c], lr=lr, dw_norm=torch.stack(dw),
        step_norm=torch.stack(step), grad_norm=torch.stack(grad), cos_to_final=torch.stack(cos),
        example_ends=list(example_ends), example_step_norm=torch.stack(ex),
    )  # fmt: skip


def demo_ends(model: Model, demos: Sequence[str], sep: str) -> tuple[list[int], list[int]]:
    """Context token ids of ``demos`` joined by ``sep`` (each followed by it) and the prefix length after each."""
    ids: list[int] = []
    ends = []
    for d in demos:
        ids += _ids(model, d + sep)
        ends.append(len(ids))
    return ids, ends
