"""capture() and intervene(): the two context managers every method is built from.

Both register PyTorch hooks on the HF modules where sites live (see ``access.py``) and remove
exactly the handles they made when the block exits, however it exits (exception, Ctrl-C, a
failure halfway through registration). Hooks that HF or the user registered are never touched.

Ordering: edit hooks run before every other hook on their module and capture hooks are appended,
so a capture (and HF's own ``output_hidden_states`` collection) always sees the edited value,
whichever context was opened first. Edits on one module run in the order they were registered:
an inner ``intervene`` applies its edit after the outer one's (a steer inside a patch is kept).

    >>> import lmscope as ls
    >>> model = ls.load_tiny("llama")
    >>> with ls.capture(model, ["blocks.0.hook_resid_post"]) as acts:
    ...     _ = model("hello world")
    >>> acts["blocks.0.hook_resid_post"].shape[-1] == model.shape.d_model
    True
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lmscope.core.access import Access, resolve
from lmscope.core.cache import ActivationCache
from lmscope.core.edits import Chain, Edit
from lmscope.core.sites import Site, SiteLike, as_model_site

if TYPE_CHECKING:
    from lmscope.core.model import Model


class StopForward(Exception):
    """Raised by a capture with ``stop_early=True`` once its deepest site is recorded."""


@dataclass(frozen=True)
class HookRecord:
    """One hook lmscope has attached: who owns it, at which site, on which module."""

    owner: str
    site: str
    module: str


def active_hooks(model: Model) -> list[HookRecord]:
    """The hooks lmscope currently has attached to ``model`` (empty outside any context).

    Read from the modules' own hook dicts (and the tensor hooks of open contexts), not from a
    side list, so a hook that is still attached is always reported.
    """
    found: list[HookRecord] = []
    for module in model.hf.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            found += [fn.__lmscope__ for fn in hooks.values() if hasattr(fn, "__lmscope__")]
    for handles in list(model._contexts):
        found += handles.live_tensor_hooks()
    return found


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it once the block is done.

    Registering and removing hooks must not stop halfway: a KeyboardInterrupt inside
    ``handle.remove`` would leave a hook attached. Only the main thread receives signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            if callable(previous):
                previous(signal.SIGINT, None)
            else:
                raise KeyboardInterrupt


class _Handles:
    """The hooks one context made, bound to the thread that opened it.

    Hooks act only on forward passes run by that thread (like ``torch.no_grad``, an lmscope
    context is thread-local): a plain forward in another thread, or another thread's own
    context, never sees them. ``close`` removes every handle exactly once, finishing the job
    even when a KeyboardInterrupt lands inside it (the interrupt is raised once all are gone).
    The hooks hold their context weakly and do nothing once it is closed or gone.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.thread = threading.get_ident()
        self.open = True
        self.handles: list[Any] = []
        self.tensor_handles: list[tuple[HookRecord, Any]] = []
        model._contexts.add(self)

    def guard(self, fn: Any, record: HookRecord) -> Any:
        ref = weakref.ref(self)

        def hook(*args: Any) -> Any:
            me = ref()
            if me is None or not me.open or threading.get_ident() != me.thread:
                return None
            return fn(*args)

        hook.__lmscope__ = record  # type: ignore[attr-defined]
        return hook

    def add_tensor_hook(self, tensor: Tensor, fn: Any, record: HookRecord) -> None:
        self.tensor_handles.append((record, tensor.register_hook(fn)))

    def live_tensor_hooks(self) -> list[HookRecord]:
        live = []
        for record, handle in self.tensor_handles:
            hooks = handle.hooks_dict_ref()
            if hooks is not None and handle.id in hooks:
                live.append(record)
        return live

    def close(self) -> None:
        self.open = False
        with _interrupts_deferred():
            pending: BaseException | None = None
            todo = [h for _, h in self.tensor_handles] + self.handles
            while todo:  # retry until done: an interrupt inside remove() must not leave a hook attached
                try:
                    todo[-1].remove()  # idempotent
                    todo.pop()
                except KeyboardInterrupt as exc:
                    pending = exc
            self.handles.clear()
            self.tensor_handles.clear()
            edit_ids = self.model._edit_hook_ids
            for h in self._edit_ids:
                edit_ids.discard(h)
            self.model._contexts.discard(self)
            if pending is not None:
                raise pending

    _edit_ids: tuple[int, ...] = ()


class _PassInfo:
    """Absolute positions of the current forward pass, read from the KV cache length."""

    def __init__(self) -> None:
        self.offset = 0
        self.seq = 0
        self.first_len: int | None = None
        self.max_end = 0  # the furthest absolute position any pass in the context reached, plus one
        self.max_seq = 0  # the longest single pass

    def positions(self, device: torch.device) -> Tensor:
        return torch.arange(self.offset, self.offset + self.seq, device=device)


def _track_passes(model: Model, hooks: _Handles) -> _PassInfo:
    info = _PassInfo()

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        if x is None:
            raise RuntimeError("lmscope could not find input_ids or inputs_embeds in the forward call")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        info.offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        info.seq = x.shape[1]
        info.max_end = max(info.max_end, info.offset + info.seq)
        info.max_seq = max(info.max_seq, info.seq)
        if info.first_len is None:
            info.first_len = info.offset + info.seq

    _register(model, model.base, pre, "input", hooks, owner="positions", site="(pass)", prepend=True)
    return info


def _register(
    model: Model, module: nn.Module, fn: Any, point: str, hooks: _Handles, *, owner: str, site: str, prepend: bool
) -> None:
    record = HookRecord(owner, site, model.module_name(module))
    fn = hooks.guard(fn, record)
    if point == "input":
        handle = module.register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend)
        hook_dict = module._forward_pre_hooks
    else:
        handle = module.register_forward_hook(fn, prepend=prepend)
        hook_dict = module._forward_hooks
    hooks.handles.append(handle)
    if owner == "intervene" and prepend:
        model._edit_hook_ids.add(handle.id)
        hooks._edit_ids = (*hooks._edit_ids, handle.id)
        _edits_first_in_order(hook_dict, model._edit_hook_ids)


@contextmanager
def _hook_scope(model: Model) -> Iterator[_Handles]:
    """A fresh set of thread-bound hooks, closed however the block ends."""
    hooks: _Handles | None = None
    try:
        with _interrupts_deferred():
            hooks = _Handles(model)
        yield hooks
    finally:
        if hooks is not None:
            hooks.close()


def _edits_first_in_order(hooks: Any, edit_ids: set[int]) -> None:
    """Reorder a module's hook dict: lmscope edits first, oldest first; everything else after, as it was."""
    ours = sorted(k for k in hooks if k in edit_ids)  # handle ids grow with registration order
    rest = [k for k in hooks if k not in edit_ids]
    for k in ours + rest:
        hooks.move_to_end(k)


def _raw(point: str, idx: int, args: tuple, kwargs: dict, output: Any) -> Tensor:
    if point == "input":
        return args[0] if args else kwargs["hidden_states"]
    return output[idx] if isinstance(output, tuple) else output


def _site_hook(access: Access, point_fn):
    """Wrap ``point_fn(site_tensor) -> new site tensor | None`` as a module hook."""
    idx = access.output_index
    if access.point == "input":

        def pre(module: nn.Module, args: tuple, kwargs: dict):
            raw = _raw("input", idx, args, kwargs, None)
            new = point_fn(access.read(raw))
            if new is None:
                return None
            assert access.write is not None
            new_raw = access.write(raw, new)
            if args:
                return (new_raw, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new_raw}

        return pre

    def post(module: nn.Module, args: tuple, output: Any):
        raw = _raw("output", idx, args, {}, output)
        if raw is None:
            raise RuntimeError(f"{type(module).__name__} returned no tensor at output {idx}")
        new = point_fn(access.read(raw))
        if new is None:
            return None
        assert access.write is not None
        new_raw = access.write(raw, new)
        if isinstance(output, tuple):
            return (*output[:idx], new_raw, *output[idx + 1 :])
        return new_raw

    return post


def _check_pattern(model: Model, site: Site) -> None:
    if site.kind == "attn_pattern" and model.attn_implementation != "eager":
        raise NotImplementedError(
            f"{site} needs eager attention, but this model uses {model.attn_implementation!r}; "
            "load it with lmscope.load(..., attn_implementation='eager')"
        )


def _owned(value: Tensor) -> Tensor:
    """A stored activation should not pin a larger tensor it is a view of."""
    if value._base is not None or not value.is_contiguous():
        return value.clone()
    return value


def _grad_recorder(acts: ActivationCache, site: Site, read: Any):
    """A tensor hook that stores the gradient in ``acts.grads``, holding the cache only weakly.

    A strong reference would make a cycle through the tensor's C++ grad_fn (tensor -> hook ->
    cache -> tensor) that Python's garbage collector cannot see, leaking every captured tensor.
    """
    ref = weakref.ref(acts)

    def hook(g: Tensor) -> None:
        cache = ref()
        if cache is not None:
            cache.grads[site] = read(g)

    return hook


@contextmanager
def capture(
    model: Model,
    sites: Iterable[SiteLike],
    *,
    stop_early: bool = False,
    detach: bool = True,
    device: torch.device | str | None = None,
    grads: bool = False,
) -> Iterator[ActivationCache]:
    """Record the activations of ``sites`` during forward passes run inside the block.

    Args:
        model: the lmscope Model.
        sites: Sites or hook names.
        stop_early: stop the forward pass once the deepest site is recorded (``model(...)`` then
            returns None; a raw HF call inside the block ends the block).
        detach: store tensors cut from the autograd graph.
        device: move captured tensors there (e.g. "cpu" from a GPU model); the model never moves.
        grads: keep the graph and record each site's gradient in ``acts.grads`` on backward.

    Forward passes that continue a KV cache append along the sequence axis, so a capture around
    ``generate`` holds the whole sequence.
    """
    wanted = _unique_sites(sites, model.shape.n_layers)
    if grads and stop_early:
        raise ValueError("grads=True needs the whole forward pass; do not combine it with stop_early")
    acts = ActivationCache()
    # Every site at the greatest depth must be recorded before stopping: q/k/v of one layer, or several
    # heads of one site, tie in depth and their hooks run one after another.
    max_depth = max(s.depth(model.shape.n_layers) for s in wanted)
    deepest = {s for s in wanted if s.depth(model.shape.n_layers) == max_depth}
    deep_seen: set[Site] = set()
    with _hook_scope(model) as hooks:
        with _interrupts_deferred():
            info = _track_passes(model, hooks)
            for site in wanted:
                _register_capture(model, site, acts, info, hooks, detach=detach, device=device, grads=grads,
                                  stop_early=stop_early, deepest=deepest, deep_seen=deep_seen)  # fmt: skip
        try:
            yield acts
        except StopForward:
            pass


def _register_capture(model: Model, site: Site, acts: ActivationCache, info: _PassInfo, hooks: _Handles, *,
                      detach: bool, device: Any, grads: bool, stop_early: bool, deepest: set[Site],
                      deep_seen: set[Site]) -> None:  # fmt: skip
    _check_pattern(model, site)
    access = resolve(model, site)
    read = access.read
    if grads:  # the hook gets the raw tensor: a gradient hook must sit on what the model itself uses
        access = dataclasses.replace(access, read=lambda t: t)

    def record(t: Tensor, site: Site = site, read: Any = read) -> None:
        value = t if (grads or not detach) else t.detach()
        if grads:
            if not value.requires_grad:
                raise RuntimeError(f"cannot record gradients at {site}: it does not require grad")
            # A hook on a view made here (a head, a slice of fused qkv) would never fire: the view
            # is not on the path to the loss. Hook the raw tensor and read the site from its gradient.
            hooks.add_tensor_hook(value, _grad_recorder(acts, site, read), HookRecord("grad", str(site), "tensor"))
            value = read(value)
        else:
            value = _owned(value)
        if device is not None:
            value = value.to(device)
        acts._store(site, value, append=info.offset > 0)
        if stop_early and site in deepest:
            deep_seen.add(site)
        if stop_early and deep_seen == deepest:
            deep_seen.clear()
            raise StopForward(str(site))

    _register(
        model, access.module, _site_hook(access, record), access.point, hooks,
        owner="capture", site=str(site), prepend=False,
    )  # fmt: skip


@contextmanager
def intervene(model: Model, edits: Mapping[SiteLike, Edit | Sequence[Edit]]) -> Iterator[None]:
    """Apply ``edits`` (site -> Edit or list of Edits) to every forward pass inside the block.

    Works inside ``model.generate`` with or without the KV cache: positions are absolute
    (see ``lmscope.edits``). Everything is validated before the first hook is registered.
    """
    plan: list[tuple[Site, Edit]] = []
    for key, value in edits.items():
        site = as_model_site(key, model.shape.n_layers)
        items = [value] if isinstance(value, Edit) or not isinstance(value, Sequence) else list(value)
        for item in items:
            if not isinstance(item, Edit):
                raise TypeError(f"edit for {site} must be an lmscope Edit (or a list of them), got {type(item).__name__}")
        edit = value if isinstance(value, Edit) else Chain(edits=items)
        if site.kind == "attn_pattern":
            raise NotImplementedError(f"{site} is read-only: editing the returned pattern would not change the output")
        resolve(model, site)
        edit.validate(model.site_width(site), str(site), dtype=model.dtype)
        plan.append((site, edit))
    with _hook_scope(model) as hooks:
        with _interrupts_deferred():
            info = _register_edits(model, plan, hooks)
        yield
        # Reached only when the block ends normally: an edit whose explicit positions no pass ever
        # reached did nothing, which is a wrong experiment, not a quiet success.
        if info.max_end:
            for site, edit in plan:
                missing = edit.never_reached(info.max_end, info.max_seq)
                if missing is not None:
                    shown = missing if len(missing) <= 8 else [*missing[:8], "..."]
                    raise IndexError(
                        f"the edit at {site} asks for positions {shown}, but no forward pass in this block had any of "
                        f"them (sequences reached positions 0..{info.max_end - 1}); the edit changed nothing"
                    )


def _checked(edit: Edit, site: Site, info: _PassInfo, prompt_len: Any) -> Any:
    """The edit applied at the current pass's positions; its result must match the site's shape, dtype, device."""

    def apply(t: Tensor) -> Tensor:
        new = edit(t, info.positions(t.device), prompt_len())
        if not isinstance(new, Tensor) or new.shape != t.shape or new.dtype != t.dtype or new.device != t.device:
            got = (f"{type(new).__name__}" if not isinstance(new, Tensor)
                   else f"shape {tuple(new.shape)}, {new.dtype}, on {new.device}")  # fmt: skip
            raise TypeError(
                f"the {type(edit).__name__} edit at {site} returned {got}; the site holds shape {tuple(t.shape)}, "
                f"{t.dtype}, on {t.device} (an edit must return a tensor like its input; cast with .to(x.dtype))"
            )
        return new

    return apply


def _register_edits(model: Model, plan: list[tuple[Site, Edit]], hooks: _Handles) -> _PassInfo:
    info = _track_passes(model, hooks)

    def prompt_len() -> int:
        if model._prompt_len is not None:
            return model._prompt_len
        return info.first_len if info.first_len is not None else 0

    for site, edit in plan:
        if site.kind == "resid_mid":
            _register_resid_mid(model, site, _checked(edit, site, info, prompt_len), hooks)
            continue
        access = resolve(model, site)
        _register(
            model, access.module, _site_hook(access, _checked(edit, site, info, prompt_len)), access.point, hooks,
            owner="intervene", site=str(site), prepend=True,
        )  # fmt: skip
    return info


def _register_resid_mid(model: Model, site: Site, apply: Any, hooks: _Handles) -> None:
    """Edit resid_mid by adding (edited - original) to attention's contribution.

    The residual after attention is resid_pre + attn_out; HF keeps it in a local variable, so the
    change is routed through attn_out, which both the MLP and the residual stream then see.
    """
    layer = model.layers[site.layer]  # type: ignore[index]
    attn_out = resolve(model, Site("attn_out", site.layer))
    seen: dict[str, Tensor] = {}

    def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["pre"] = _raw("input", 0, args, kwargs, None)

    def redirect(out: Tensor) -> Tensor:
        mid = seen["pre"] + out
        return out + (apply(mid) - mid)

    # Appended, so it sees the block input after every edit of resid_pre (prepended), whichever context made it.
    _register(model, layer, keep, "input", hooks, owner="intervene", site=str(site), prepend=False)
    _register(
        model, attn_out.module, _site_hook(attn_out, redirect), "output", hooks,
        owner="intervene", site=str(site), prepend=True,
    )  # fmt: skip


def _unique_sites(sites: Iterable[SiteLike], n_layers: int) -> list[Site]:
    if isinstance(sites, (str, Site)):
        sites = [sites]
    out: list[Site] = []
    for s in sites:
        site = as_model_site(s, n_layers)
        if site not in out:
            out.append(site)
    if not out:
        raise ValueError("capture needs at least one site")
    return out
