"""Forward passes that start part-way, from one stored pass.

A patched pass agrees with the unpatched one below the patched layer and, causally, at every
position before the patched position. :class:`Prefix` runs the unpatched batch once, keeping each
layer's input and the KV cache; :meth:`Prefix.forward` then runs ``copies`` stacked copies from
``layer`` and ``position`` on: the decoder layers below ``layer`` are replaced for the call by
stand-ins that replay the stored input of ``layer``, and the positions before ``position`` come
from the stored KV cache. Edits and captures inside ``intervene``/``capture`` blocks apply as
usual at ``layer`` and above, with absolute positions; sites below ``layer`` are not run.

    prefix = Prefix(model, corrupt)
    with ls.intervene(model, plan):                 # plan edits sites at layer 12 or above
        logits = prefix.forward(copies=16, layer=12, position=5, logits_to_keep=1)

Stand-ins act only in the thread that installed them: another thread calling the model meanwhile
runs the real layers.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lmscope.core.hooks import _interrupts_deferred, capture
from lmscope.core.sites import Site

if TYPE_CHECKING:
    from lmscope.core.inputs import Batch
    from lmscope.core.model import Model


class _Replay(nn.Module):
    """Stands in for a decoder layer below the start: passes its input on, or (the last one) replays."""

    def __init__(self, real: nn.Module, value: Tensor | None, thread: int) -> None:
        super().__init__()
        self.real, self.value, self.thread = [real], value, thread  # a list: not a registered submodule

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != self.thread:
            return self.real[0](hidden_states, *args, **kwargs)
        return hidden_states if self.value is None else self.value


def start_layer(site: Site, n_layers: int) -> int:
    """The first decoder layer a forward must run for an edit at ``site`` to take effect."""
    return min(max(site.depth(n_layers)[0], 0), n_layers - 1)


def _cut(layer: Any, rows: Tensor, position: int) -> Any:
    """A copy of one cache layer holding the first ``position`` tokens of the given batch rows."""
    c = copy.copy(layer)
    c.keys, c.values = layer.keys[rows, :, :position], layer.values[rows, :, :position]
    return c


class Prefix:
    """One unpatched pass of ``batch``: the inputs (``resid_pre``) of ``layers`` (default all) and,
    with ``positions``, the KV cache. Keep only what later passes start from: it is memory."""

    def __init__(self, model: Model, batch: Batch, *, layers: Sequence[int] | None = None, positions: bool = True) -> None:
        self.model, self.batch = model, batch
        L = model.shape.n_layers
        kept = sorted(set(range(L) if layers is None else layers) - {0})
        sites = [Site("resid_pre", layer) for layer in kept]
        params = inspect.signature(model.hf.forward).parameters
        watch: Any = capture(model, sites) if sites else nullcontext({})
        with torch.no_grad(), watch as acts:
            out = model.hf(**batch.model_inputs(), use_cache=positions)
        self.inputs: dict[int, Tensor] = {layer: acts[s] for layer, s in zip(kept, sites, strict=True)}
        self.cache = (out["cache"] if "cache" in out else out.past_key_values) if positions else None
        self.logits: Tensor | None = out.logits
        """The pass's logits (a user may drop them to save memory)."""
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keeps_logits = "logits_to_keep" in params
        # only plain per-token key/value caches can be cut at a position (sliding windows and
        # recurrent states cannot): other caches start every pass at position 0
        self.reuses_positions = self.cache is not None and all(type(c).__name__ == "DynamicLayer" for c in self.cache.layers)

    def forward(
        self, *, copies: int, layer: int = 0, position: int = 0, logits_to_keep: int = 0,
        start: Tensor | None = None, grad: bool = False,
    ) -> Tensor:  # fmt: skip
        """Logits of ``copies`` stacked copies (row c*n + i is example i), run from ``layer`` and ``position``.

        Returns (copies * n, seq - position, vocab) logits, or the last ``logits_to_keep`` positions.
        ``start`` replaces the stored input of ``layer`` (shape (copies * n, seq - position, d_model));
        with ``grad`` the pass builds an autograd graph (from ``start``, say).
        """
        n, seq = self.batch.shape
        L = self.model.shape.n_layers
        if not 0 <= layer < L:
            raise IndexError(f"start layer {layer} out of range for {L} layers")
        if not 0 <= position < seq:
            raise IndexError(f"start position {position} out of range for {seq} tokens")
        if logits_to_keep and logits_to_keep > seq - position:
            raise ValueError(f"logits_to_keep={logits_to_keep} exceeds the {seq - position} positions run")
        if layer > 0 and layer not in self.inputs:
            raise ValueError(f"this prefix did not keep the input of layer {layer} (kept {sorted(self.inputs)})")
        rows = torch.arange(copies * n, device=self.batch.input_ids.device) % n
        kw: dict[str, Any] = {
            "input_ids": self.batch.input_ids[rows, position:],
            "attention_mask": self.batch.attention_mask[rows],
            "position_ids": self.batch.position_ids[rows, position:],
            "use_cache": position > 0,
        }
        if position > 0:
            if not self.reuses_positions or self.cache is None:
                raise NotImplementedError("this prefix keeps no per-token KV cache (positions=False, or a sliding-window "
                                          "or recurrent cache): start at position 0")
            cache = copy.copy(self.cache)
            cache.layers = [_cut(c, rows, position) for c in self.cache.layers]
            kw[self._cache_arg] = cache
        if logits_to_keep and self._keeps_logits:
            kw["logits_to_keep"] = logits_to_keep
        if start is None:
            start = self.inputs[layer][rows, position:] if layer > 0 else None
        elif layer == 0 or start.shape != (copies * n, seq - position, self.model.shape.d_model):
            raise ValueError(f"start must be ({copies * n}, {seq - position}, d_model) at a layer above 0, "
                             f"got {tuple(start.shape)} at layer {layer}")  # fmt: skip
        with torch.set_grad_enabled(grad), self._replaced(layer, start):
            logits = self.model.hf(**kw).logits
        return logits[:, -logits_to_keep:] if logits_to_keep else logits

    @contextmanager
    def _replaced(self, layer: int, start: Tensor | None) -> Iterator[None]:
        layers, me = self.model.layers, threading.get_ident()
        real = [layers[j] for j in range(layer)]
        try:
            with _interrupts_deferred():
                for j in range(layer):
                    layers[j] = _Replay(real[j], start if j == layer - 1 else None, me)
            yield
        finally:
            with _interrupts_deferred():
                for j in range(layer):
                    layers[j] = real[j]
