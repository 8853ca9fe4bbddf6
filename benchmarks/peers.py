"""The same work done with nnsight and TransformerLens, for side-by-side timing.

Each builder returns callables or None with the reason it is unavailable. nnsight compiles the
body of a ``with model.trace(...)`` block from its source file, so these functions must live in a
file (they do) rather than in code typed at a prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Work = Callable[[], object]


def nnsight_model(model: Any) -> tuple[Any, str | None]:
    """nnsight.LanguageModel around the same HF module (nnsight wraps, it does not copy)."""
    try:
        import nnsight
    except ImportError as exc:  # pragma: no cover - dev extra
        return None, f"nnsight not importable: {exc}"
    return nnsight.LanguageModel(model.hf, tokenizer=model.tokenizer), None


def nnsight_capture_all(lm: Any, ids: Tensor, n_layers: int) -> Work:
    def run() -> list[Tensor]:
        outs: list[Any] = []
        with torch.no_grad(), lm.trace(ids, use_cache=False):
            for i in range(n_layers):
                outs.append(lm.model.layers[i].output.save())
        return outs

    return run


def nnsight_capture_stop(lm: Any, ids: Tensor, last_layer: int) -> Work:
    def run() -> list[Tensor]:
        outs: list[Any] = []
        with torch.no_grad(), lm.trace(ids, use_cache=False) as tracer:
            for i in range(last_layer + 1):
                outs.append(lm.model.layers[i].output.save())
            tracer.stop()
        return outs

    return run


def nnsight_steer_generate(lm: Any, batch: Any, layer: int, vector: Tensor, new_tokens: int, pad_id: int) -> Work:
    """Add ``vector`` to layer ``layer``'s output at generated tokens only (decode steps 1..n-1).

    Step 0 is the prompt pass, whose positions are the prompt's; each later step is one new token,
    which is what ``positions="generated"`` edits in lmscope.
    """

    def run() -> Tensor:
        with torch.no_grad(), lm.generate(
            batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=new_tokens, do_sample=False,
            pad_token_id=pad_id, temperature=None, top_p=None, top_k=None,
        ) as tracer:  # fmt: skip
            for _ in tracer.iter[1:new_tokens]:
                lm.model.layers[layer].output[:] += vector
            ids = tracer.result.save()
        return ids

    return run


def transformer_lens_bridge(load_copy: Callable[[], Any]) -> tuple[Any, str | None]:
    """A TransformerLens TransformerBridge over a separate copy of the model (the bridge rewires modules in place)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as exc:
        return None, f"transformer_lens not installed ({exc}); `pip install --dry-run transformer_lens` shows what it would add"
    model = load_copy()
    from lmscope.core.loading import DEFAULT_MODEL, _dequantized_copy, bundled_gguf

    path = str(_dequantized_copy(bundled_gguf(DEFAULT_MODEL)))
    try:
        bridge = TransformerBridge.boot_transformers(path, tokenizer=model.tokenizer, hf_model=model.hf)
    except Exception as exc:  # noqa: BLE001 - report any loading failure as a skip reason
        return None, f"TransformerBridge could not load the bundled model offline: {type(exc).__name__}: {exc}"
    return bridge, None


def tl_capture(bridge: Any, ids: Tensor, stop_at_layer: int | None = None) -> Work:
    def names(n: str) -> bool:
        return n.endswith("hook_resid_post")

    def run() -> object:
        with torch.no_grad():
            return bridge.run_with_cache(ids, names_filter=names, stop_at_layer=stop_at_layer)

    return run


def tl_steer_generate(bridge: Any, batch: Any, layer: int, vector: Tensor, new_tokens: int, use_cache: bool) -> Work:
    """TransformerLens hook adding ``vector`` at generated positions (those at or after the prompt's length).

    TransformerBridge 3.9's KV-cache generation gives wrong tokens for this model even without
    hooks (it repeats one token), so run.py measures it without the cache and says so.
    """
    prompt_len = batch.input_ids.shape[1]

    def hook(act: Tensor, hook: Any) -> Tensor:
        seq = act.shape[1]
        if seq == 1:  # a cached decode step: one new token
            return act + vector
        out = act.clone()
        out[:, prompt_len:] += vector  # without the cache every step reruns the whole sequence
        return out

    def run() -> object:
        with torch.no_grad(), bridge.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", hook)]):
            return bridge.generate(batch.input_ids, max_new_tokens=new_tokens, do_sample=False, stop_at_eos=False,
                                   use_past_kv_cache=use_cache, verbose=False, return_type="tokens")  # fmt: skip

    return run


def nnsight_resid_patch_loop(lm: Any, corrupt: Any, src: dict[int, Tensor], cells: list[tuple[int, int]], metric: Any) -> Work:
    """One nnsight trace per (layer, position) patch of resid_post: the clean value written into the corrupted run."""
    inputs = corrupt.model_inputs()

    def run() -> Tensor:
        vals = []
        for layer, pos in cells:
            with torch.no_grad(), lm.trace(inputs, use_cache=False):
                lm.model.layers[layer].output[:, pos] = src[layer][:, pos]
                out = lm.lm_head.output.save()
            vals.append(float(metric(getattr(out, "value", out)).mean()))
        return torch.tensor(vals)

    return run
