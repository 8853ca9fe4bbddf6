"""Patchscopes: let the model describe one of its own hidden states in words.

What it is. Ghandeharioun et al. 2024 ("Patchscopes: A Unifying Framework for Inspecting Hidden
Representations of Language Models") read a hidden state ``h`` by *patching* it into another
forward pass and letting the model continue: take ``h`` at (source prompt, source layer, source
position), optionally map it (``mapping``), write it over the hidden state at (target prompt,
target layer, target position), and generate. The target prompt decides the question asked:

- **token identity** (``"cat -> cat; 1135 -> 1135; hello -> hello; ?"``): the model copies what
  the patched ``?`` stands for, so the continuation decodes the token/entity ``h`` carries;
- **entity description** (few-shot "name: description" lines ending in ``x``): the model
  describes the entity ``h`` represents - what layer l already knows about the subject;
- **next-token inspection**: the identity prompt with the source's last position; the first
  generated token is compared with the model's own next-token prediction.

Mechanics here: the source state is read with ``capture``; the write is ``edits.replace`` at the
target's absolute position, which only exists in the prompt pass, so generated tokens are never
overwritten. Many (source layer, target layer) pairs share one batched ``generate``: each row's
edit has a per-row position (``-1`` for rows it must not touch).

Assumptions: a residual-basis site (``resid_post`` by default) on both sides; both prompts are
run without padding; greedy decoding.

Example::

    >>> import lmscope as ls
    >>> from lmscope.lenses.patchscopes import patchscope
    >>> model = ls.load_tiny("llama")
    >>> r = patchscope(model, "hello world", source_layer=1, max_new_tokens=3)
    >>> isinstance(r.continuation, str)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.model import Model
from lmscope.core.sites import RESIDUAL_BASIS_KINDS, Site

IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"
DESCRIPTION_PROMPT = (
    "Syria: Country in the Middle East. Leonardo DiCaprio: American actor. "
    "Samsung: South Korean multinational electronics corporation. x"
)
PRESETS: dict[str, str] = {
    "identity": IDENTITY_PROMPT,
    "description": DESCRIPTION_PROMPT,
    "next_token": IDENTITY_PROMPT,
}
"""Target prompts of the presets; each patches the prompt's last token."""

Mapping = Callable[[Tensor], Tensor]
"""Optional map applied to the source vector (d_model,) before it is written."""


@dataclass
class PatchscopeResult:
    """One patched generation."""

    source_prompt: str
    source_layer: int
    source_position: int
    """Absolute index into the source prompt's tokens."""
    source_token: str
    target_prompt: str
    target_layer: int
    target_position: int
    continuation: str
    """Greedy text generated after the patched target prompt."""
    first_token: str
    """The first generated token."""
    first_token_prob: float
    """Its probability under the patched run."""


@dataclass
class PatchscopeSweep:
    """Patchscope results for many source layers (one row each)."""

    rows: list[PatchscopeResult]
    model_next_token: str
    """The model's own next token after the source prompt (for next-token inspection)."""

    def table(self) -> tuple[list[str], list[list[Any]]]:
        header = ["source layer", "target layer", "first token", "p", "continuation"]
        return header, [[r.source_layer, r.target_layer, r.first_token, round(r.first_token_prob, 4), r.continuation]
                        for r in self.rows]  # fmt: skip

    def contains(self, text: str) -> list[bool]:
        """Per row: does the continuation mention ``text`` (case-insensitive)?"""
        return [text.lower() in r.continuation.lower() for r in self.rows]

    def first_token_matches(self) -> list[bool]:
        """Per row: is the first generated token the model's own next token (next-token inspection)?"""
        return [r.first_token == self.model_next_token for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"model_next_token": self.model_next_token, "rows": [asdict(r) for r in self.rows]}

    def save(self, folder: str | Path, title: str = "Patchscope layer sweep") -> Path:
        return self.report(title).write(folder)

    def report(self, title: str = "Patchscope layer sweep"):  # -> lmscope.experiments.Result
        from lmscope.experiments.report import Result

        report = Result(title)
        first = self.rows[0]
        report.text("Setup", f"source {first.source_prompt!r} at token {first.source_token!r}; target {first.target_prompt!r}")
        report.table("Per source layer", *self.table())
        report.data = self.to_dict()
        return report


def _position(n_tokens: int, position: int, what: str) -> int:
    p = position + n_tokens if position < 0 else position
    if not 0 <= p < n_tokens:
        raise IndexError(f"{what} position {position} outside a prompt of {n_tokens} tokens")
    return p


def _check_layer(model: Model, layer: int, what: str) -> None:
    if not 0 <= layer < model.shape.n_layers:
        raise ValueError(f"{what} layer {layer} out of range; the model has {model.shape.n_layers} layers")


@torch.no_grad()
def source_states(model: Model, prompt: str, layers: Sequence[int], *, position: int = -1,
                  kind: str = "resid_post") -> tuple[Tensor, int, str]:  # fmt: skip
    """(len(layers), d_model) hidden states of ``prompt`` at ``position``, its absolute index and its token."""
    if kind not in RESIDUAL_BASIS_KINDS or kind in ("embed", "final_norm"):
        raise ValueError(f"patchscopes read a per-layer residual-basis site, not {kind!r}")
    for layer in layers:
        _check_layer(model, layer, "source")
    batch = model.tokenize(prompt)
    pos = _position(batch.shape[1], position, "source")
    sites = [Site(kind, layer) for layer in layers]
    with capture(model, sites) as acts:
        model(batch)
    states = torch.stack([acts[s][0, pos] for s in sites])
    return states, pos, model.tokenizer.decode([int(batch.input_ids[0, pos])])


@torch.no_grad()
def patched_generate(
    model: Model,
    vectors: Tensor,
    target_prompt: str,
    target_layers: Sequence[int],
    *,
    target_position: int = -1,
    kind: str = "resid_post",
    max_new_tokens: int = 16,
) -> tuple[list[str], list[str], list[float], int]:
    """Row r: write ``vectors[r]`` at (target_layers[r], target_position) and generate greedily.

    Returns continuations, first tokens, their probabilities, and the absolute target position.
    """
    n = vectors.shape[0]
    if len(target_layers) != n:
        raise ValueError(f"{n} vectors but {len(target_layers)} target layers")
    batch = model.tokenize([target_prompt] * n)
    pos = _position(batch.shape[1], target_position, "target")
    plan: dict[Site | str, list[edits.Edit]] = {}
    for row, layer in enumerate(target_layers):
        _check_layer(model, layer, "target")
        where = torch.full((n,), -1, dtype=torch.long)  # -1 matches no position: other rows untouched
        where[row] = pos
        plan.setdefault(Site(kind, layer), []).append(edits.replace(vectors[row], positions=where))
    with intervene(model, plan):
        logits = model(batch)
        assert logits is not None
        new = model.generate_tokens(batch, max_new_tokens=max_new_tokens)
    probs = logits[:, -1].float().softmax(-1)
    first_ids = new[:, 0]
    texts = model.tokenizer.batch_decode(new, skip_special_tokens=True)
    firsts = [model.tokenizer.decode([int(i)]) for i in first_ids]
    return texts, firsts, probs[torch.arange(n), first_ids].tolist(), pos


def patchscope(
    model: Model,
    source_prompt: str,
    *,
    source_layer: int,
    source_position: int = -1,
    target_prompt: str = IDENTITY_PROMPT,
    target_layer: int | None = None,
    target_position: int = -1,
    mapping: Mapping | None = None,
    kind: str = "resid_post",
    max_new_tokens: int = 16,
) -> PatchscopeResult:
    """Patch (source prompt, layer, position) into (target prompt, layer, position) and generate.

    ``target_layer`` defaults to ``source_layer``; ``mapping`` transforms the vector first.
    """
    sweep = patchscope_sweep(
        model, source_prompt, source_layers=[source_layer], target_layer=target_layer, source_position=source_position,
        target_prompt=target_prompt, target_position=target_position, mapping=mapping, kind=kind, max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return sweep.rows[0]


def patchscope_sweep(
    model: Model,
    source_prompt: str,
    *,
    source_layers: Sequence[int] | None = None,
    target_layer: int | None = None,
    source_position: int = -1,
    target_prompt: str = IDENTITY_PROMPT,
    target_position: int = -1,
    mapping: Mapping | None = None,
    kind: str = "resid_post",
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> PatchscopeSweep:
    """One row per source layer (default all); the target layer is the same layer unless given."""
    layers = list(range(model.shape.n_layers)) if source_layers is None else list(source_layers)
    if not layers:
        raise ValueError("source_layers is empty")
    states, src_pos, src_tok = source_states(model, source_prompt, layers, position=source_position, kind=kind)
    if mapping is not None:
        states = torch.stack([mapping(v) for v in states])
        if states.shape[-1] != model.shape.d_model:
            raise ValueError(f"mapping returned width {states.shape[-1]}, the model's d_model is {model.shape.d_model}")
    targets = [layer if target_layer is None else target_layer for layer in layers]
    rows: list[PatchscopeResult] = []
    for start in range(0, len(layers), batch_size):
        part = slice(start, start + batch_size)
        texts, firsts, probs, tgt_pos = patched_generate(model, states[part], target_prompt, targets[part],
                                                         target_position=target_position, kind=kind,
                                                         max_new_tokens=max_new_tokens)  # fmt: skip
        for i, (text, first, prob) in enumerate(zip(texts, firsts, probs, strict=True)):
            rows.append(PatchscopeResult(source_prompt, layers[start + i], src_pos, src_tok, target_prompt,
                                         targets[start + i], tgt_pos, text, first, prob))  # fmt: skip
    logits = model(source_prompt)
    assert logits is not None
    next_tok = model.tokenizer.decode([int(logits[0, -1].argmax())])
    return PatchscopeSweep(rows, next_tok)


def preset_sweep(model: Model, preset: str, source_prompt: str, **kwargs: Any) -> PatchscopeSweep:
    """A layer sweep with a preset target prompt ("identity", "description", "next_token")."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if preset == "next_token":
        kwargs.setdefault("max_new_tokens", 1)
    return patchscope_sweep(model, source_prompt, target_prompt=PRESETS[preset], **kwargs)
