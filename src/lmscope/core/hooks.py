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
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
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
    """The hooks lmscope currently has attached to ``model`` (empty outside any context)."""
    return list(model._hook_records)


class _PassInfo:
    """Absolute positions of the current forward pass, read from the KV cache length."""

    def __init__(self) -> None:
        self.offset = 0
        self.seq = 0
        self.first_len: int | None = None

    def positions(self, device: torch.device) -> Tensor:
        return torch.arange(self.offset, self.offset + self.seq, device=device)


def _track_passes(model: Model, stack: ExitStack) -> _PassInfo:
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
        if info.first_len is None:
            info.first_len = info.offset + info.seq

    _register(model, model.base, pre, "input", stack, owner="positions", site="(pass)", prepend=True)
    return info


def _register(
    model: Model, module: nn.Module, fn: Any, point: str, stack: ExitStack, *, owner: str, site: str, prepend: bool
) -> None:
    if point == "input":
        handle = module.register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend)
        hooks = module._forward_pre_hooks
    else:
        handle = module.register_forward_hook(fn, prepend=prepend)
        hooks = module._forward_hooks
    record = HookRecord(owner, site, model.module_name(module))
    model._hook_records.append(record)
    stack.callback(_forget, model._hook_records, record)
    stack.callback(handle.remove)
    if owner == "intervene" and prepend:
        edit_ids: set[int] = model.__dict__.setdefault("_edit_hook_ids", set())
        edit_ids.add(handle.id)
        stack.callback(edit_ids.discard, handle.id)
        _edits_first_in_order(hooks, edit_ids)


def _edits_first_in_order(hooks: Any, edit_ids: set[int]) -> None:
    """Reorder a module's hook dict: lmscope edits first, oldest first; everything else after, as it was."""
    ours = sorted(k for k in hooks if k in edit_ids)  # handle ids grow with registration order
    rest = [k for k in hooks if k not in edit_ids]
    for k in ours + rest:
        hooks.move_to_end(k)


def _forget(records: list[HookRecord], record: HookRecord) -> None:
    """Remove this very record (records of nested contexts can be equal but are distinct)."""
    for i, r in enumerate(records):
        if r is record:
            del records[i]
            return


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
    with ExitStack() as stack:
        info = _track_passes(model, stack)
        for site in wanted:
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
                    value.register_hook(_grad_recorder(acts, site, read))
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
                model, access.module, _site_hook(access, record), access.point, stack,
                owner="capture", site=str(site), prepend=False,
            )  # fmt: skip
        try:
            yield acts
        except StopForward:
            pass


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
        access = resolve(model, site)
        edit.validate(model.site_width(site), str(site))
        plan.append((site, edit))
    with ExitStack() as stack:
        info = _track_passes(model, stack)

        def prompt_len() -> int:
            if model._prompt_len is not None:
                return model._prompt_len
            return info.first_len if info.first_len is not None else 0

        for site, edit in plan:
            if site.kind == "resid_mid":
                _register_resid_mid(model, site, edit, info, prompt_len, stack)
                continue
            access = resolve(model, site)

            def apply(t: Tensor, edit: Edit = edit) -> Tensor:
                return edit(t, info.positions(t.device), prompt_len())

            _register(
                model, access.module, _site_hook(access, apply), access.point, stack,
                owner="intervene", site=str(site), prepend=True,
            )  # fmt: skip
        yield


def _register_resid_mid(model: Model, site: Site, edit: Edit, info: _PassInfo, prompt_len, stack: ExitStack) -> None:
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
        new = edit(mid, info.positions(out.device), prompt_len())
        return out + (new - mid)

    # Appended, so it sees the block input after every edit of resid_pre (prepended), whichever context made it.
    _register(model, layer, keep, "input", stack, owner="intervene", site=str(site), prepend=False)
    _register(
        model, attn_out.module, _site_hook(attn_out, redirect), "output", stack,
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
