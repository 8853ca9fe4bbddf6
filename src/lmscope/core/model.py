"""Model: a Hugging Face causal LM, its tokenizer and its site table, with no forward rewritten."""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from lmscope.core.architectures import Architecture, architecture_for, get_module
from lmscope.core.hooks import StopForward
from lmscope.core.inputs import Batch, PaddingSide, position_ids_from_mask, tokenize
from lmscope.core.sites import ALL_KINDS, HEAD_KINDS, Site, SiteLike, as_site


def _check_batch(batch: Batch, vocab: int) -> None:
    ids, mask = batch.input_ids, batch.attention_mask
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(f"a Batch needs (batch, seq) ids with at least one token, got shape {tuple(ids.shape)}")
    if mask.shape != ids.shape or batch.position_ids.shape != ids.shape:
        raise ValueError(f"Batch parts disagree: input_ids {tuple(ids.shape)}, attention_mask {tuple(mask.shape)}, "
                         f"position_ids {tuple(batch.position_ids.shape)}")  # fmt: skip
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"token ids must be integers, got {ids.dtype}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("a row of the batch has no real token (its attention mask is all zeros)")


@dataclass(frozen=True)
class ModelShape:
    """Sizes read from the HF config."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab: int
    max_positions: int | None


def _cfg(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def shape_of(config: Any) -> ModelShape:
    text = getattr(config, "text_config", None) or config
    d_model = _cfg(text, "hidden_size", "n_embd")
    n_heads = _cfg(text, "num_attention_heads", "n_head")
    d_mlp = _cfg(text, "intermediate_size", "n_inner", default=4 * d_model)
    return ModelShape(
        n_layers=_cfg(text, "num_hidden_layers", "n_layer"),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=_cfg(text, "num_key_value_heads", default=n_heads),
        d_head=_cfg(text, "head_dim", default=d_model // n_heads),
        d_mlp=d_mlp,
        vocab=_cfg(text, "vocab_size"),
        max_positions=_cfg(text, "max_position_embeddings", "n_positions"),
    )


class Model:
    """An HF causal LM with its tokenizer and the table that locates its activation sites.

    Call it on prompts to get logits; use :func:`lmscope.capture` and :func:`lmscope.intervene`
    to read and change what happens inside. ``model.hf`` is the untouched HF module.
    """

    def __init__(self, hf: Any, tokenizer: Any, *, model_id: str, architecture: Architecture | None = None):
        self.hf: Any = hf.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.arch = architecture or architecture_for(hf)
        self.shape = shape_of(hf.config)
        self.layers: nn.ModuleList = get_module(hf, self.arch.layers)  # type: ignore[assignment]
        self.base = get_module(hf, self.arch.layers.rsplit(".", 1)[0]) if "." in self.arch.layers else hf
        self._names = {id(m): n for n, m in hf.named_modules()}
        self._contexts: weakref.WeakSet[Any] = weakref.WeakSet()  # open lmscope hook contexts (any thread)
        self._edit_hook_ids: set[int] = set()
        self._local = threading.local()  # per-thread state: contexts are thread-local (see hooks.py)
        self.load_spec: dict[str, Any] | None = None
        """How :func:`lmscope.load` / :func:`lmscope.load_tiny` built this model (JSON-able), so another process can
        rebuild it (:func:`lmscope.core.loading.reload`); None for a Model wrapped by hand."""
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def __repr__(self) -> str:
        s = self.shape
        return (
            f"Model({self.model_id!r}, {self.arch.name}, layers={s.n_layers}, d_model={s.d_model}, "
            f"heads={s.n_heads}/{s.n_kv_heads}, d_mlp={s.d_mlp}, {self.dtype}, {self.device})"
        )

    # ---- facts -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (its execution device when accelerate dispatched the model)."""
        try:
            emb = self.hf.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return next(self.hf.parameters()).device
        hook = getattr(emb, "_hf_hook", None)
        execution = getattr(hook, "execution_device", None)
        if execution is not None:
            return torch.device(execution)
        return next(emb.parameters()).device

    @property
    def offloaded(self) -> bool:
        """True when some weights live off the module (accelerate's CPU or disk offload: meta tensors in place)."""
        return any(t.device.type == "meta" for t in (*self.hf.parameters(), *self.hf.buffers()))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def attn_implementation(self) -> str:
        return str(getattr(self.hf.config, "_attn_implementation", "eager"))

    @property
    def is_parallel(self) -> bool:
        attr = self.arch.parallel_attr
        return bool(attr and getattr(self.hf.config, attr, False))

    @cached_property
    def weight_hash(self) -> str:
        """sha256 over parameter names, shapes and bytes (provenance for saved artifacts)."""
        h = hashlib.sha256()
        for name, p in sorted(self._state().items()):
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _state(self) -> dict[str, Tensor]:
        """``hf.state_dict()`` with offloaded (meta) tensors read back from accelerate's offload store, on the CPU."""
        state = self.hf.state_dict()
        if not self.offloaded:
            return state
        from accelerate.utils import align_module_device

        for prefix, module in self.hf.named_modules():
            own = [k for k, v in [*module._parameters.items(), *module._buffers.items()]
                   if v is not None and v.device.type == "meta" and (f"{prefix}.{k}" if prefix else k) in state]  # fmt: skip
            if own:
                with align_module_device(module, torch.device("cpu")):
                    for k in own:
                        state[f"{prefix}.{k}" if prefix else k] = getattr(module, k).detach().clone()
        return state

    def module_name(self, module: nn.Module) -> str:
        return self._names.get(id(module), type(module).__name__)

    def site_width(self, site: SiteLike) -> int:
        """Width of the last axis of a site's tensor."""
        site = as_site(site)
        s = self.shape
        if site.kind == "mlp_post":
            return s.d_mlp
        if site.kind in ("attn_z", "q", "k", "v"):
            return s.d_head
        if site.kind == "attn_pattern":
            return -1
        if site.kind == "logits":
            return s.vocab
        return s.d_model

    def sites(self, kinds: Sequence[str] | None = None) -> list[Site]:
        """Every site this model exposes (optionally only some kinds), in forward order.

        Without ``kinds``, kinds the family lacks (resid_mid of parallel blocks, unmapped sites of a
        discovered family) are left out; asked for by name, they are listed and fail when used.
        """
        if kinds is None:
            from lmscope.core.access import resolve

            def mapped(kind: str) -> bool:
                try:
                    resolve(self, Site(kind) if kind in ("embed", "final_norm", "logits") else Site(kind, 0))
                except NotImplementedError:
                    return False
                return True

            kinds = [k for k in ALL_KINDS if mapped(k)]
        kinds = list(kinds)
        out: list[Site] = []
        for kind in kinds:
            if kind in ("embed", "final_norm", "logits"):
                out.append(Site(kind))
            else:
                out.extend(Site(kind, layer) for layer in range(self.shape.n_layers))
        return sorted(out, key=lambda s: s.depth(self.shape.n_layers))

    def site_shape(self, site: SiteLike) -> tuple[str, ...]:
        """Named axes of a site's tensor, with sizes."""
        site = as_site(site)
        s = self.shape
        if site.kind == "attn_pattern":
            return ("batch", "seq", "seq") if site.head is not None else ("batch", f"head={s.n_heads}", "seq", "seq")
        if site.kind in HEAD_KINDS:
            n = s.n_kv_heads if site.kind in ("k", "v") else s.n_heads
            tail = (f"d_head={s.d_head}",) if site.head is not None else (f"head={n}", f"d_head={s.d_head}")
            return ("batch", "seq", *tail)
        name = {"mlp_post": "d_mlp", "logits": "vocab"}.get(site.kind, "d_model")
        return ("batch", "seq", f"{name}={self.site_width(site)}")

    # ---- inputs ------------------------------------------------------------------------------
    def tokenize(
        self,
        prompts: str | Sequence[str],
        *,
        chat: bool = False,
        system: str | None = None,
        padding_side: PaddingSide = "left",
    ) -> Batch:
        """Tokenize to a padded Batch on the model's device (left padding by default)."""
        batch = tokenize(
            self.tokenizer, prompts, chat=chat, system=system, padding_side=padding_side,
            max_length=self.shape.max_positions,
        )  # fmt: skip
        return batch.to(self.device)

    def to_str_tokens(self, text: str | Tensor) -> list[str]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if isinstance(text, str) else text.tolist()
        return [self.tokenizer.decode([i]) for i in ids]

    def token_id(self, token: str) -> int:
        """Id of a string that must be exactly one token (e.g. " Paris")."""
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{token!r} is {len(ids)} tokens {self.to_str_tokens(token)}, not one")
        return int(ids[0])

    def _as_batch(self, inputs: str | Sequence[str] | Batch | Tensor, chat: bool,
                  attention_mask: Tensor | None = None) -> Batch:  # fmt: skip
        if inputs is None:
            raise TypeError("the model needs inputs: a prompt, a list of prompts, a Batch or a (batch, seq) tensor of ids")
        if isinstance(inputs, Batch):
            if attention_mask is not None:
                raise ValueError("pass the attention mask inside the Batch, not also as attention_mask=")
            batch = inputs
        elif isinstance(inputs, Tensor):
            ids = self._check_ids(inputs)
            if attention_mask is None:
                self._refuse_unmasked_padding(ids)
                mask = torch.ones_like(ids)
            else:
                mask = torch.as_tensor(attention_mask)
                if mask.shape != ids.shape:
                    raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but the ids have {tuple(ids.shape)}")
            batch = Batch(ids, mask.to(torch.long), position_ids_from_mask(mask))
        elif isinstance(inputs, str) or (isinstance(inputs, Sequence) and not isinstance(inputs, bytes)):
            if attention_mask is not None:
                raise ValueError("attention_mask= goes with token ids; prompts are tokenized with their own mask")
            return self.tokenize(inputs, chat=chat)
        else:
            raise TypeError(f"inputs must be a prompt, a list of prompts, a Batch or a tensor of ids, "
                            f"not {type(inputs).__name__}")
        _check_batch(batch, self.shape.vocab)
        window = self.shape.max_positions
        if window is not None and batch.shape[1] > window:
            raise ValueError(f"the input has {batch.shape[1]} positions, longer than the model's context window of {window}")
        return batch.to(self.device)

    def _check_ids(self, ids: Tensor) -> Tensor:
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"token ids must be integers, got a {ids.dtype} tensor (tokenize text with model.tokenize)")
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (seq,) or (batch, seq), got shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError(f"token ids are empty (shape {tuple(ids.shape)}); the model needs at least one token")
        return ids.long()

    def _refuse_unmasked_padding(self, ids: Tensor) -> None:
        """Rows of different real lengths in one tensor need their mask; without it pads would count as tokens."""
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else None
        if pad is None or ids.shape[0] < 2:
            return
        edge = (ids[:, 0] == pad) | (ids[:, -1] == pad)
        if bool(edge.any()) and not bool(edge.all()):
            row = int(edge.nonzero()[0])
            raise ValueError(
                f"row {row} of the token ids starts or ends with the pad id {pad} while other rows do not: a padded "
                "batch needs its attention mask (pass attention_mask=..., a Batch, or prompts); without it the pads "
                "are read as tokens"
            )

    # ---- running -----------------------------------------------------------------------------
    def __call__(
        self, inputs: str | Sequence[str] | Batch | Tensor, *, chat: bool = False, grad: bool = False, **hf_kwargs: Any
    ) -> Tensor | None:
        """Logits (batch, seq, vocab) for prompts, a Batch, or token ids.

        Runs without autograd unless ``grad=True``. Returns None only when a
        ``capture(..., stop_early=True)`` ended the pass early.
        """
        batch = self._as_batch(inputs, chat, hf_kwargs.pop("attention_mask", None))
        with torch.set_grad_enabled(grad):
            try:
                out = self.hf(**batch.model_inputs(), use_cache=False, **hf_kwargs)
            except StopForward:
                return None
        return out.logits

    def unembed(self, resid: Tensor, *, normalize: bool = True) -> Tensor:
        """Logits from residual-stream vectors: final norm (with their own statistics) then lm_head."""
        if normalize:
            if self.arch.final_norm is None:
                raise NotImplementedError(f"{self.arch.name}: final norm is not mapped")
            resid = get_module(self.hf, self.arch.final_norm)(resid)
        logits = get_module(self.hf, self.arch.lm_head)(resid)
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        if cap:  # Gemma 2 squashes its logits; the lens must do what the model does
            logits = torch.tanh(logits / cap) * cap
        return logits

    @property
    def _prompt_len(self) -> int | None:
        """The padded prompt length of the ``generate`` call running in this thread, if any."""
        return getattr(self._local, "prompt_len", None)

    @contextmanager
    def _prompt_length(self, n: int) -> Iterator[None]:
        previous, self._local.prompt_len = self._prompt_len, n
        try:
            yield
        finally:
            self._local.prompt_len = previous

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int = 32,
        chat: bool = False,
        system: str | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        use_cache: bool = True,
        seed: int | None = None,
    ) -> str | list[str]:
        """Generate continuations (greedy unless ``do_sample``); a str prompt gives a str back.

        Prompts are left-padded; the padded prompt length defines ``positions="generated"`` for
        any edit active around the call.
        """
        tokens = self.generate_tokens(
            prompts, max_new_tokens=max_new_tokens, chat=chat, system=system, do_sample=do_sample,
            temperature=temperature, use_cache=use_cache, seed=seed,
        )  # fmt: skip
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return texts[0] if isinstance(prompts, str) else texts

    def generate_tokens(
        self,
        prompts: str | Sequence[str] | Batch,
        *,
        max_new_tokens: int = 32,
        chat: bool = False,
        system: str | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        use_cache: bool = True,
        seed: int | None = None,
        streamer: Any = None,
        stop: Callable[[], bool] | None = None,
    ) -> Tensor:
        """New token ids (batch, new) after the prompts.

        ``streamer``: an HF streamer (``put(ids)``/``end()``) that sees each new token as it is made;
        ``stop``: called after each token, generation ends early when it returns True.
        """
        if isinstance(prompts, Batch):
            batch = prompts.to(self.device)
            if bool((batch.attention_mask[:, -1] == 0).any()):
                raise ValueError("generation needs a left-padded batch; tokenize with padding_side='left'")
        else:
            batch = self.tokenize(prompts, chat=chat, system=system, padding_side="left")
        window = self.shape.max_positions
        if window is not None and batch.shape[1] + max_new_tokens > window:
            raise ValueError(
                f"the prompt ({batch.shape[1]} tokens, padded) plus max_new_tokens={max_new_tokens} is longer than "
                f"the model's context window of {window}"
            )
        if seed is not None:
            torch.manual_seed(seed)
        kwargs: dict[str, Any] = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "use_cache": use_cache,
                                  "streamer": streamer}
        if stop is not None:
            kwargs["stopping_criteria"] = _stopping(stop)
        if do_sample:
            kwargs["temperature"] = temperature
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self._prompt_length(batch.shape[1]), torch.no_grad():
            out = self.hf.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                pad_token_id=self.tokenizer.pad_token_id, **kwargs,
            )  # fmt: skip
        return out[:, batch.shape[1] :]


def _stopping(stop: Callable[[], bool]) -> Any:
    """HF stopping criteria that end generation (every row) once ``stop()`` returns True."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: Tensor, scores: Tensor, **kw: Any) -> Tensor:
            return torch.full((input_ids.shape[0],), bool(stop()), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])
