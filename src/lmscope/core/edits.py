"""Interventions as values: an :class:`Edit` maps a site's tensor to a new tensor.

Ablation, patching, steering, SAE splicing and concept injection are all "an edit at a site",
applied by :func:`lmscope.intervene`. Every edit says which token positions it touches:

- ``"all"``: every position, prompt and generated;
- ``"prompt"`` / ``"generated"``: positions before / from the prompt's length (the padded prompt
  length under ``Model.generate``; otherwise the length of the first forward pass in the context);
- an ``int`` or a sequence of ints: those absolute positions (negative ints count from the end of
  the current forward pass, so they are only meaningful without a KV cache);
- a 1-D LongTensor of shape (batch,): one absolute position per row (e.g. each row's last token);
  ``-1`` leaves that row untouched.

Positions are absolute indices into the (padded) sequence, computed from the KV cache length, so
an edit touches the same tokens with and without the cache. ``index`` selects features of the
last axis (neurons of ``mlp_post``, latents, dimensions); heads are chosen with ``Site(..., head=h)``.

    >>> import torch, lmscope as ls
    >>> e = ls.edits.add(torch.ones(4), scale=2.0)
    >>> e(torch.zeros(1, 3, 4), torch.arange(3), prompt_len=3)[0, 0]
    tensor([2., 2., 2., 2.])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

Positions = str | int | Sequence[int] | Tensor
_NAMED_POSITIONS = ("all", "prompt", "generated")


def check_finite(t: Tensor, name: str) -> None:
    """Raise if ``t`` holds NaN or Inf, naming the tensor and the count."""
    if t.is_floating_point():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{name} contains {bad} NaN/Inf value(s) out of {t.numel()}")


def check_number(value: object, name: str) -> float:
    """A finite real number (not a bool, not a tensor of several values), or an error naming ``name``."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _is_int(p: object) -> bool:
    return isinstance(p, int) and not isinstance(p, bool)


def _check_positions(positions: Positions) -> None:
    hint = f"positions must be one of {_NAMED_POSITIONS}, an int, a list of ints or a 1-D LongTensor (one per row)"
    if isinstance(positions, str):
        if positions not in _NAMED_POSITIONS:
            raise ValueError(f"{hint}; got {positions!r}")
    elif isinstance(positions, Tensor):
        if positions.dim() != 1 or positions.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{hint}; got a tensor of shape {tuple(positions.shape)} and dtype {positions.dtype}")
        if bool((positions < -1).any()):
            raise ValueError(f"per-row positions are absolute (>= 0, or -1 for a row to leave alone), got "
                             f"{positions.tolist()}")  # fmt: skip
    elif _is_int(positions):
        pass
    elif isinstance(positions, Sequence):
        bad = [p for p in positions if not _is_int(p)]
        if bad or len(positions) == 0:
            raise TypeError(f"{hint}; got {list(positions)!r}" + (f" ({bad[0]!r} is not an int)" if bad else " (empty)"))
    else:
        raise TypeError(f"{hint}; got {type(positions).__name__} {positions!r}")


def _check_index(index: object) -> None:
    if index is None:
        return
    if isinstance(index, Tensor):
        if index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"index must be a 1-D integer tensor or a list of ints, got {index.dtype} {tuple(index.shape)}")
        return
    if isinstance(index, (str, bytes)) or not isinstance(index, Sequence):
        raise TypeError(f"index must be a list of ints or a 1-D integer tensor, got {type(index).__name__} {index!r}")
    bad = [i for i in index if not _is_int(i)]
    if bad or len(index) == 0:
        raise TypeError(f"index must be a non-empty list of ints, got {list(index)!r}")


def position_mask(positions: Positions, pos: Tensor, prompt_len: int, batch: int) -> Tensor | None:
    """Bool mask (batch or 1, seq) of the positions an edit touches; None means all of them."""
    if isinstance(positions, str):
        if positions == "all":
            return None
        if positions == "prompt":
            return (pos < prompt_len)[None]
        return (pos >= prompt_len)[None]
    if isinstance(positions, Tensor):
        if positions.shape[0] != batch:
            raise ValueError(f"per-row positions have {positions.shape[0]} rows but the batch has {batch}")
        return pos[None, :].to(positions.device) == positions[:, None]
    wanted = [positions] if isinstance(positions, int) else list(positions)
    seq_end = int(pos[-1]) + 1
    wanted = [p + seq_end if p < 0 else p for p in wanted]
    return torch.isin(pos, torch.tensor(wanted, device=pos.device))[None]


@dataclass
class Edit:
    """Base class: subclasses implement :meth:`apply` on the whole tensor.

    ``__call__`` keeps the original values outside the selected positions, so an edit never
    leaks to tokens it was not asked to touch.
    """

    positions: Positions = field(default="all", kw_only=True)
    index: Sequence[int] | Tensor | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_positions(self.positions)
        _check_index(self.index)

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected_width(self) -> int | None:
        """The width of the last axis this edit needs, if it carries a vector."""
        return None

    def never_reached(self, max_end: int, max_seq: int) -> list[int] | None:
        """This edit's explicit positions when none of them existed in any pass, else None.

        ``max_end`` is one past the furthest absolute position any pass reached, ``max_seq`` the
        longest single pass (negative positions count from the end of a pass). Named positions
        ("all", "prompt", "generated") are never reported.
        """
        if isinstance(self.positions, str):
            return None
        wanted = ([p for p in self.positions.tolist() if p != -1] if isinstance(self.positions, Tensor)
                  else [self.positions] if isinstance(self.positions, int) else list(self.positions))  # fmt: skip
        hit = [p for p in wanted if (0 <= p < max_end) or (p < 0 and -p <= max_seq)]
        return None if hit or not wanted else wanted

    def tensors(self) -> dict[str, Tensor]:
        """The tensors this edit carries, by name (checked against the model's dtype)."""
        return {}

    def validate(self, width: int, site_name: str, *, dtype: torch.dtype | None = None) -> None:
        """Raise before any hook is registered if this edit cannot apply to a site of ``width``.

        With ``dtype`` (the model's), the carried tensors must stay finite once cast to it: a
        float64 vector of 1e300 is finite, and inf in float32.
        """
        if dtype is not None and dtype.is_floating_point:
            for name, t in self.tensors().items():
                if t.is_floating_point():
                    check_finite(t.to(dtype), f"{name} of the {type(self).__name__} edit at {site_name} (as {dtype})")
        need = self.expected_width()
        if need is not None:
            got = width if self.index is None else len(self._index_list())
            if need != got and need != width:
                raise ValueError(
                    f"{type(self).__name__} carries a vector of width {need} but site {site_name} "
                    f"has width {got}{'' if self.index is None else ' (selected by index)'}"
                )
        if self.index is not None:
            idx = self._index_list()
            if idx and (min(idx) < -width or max(idx) >= width):
                raise IndexError(f"index out of range for site {site_name} of width {width}: {idx}")

    def _index_list(self) -> list[int]:
        assert self.index is not None
        return self.index.tolist() if isinstance(self.index, Tensor) else list(self.index)

    def _fit(self, t: Tensor, x: Tensor) -> Tensor:
        """Select ``index`` from a full-width vector when the edit works on selected features."""
        if self.index is not None and t.dim() >= 1 and t.shape[-1] != x.shape[-1]:
            return t[..., torch.as_tensor(self._index_list(), device=t.device)]
        return t

    def __call__(self, x: Tensor, pos: Tensor, prompt_len: int) -> Tensor:
        if self.index is None:
            new = self.apply(x, pos)
        else:
            idx = torch.as_tensor(self._index_list(), device=x.device)
            new = x.clone()
            new[..., idx] = self.apply(x[..., idx], pos)
        mask = position_mask(self.positions, pos, prompt_len, x.shape[0])
        if mask is None:
            return new
        mask = mask.reshape(mask.shape + (1,) * (x.dim() - 2))
        return torch.where(mask, new, x)


def _vector(v: Tensor | float | Sequence[float], name: str) -> Tensor:
    if v is None:
        raise TypeError(f"{name} is None; give a tensor (or a list of floats)")
    try:
        t = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor or a list of numbers, got {type(v).__name__}: {exc}") from exc
    if not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    check_finite(t, name)
    return t if t.is_floating_point() else t.float()


@dataclass
class Add(Edit):
    """x + scale * vector (steering, concept injection)."""

    vector: Tensor = field(default_factory=lambda: torch.zeros(0))
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.vector = _vector(self.vector, "steering vector")
        if self.vector.dim() != 1:
            raise ValueError(f"an added vector must be 1-D, got shape {tuple(self.vector.shape)}")
        self.scale = check_number(self.scale, "scale")

    def tensors(self) -> dict[str, Tensor]:
        return {"scale * vector": self.scale * self.vector.double()}

    def expected_width(self) -> int | None:
        return self.vector.shape[0]

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:
        if self.scale == 0:
            return x
        return x + self.scale * self._fit(self.vector, x).to(device=x.device, dtype=x.dtype)


@dataclass
class Scale(Edit):
    """x * factor (graded activation, dose-response)."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.factor = check_number(self.factor, "factor")

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:
        return x * self.factor


@dataclass
class Replace(Edit):
    """Replace by a fixed value broadcast over batch and positions (mean ablation, clamping)."""

    value: Tensor | float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.value = _vector(self.value, "replacement value")

    def tensors(self) -> dict[str, Tensor]:
        assert isinstance(self.value, Tensor)
        return {"value": self.value}

    def expected_width(self) -> int | None:
        assert isinstance(self.value, Tensor)
        return self.value.shape[-1] if self.value.dim() >= 1 else None

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:
        assert isinstance(self.value, Tensor)
        return self._fit(self.value, x).to(device=x.device, dtype=x.dtype).expand_as(x).clone()


@dataclass
class Resample(Edit):
    """Replace each (row, position) by a row drawn from ``pool`` (activations of other inputs).

    The draw is seeded per absolute position, so the same edit gives the same result on every call,
    and the same value at a position whether the pass is whole or one KV-cache step.
    """

    pool: Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite(self.pool, "resample pool")
        if self.pool.dim() != 2 or self.pool.shape[0] == 0:
            raise ValueError(f"resample pool must be (n, width) with n > 0, got {tuple(self.pool.shape)}")
        if _is_int(self.seed) is False:
            raise TypeError(f"seed must be an int, got {self.seed!r}")

    def tensors(self) -> dict[str, Tensor]:
        return {"pool": self.pool}

    def expected_width(self) -> int | None:
        return self.pool.shape[1]

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:
        per_position = (x.shape[0], *x.shape[2:-1])  # batch (and heads) at one position
        cols = []
        for p in pos.tolist():
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(p))
            cols.append(torch.randint(0, self.pool.shape[0], per_position, generator=gen))
        rows = torch.stack(cols, dim=1)
        return self._fit(self.pool, x)[rows].to(device=x.device, dtype=x.dtype)


@dataclass
class ProjectOut(Edit):
    """x - (x . u) u for the unit direction u (directional ablation)."""

    direction: Tensor = field(default_factory=lambda: torch.zeros(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        d = _vector(self.direction, "direction")
        norm = d.norm()
        if d.dim() != 1 or norm == 0:
            raise ValueError("project_out needs a non-zero 1-D direction")
        self.direction = d / norm

    def tensors(self) -> dict[str, Tensor]:
        return {"direction": self.direction}

    def expected_width(self) -> int | None:
        return self.direction.shape[0]

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:
        u = self.direction.to(device=x.device, dtype=x.dtype)
        return x - (x @ u)[..., None] * u


@dataclass
class Patch(Edit):
    """Replace by the same site's activation from another run, aligned by absolute position.

    ``source`` has shape (batch or 1, seq, ...); position p of the current pass reads source[:, p].
    """

    source: Tensor = field(default_factory=lambda: torch.zeros(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite(self.source, "patch source")
        if self.source.dim() < 2:
            raise ValueError(f"patch source must be (batch or 1, seq, ...), got shape {tuple(self.source.shape)}")

    def tensors(self) -> dict[str, Tensor]:
        return {"source": self.source}

    def expected_width(self) -> int | None:
        return self.source.shape[-1]

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:
        src = self.source
        if src.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"patch source has batch {src.shape[0]} but the run has batch {x.shape[0]} (use 1 to broadcast)")
        if int(pos.max()) >= src.shape[1]:
            raise IndexError(f"patch source has {src.shape[1]} positions; the pass reaches position {int(pos.max())}")
        out = self._fit(src[:, pos.to(src.device)], x).to(device=x.device, dtype=x.dtype)
        return out.expand_as(x).clone() if out.shape != x.shape else out


@dataclass
class Custom(Edit):
    """Any function of the site tensor, ``fn(x) -> x`` of the same shape."""

    fn: Callable[[Tensor], Tensor] = field(default=lambda x: x)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.fn):
            raise TypeError(f"custom edit needs a function fn(x) -> x, got {type(self.fn).__name__}")

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:
        out = self.fn(x)
        if not isinstance(out, Tensor):
            raise TypeError(f"custom edit returned {type(out).__name__}, not a tensor")
        if out.shape != x.shape:
            raise ValueError(f"custom edit returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if out.dtype != x.dtype:
            raise TypeError(f"custom edit returned {out.dtype} for a {x.dtype} input; a cast would change the values "
                            "(int truncates): return x's dtype, e.g. with .to(x.dtype)")  # fmt: skip
        return out


@dataclass
class Chain(Edit):
    """Apply several edits in order (each with its own positions)."""

    edits: Sequence[Edit] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, e in enumerate(self.edits):
            if not isinstance(e, Edit):
                raise TypeError(f"chain item {i} must be an lmscope Edit, got {type(e).__name__}")

    def validate(self, width: int, site_name: str, *, dtype: torch.dtype | None = None) -> None:
        for e in self.edits:
            e.validate(width, site_name, dtype=dtype)

    def never_reached(self, max_end: int, max_seq: int) -> list[int] | None:
        for e in self.edits:
            missing = e.never_reached(max_end, max_seq)
            if missing is not None:
                return missing
        return None

    def __call__(self, x: Tensor, pos: Tensor, prompt_len: int) -> Tensor:
        for e in self.edits:
            x = e(x, pos, prompt_len)
        return x


# Lower-case constructors: the public, readable spelling (ls.edits.add(v, scale=4.0)).
def add(vector: Tensor | Sequence[float], scale: float = 1.0, *, positions: Positions = "all", index=None) -> Add:
    """Add ``scale * vector``."""
    return Add(vector=vector, scale=scale, positions=positions, index=index)  # type: ignore[arg-type]


def scale(factor: float, *, positions: Positions = "all", index=None) -> Scale:
    """Multiply by ``factor``."""
    return Scale(factor=factor, positions=positions, index=index)


def replace(value: Tensor | float, *, positions: Positions = "all", index=None) -> Replace:
    """Set to ``value`` (a scalar or a vector of the site's width)."""
    return Replace(value=value, positions=positions, index=index)


def zero(*, positions: Positions = "all", index=None) -> Replace:
    """Zero ablation."""
    return Replace(value=0.0, positions=positions, index=index)


def mean_ablate(mean: Tensor, *, positions: Positions = "all", index=None) -> Replace:
    """Mean ablation: set to the mean activation over a reference distribution."""
    return Replace(value=mean, positions=positions, index=index)


def resample(pool: Tensor, *, seed: int = 0, positions: Positions = "all", index=None) -> Resample:
    """Resample ablation from a pool of activations of other inputs, shape (n, width)."""
    return Resample(pool=pool, seed=seed, positions=positions, index=index)


def project_out(direction: Tensor, *, positions: Positions = "all") -> ProjectOut:
    """Remove the component along ``direction``."""
    return ProjectOut(direction=direction, positions=positions)


def patch(source: Tensor, *, positions: Positions = "all", index=None) -> Patch:
    """Patch in another run's activation of the same site."""
    return Patch(source=source, positions=positions, index=index)


def custom(fn: Callable[[Tensor], Tensor], *, positions: Positions = "all", index=None) -> Custom:
    """Wrap a plain function as an edit."""
    return Custom(fn=fn, positions=positions, index=index)


def chain(*edits: Edit) -> Chain:
    """Compose edits, applied left to right."""
    return Chain(edits=edits)
