"""The explorer's live panels: what each request computes on the loaded model.

Every method here runs in the job queue's one worker thread (:mod:`lmscope.serve.jobs`) and
returns plain JSON. Each calls the library's own API (``logit_lens``, ``TunedLens.lens``,
``capture``, ``steer``, ``preset_sweep``, the SAE's ``encode``), so a panel shows exactly what
the Python API returns for the same input; the browser tests check that. Files (vectors,
lenses, SAEs) are named relative to the results folder and read as safetensors/JSON only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from lmscope.experiments.views import attention_view
from lmscope.serve.files import Root

Emit = Callable[[dict[str, Any]], None]


class Deltas:
    """An HF streamer that hands each new piece of decoded text to ``emit`` (the prompt is skipped)."""

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]) -> None:
        self.tokenizer, self.emit = tokenizer, emit
        self.ids: list[int] = []
        self.text = ""
        self._prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self._prompt:  # generate() first puts the prompt
            self._prompt = False
            return
        self.ids += value.flatten().tolist()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd") and text.startswith(self.text) and len(text) > len(self.text):
            self.emit(text[len(self.text) :])
            self.text = text

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.text) and len(text) > len(self.text):
            self.emit(text[len(self.text) :])
        self.text = text


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Eager attention for the block (the attention pattern exists only there), then back."""
    before = model.attn_implementation
    if before == "eager":
        yield
        return
    model.hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.hf.set_attn_implementation(before)


class Live:
    """The loaded model and the files under the results folder, answering the explorer's panels."""

    def __init__(self, model: Any, root: Root, *, max_tokens: int = 96, max_new_tokens: int = 64,
                 sae_windows: int = 16) -> None:  # fmt: skip
        self.model, self.root = model, root
        self.max_tokens, self.max_new_tokens, self.sae_windows = max_tokens, max_new_tokens, sae_windows
        self._saes: dict[str, Any] = {}
        self._stats: dict[str, Any] = {}
        self._unsteered: dict[tuple[Any, ...], str] = {}

    # ---- checks --------------------------------------------------------------------------------
    def _prompt(self, prompt: Any, *, limit: int | None = None) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("type a prompt")
        n = len(self.model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        limit = limit or self.max_tokens
        if n > limit:
            raise ValueError(f"the prompt is {n} tokens; the explorer takes at most {limit}")
        return prompt

    def _layer(self, layer: Any) -> int:
        n = self.model.shape.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise ValueError(f"layer must be an integer in 0..{n - 1}, got {layer!r}")
        return layer

    def info(self) -> dict[str, Any]:
        s = self.model.shape
        return {"model": self.model.model_id, "n_layers": s.n_layers, "n_heads": s.n_heads, "d_model": s.d_model,
                "device": str(self.model.device), "max_tokens": self.max_tokens,
                "max_new_tokens": self.max_new_tokens}  # fmt: skip

    # ---- lenses --------------------------------------------------------------------------------
    def lens(self, prompt: Any, target: Any = None, tuned: Any = None, k: int = 5) -> dict[str, Any]:
        """The logit lens (or a tuned lens file) on one prompt: every layer x every position."""
        from lmscope.lenses import TunedLens, logit_lens

        prompt = self._prompt(prompt)
        target = target or None
        if target is not None and not isinstance(target, str):
            raise ValueError("target must be a token string such as ' Paris'")
        if tuned:
            lens = TunedLens.load(self.root.resolve(str(tuned)), self.model)
            res = lens.lens(self.model, prompt, target, k=k)
        else:
            res = logit_lens(self.model, prompt, target, k=k)
        return res.view()

    # ---- attention -----------------------------------------------------------------------------
    def attention(self, prompt: Any, layer: Any) -> dict[str, Any]:
        """Every head's attention pattern at one layer, (heads, query, key)."""
        from lmscope.core.hooks import capture
        from lmscope.core.sites import Site

        prompt = self._prompt(prompt, limit=min(self.max_tokens, 64))
        site = Site("attn_pattern", self._layer(layer))
        batch = self.model.tokenize(prompt)
        with eager_attention(self.model), capture(self.model, [site], stop_early=True, device="cpu") as acts:
            self.model(batch)
        return attention_view(self._tokens(batch), site.layer, acts[site][0].float())  # type: ignore[arg-type]

    def _tokens(self, batch: Any) -> list[str]:
        return [self.model.tokenizer.decode([i]) for i in batch.input_ids[0].tolist()]

    # ---- steering ------------------------------------------------------------------------------
    def vector(self, path: Any) -> Any:
        from lmscope.steering import SteeringVector

        if not isinstance(path, str) or not path:
            raise ValueError("choose a steering vector file")
        vec = SteeringVector.load(self.root.resolve(path))
        if vec.d_model != self.model.shape.d_model:
            raise ValueError(f"{path} is {vec.d_model} wide; the model's d_model is {self.model.shape.d_model}")
        return vec

    def steer_args(self, body: dict[str, Any]) -> dict[str, Any]:
        """The steering request, checked (cheap: no model call), as :meth:`steer_pair` takes it."""
        prompt = self._prompt(body.get("prompt"))
        vec = self.vector(body.get("vector"))
        layer = self._layer(body.get("layer"))
        if layer not in vec.layers:
            raise ValueError(f"the vector has no direction at layer {layer}; it has layers {vec.layers}")
        scale = body.get("scale")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not -1e4 < float(scale) < 1e4:
            raise ValueError(f"scale must be a number, got {scale!r}")
        n = body.get("max_new_tokens", 24)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be an integer in 1..{self.max_new_tokens}")
        return {"prompt": prompt, "vector": vec, "layer": layer, "scale": float(scale), "max_new_tokens": n,
                "chat": bool(body.get("chat", True))}  # fmt: skip

    def steer_pair(self, args: dict[str, Any], emit: Emit, cancel: threading.Event) -> dict[str, Any]:
        """Unsteered, then steered generation (``args`` from :meth:`steer_args`), each streamed to ``emit``."""
        from lmscope.steering import steer

        prompt, vec, layer, scale, n, chat = (args[k] for k in ("prompt", "vector", "layer", "scale", "max_new_tokens", "chat"))
        out = {}
        key = (prompt, n, chat)
        for which in ("unsteered", "steered"):
            if which == "unsteered" and key in self._unsteered:  # moving the scale regenerates only the steered side
                emit({"which": which, "text": self._unsteered[key], "cached": True})
                out[which] = self._unsteered[key]
                continue
            stream = Deltas(self.model.tokenizer, lambda t, w=which: emit({"which": w, "text": t}))
            with steer(self.model, vec, layers=[layer], scale=float(scale)) if which == "steered" else nullcontext():
                ids = self.model.generate_tokens(prompt, max_new_tokens=n, chat=chat, streamer=stream, stop=cancel.is_set)
            text = self.model.tokenizer.decode(ids[0], skip_special_tokens=True)
            out[which] = text
            if which == "unsteered" and not cancel.is_set():
                self._unsteered[key] = text
        norm = float(vec[layer].norm())
        return {"layer": layer, "scale": float(scale), "vector_norm": norm, "added_norm": abs(float(scale)) * norm, **out}

    # ---- Patchscopes ---------------------------------------------------------------------------
    def patchscope(self, prompt: Any, preset: Any = "identity", layers: Any = None, max_new_tokens: int = 8) -> dict[str, Any]:
        """Each source layer's last-token state read out by a preset target prompt."""
        from lmscope.lenses import PRESETS, preset_sweep

        prompt = self._prompt(prompt)
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}")
        if layers is None:
            layers = list(range(self.model.shape.n_layers))
        if not isinstance(layers, list) or not layers:
            raise ValueError("layers must be a non-empty list of layer numbers")
        layers = [self._layer(v) for v in layers]
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 32:
            raise ValueError("max_new_tokens must be an integer in 1..32")
        sweep = preset_sweep(self.model, preset, prompt, source_layers=layers, max_new_tokens=max_new_tokens)
        return {"view": "patchscope", "preset": preset, "target_prompt": PRESETS[preset], **sweep.to_dict()}

    # ---- activation patching ---------------------------------------------------------------------
    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        """Residual-stream patching (clean into corrupt) of every chosen layer x position: 1 = clean restored."""
        from lmscope.circuits.patching import resid_by_layer_pos
        from lmscope.circuits.tasks import TaskPairs

        clean, corrupt = self._prompt(body.get("clean")), self._prompt(body.get("corrupt"))
        answer, wrong = body.get("answer"), body.get("wrong")
        if not isinstance(answer, str) or not isinstance(wrong, str):
            raise ValueError("give the answer and the wrong token, each one token (e.g. ' Mary' and ' John')")
        n_clean, n_corrupt = (len(self.model.tokenize(p).input_ids[0]) for p in (clean, corrupt))
        if n_clean != n_corrupt:
            raise ValueError(f"the clean prompt is {n_clean} tokens and the corrupt one {n_corrupt}: patching needs "
                             "the same length, position by position")  # fmt: skip
        stride = body.get("stride", 1)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError("stride must be a positive integer")
        task = TaskPairs("typed", [clean], [corrupt], [[self.model.token_id(answer)]], [[self.model.token_id(wrong)]])
        layers = list(range(0, self.model.shape.n_layers, stride))
        grid = resid_by_layer_pos(self.model, task, layers=layers)
        r = grid.result
        return {"view": "patch", "values": grid.values.tolist(), "rows": [f"L{v}" for v in grid.rows], "cols": grid.cols,
                "clean_metric": r.clean, "corrupt_metric": r.corrupt, "seconds": r.seconds}  # fmt: skip

    # ---- SAE features --------------------------------------------------------------------------
    def sae(self, path: Any) -> Any:
        from lmscope.saes.interop import load_saelens
        from lmscope.saes.metrics import check_site

        if not isinstance(path, str) or not path:
            raise ValueError("choose an SAE folder")
        if path not in self._saes:
            sae = load_saelens(self.root.resolve(path), device=self.model.device)
            check_site(self.model, sae)
            self._saes[path] = sae.eval()
        return self._saes[path]

    def sae_fires(self, path: Any, text: Any, top: int = 5) -> dict[str, Any]:
        """Per token of ``text``: the latents that fire most and their activations."""
        from lmscope.core.hooks import capture
        from lmscope.core.sites import as_site

        sae = self.sae(path)
        text = self._prompt(text)
        site = as_site(sae.cfg.hook_name)
        batch = self.model.tokenize(text)
        with torch.no_grad(), capture(self.model, [site], stop_early=True) as acts:
            self.model(batch)
            z = sae.encode(acts[site][0].float().to(sae.device)).cpu()
        v, i = z.topk(min(top, z.shape[1]), dim=-1)
        rows = [[{"latent": int(a), "act": float(b)} for a, b in zip(ii, vv, strict=True) if b > 0]
                for ii, vv in zip(i.tolist(), v.tolist(), strict=True)]  # fmt: skip
        return {"view": "sae_fires", "hook": sae.cfg.hook_name, "tokens": self._tokens(batch), "fires": rows,
                "l0": (z > 0).sum(-1).tolist()}  # fmt: skip

    def _latent_stats(self, path: str) -> Any:
        """Latent statistics on held-out windows of the default corpus (computed once per SAE)."""
        from lmscope.data.corpus import token_chunks
        from lmscope.saes.features import harvest_acts, latent_stats

        if path not in self._stats:
            sae = self.sae(path)
            chunks = torch.stack(list(token_chunks(self.model.tokenizer, 64, self.sae_windows, split="heldout")))
            acts, ids = harvest_acts(self.model, sae.cfg.hook_name, chunks)
            self._stats[path] = latent_stats(sae, acts, ids, top_k=12, keep_codes=True)
        return self._stats[path]

    @torch.no_grad()
    def sae_latent(self, path: Any, latent: Any, bins: int = 20) -> dict[str, Any]:
        """One latent's page: top contexts, activation histogram, logit effects, nearest latents."""
        from lmscope.saes.features import logit_effects, top_contexts

        sae = self.sae(path)
        d = sae.cfg.d_sae
        if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < d:
            raise ValueError(f"latent must be an integer in 0..{d - 1}")
        stats = self._latent_stats(str(path))
        z = stats.codes[:, latent]
        pos = z[z > 0]
        if pos.numel():
            hi = float(pos.max())
            counts = torch.histc(pos, bins=bins, min=0.0, max=hi).tolist()
            edges = torch.linspace(0.0, hi, bins + 1).tolist()
        else:
            counts, edges = [], []
        w = torch.nn.functional.normalize(sae.W_dec.float(), dim=-1)
        cos = (w @ w[latent]).cpu()
        cos[latent] = -2.0
        near = cos.topk(min(8, d - 1))
        effects = logit_effects(self.model, sae, [latent])[latent]
        ctx = top_contexts(sae, stats, latent, tokenizer=self.model.tokenizer, n=8)
        return {"view": "sae_latent", "latent": latent, "hook": sae.cfg.hook_name, "d_sae": d,
                "tokens_seen": int(stats.acts.shape[0]), "density": float(stats.density[latent]),
                "max": float(stats.max_act[latent]),
                "histogram": {"edges": edges, "counts": counts, "zeros": int((z <= 0).sum())},
                "promoted": effects["promoted"], "suppressed": effects["suppressed"],
                "neighbours": [{"latent": int(i), "cosine": float(c)} for c, i in zip(near.values, near.indices, strict=True)],
                "contexts": [{"tokens": c.tokens, "values": c.values, "peak": c.peak, "value": c.value}
                             for c in ctx]}  # fmt: skip
