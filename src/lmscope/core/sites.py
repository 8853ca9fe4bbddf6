"""Activation sites: one vocabulary for every place lmscope can read or write.

A :class:`Site` names a tensor in the forward pass of a decoder-only model: a kind
(``resid_post``, ``mlp_post``, ``attn_z``...), a layer, and optionally one attention head.
Its string form follows TransformerLens (``blocks.12.hook_resid_post``,
``blocks.3.attn.hook_z``) so hook names from SAELens / Neuronpedia parse::

    >>> Site("resid_post", 12)
    Site('resid_post', 12)
    >>> str(Site("attn_z", 3))
    'blocks.3.attn.hook_z'
    >>> Site.parse("blocks.12.hook_resid_post") == Site("resid_post", 12)
    True
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# kind -> TransformerLens-style suffix after "blocks.{l}."
_BLOCK_SUFFIX: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_in": "hook_mlp_in",
    "mlp_post": "mlp.hook_post",
    "attn_z": "attn.hook_z",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "attn_pattern": "attn.hook_pattern",
}
# Sites outside the blocks; layer is ignored (stored as -1 for embed, n_layers for the rest).
_GLOBAL_NAME: dict[str, str] = {
    "embed": "hook_embed",
    "final_norm": "ln_final.hook_normalized",
    "logits": "hook_logits",
}
# Aliases accepted when parsing (TransformerLens / SAELens spellings).
_ALIASES: dict[str, str] = {
    "hook_z": "attn_z",
    "hook_attn_z": "attn_z",
    "attn.hook_z": "attn_z",
    "hook_post": "mlp_post",
    "hook_mlp_post": "mlp_post",
    "hook_q": "q",
    "hook_k": "k",
    "hook_v": "v",
    "hook_pattern": "attn_pattern",
    "hook_attn_pattern": "attn_pattern",
}

BLOCK_KINDS: tuple[str, ...] = tuple(_BLOCK_SUFFIX)
GLOBAL_KINDS: tuple[str, ...] = tuple(_GLOBAL_NAME)
ALL_KINDS: tuple[str, ...] = GLOBAL_KINDS[:1] + BLOCK_KINDS + GLOBAL_KINDS[1:]
RESIDUAL_BASIS_KINDS: tuple[str, ...] = (
    "embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "final_norm",
)  # fmt: skip
HEAD_KINDS: tuple[str, ...] = ("attn_z", "q", "k", "v", "attn_pattern")

# Order of sites within one block, used to find the deepest site of a capture.
_DEPTH: dict[str, int] = {
    "resid_pre": 0, "q": 1, "k": 1, "v": 1, "attn_pattern": 2, "attn_z": 3, "attn_out": 4,
    "resid_mid": 5, "mlp_in": 6, "mlp_post": 7, "mlp_out": 8, "resid_post": 9,
}  # fmt: skip


@dataclass(frozen=True, order=False)
class Site:
    """A named activation: ``kind`` at block ``layer`` (and one ``head`` for per-head kinds).

    ``embed`` has no layer; ``final_norm`` and ``logits`` come after the last block.
    """

    kind: str
    layer: int | None = None
    head: int | None = None

    def __post_init__(self) -> None:
        kind = _ALIASES.get(self.kind, self.kind)
        object.__setattr__(self, "kind", kind)
        if kind not in ALL_KINDS:
            close = difflib.get_close_matches(kind, ALL_KINDS, n=3)
            raise ValueError(f"unknown site kind {self.kind!r}; did you mean {close}? Valid kinds: {list(ALL_KINDS)}")
        if kind in GLOBAL_KINDS:
            if self.head is not None:
                raise ValueError(f"site kind {kind!r} has no heads")
            object.__setattr__(self, "layer", None)
            return
        if self.layer is None:
            raise ValueError(f"site kind {kind!r} needs a layer, e.g. Site({kind!r}, 0)")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool):
            raise TypeError(f"layer must be an int, got {type(self.layer).__name__}")
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.head is not None and kind not in HEAD_KINDS:
            raise ValueError(f"site kind {kind!r} has no heads; per-head kinds are {list(HEAD_KINDS)}")

    def __str__(self) -> str:
        if self.kind in _GLOBAL_NAME:
            return _GLOBAL_NAME[self.kind]
        name = f"blocks.{self.layer}.{_BLOCK_SUFFIX[self.kind]}"
        return name if self.head is None else f"{name}.{self.head}"

    def __repr__(self) -> str:
        args = [repr(self.kind)] + ([] if self.layer is None else [str(self.layer)])
        if self.head is not None:
            args.append(f"head={self.head}")
        return f"Site({', '.join(args)})"

    @property
    def name(self) -> str:
        """The TransformerLens-style hook name."""
        return str(self)

    @property
    def whole(self) -> Site:
        """The same site without the head selection."""
        return Site(self.kind, self.layer)

    def depth(self, n_layers: int) -> tuple[int, int]:
        """A sort key: where in the forward pass this site is computed."""
        if self.kind == "embed":
            return (-1, 0)
        if self.kind in ("final_norm", "logits"):
            return (n_layers, 0 if self.kind == "final_norm" else 1)
        assert self.layer is not None
        return (self.layer, _DEPTH[self.kind])

    @classmethod
    def parse(cls, name: str | Site) -> Site:
        """Parse ``blocks.{l}.hook_{kind}`` (TransformerLens spellings accepted) into a Site."""
        if isinstance(name, Site):
            return name
        if not isinstance(name, str):
            raise TypeError(f"a site is a Site or a str, got {type(name).__name__}")
        for kind, gname in _GLOBAL_NAME.items():
            if name in (gname, kind):
                return cls(kind)
        m = re.fullmatch(r"blocks\.(\d+)\.(.+?)(?:\.(\d+))?", name)
        if m is None:
            raise ValueError(
                f"cannot parse site name {name!r}; expected e.g. 'blocks.12.hook_resid_post', "
                f"'blocks.3.attn.hook_z' or one of {list(_GLOBAL_NAME.values())}"
            )
        layer, suffix, head = int(m.group(1)), m.group(2), m.group(3)
        inverse = {v: k for k, v in _BLOCK_SUFFIX.items()}
        found = inverse.get(suffix) or _ALIASES.get(suffix)
        if found is None:
            found = suffix[len("hook_") :] if suffix.startswith("hook_") else suffix
        kind = found
        return cls(kind, layer, None if head is None else int(head))


SiteLike = Site | str


def as_site(site: SiteLike) -> Site:
    """Accept a Site or its string name."""
    return Site.parse(site)


def as_model_site(site: SiteLike, n_layers: int) -> Site:
    """:func:`as_site` for a model with ``n_layers`` blocks: a bad name's error lists the closest valid sites."""
    try:
        return as_site(site)
    except ValueError as exc:
        valid = [_GLOBAL_NAME[k] for k in GLOBAL_KINDS]
        valid += [f"blocks.{layer}.{suffix}" for layer in range(n_layers) for suffix in _BLOCK_SUFFIX.values()]
        close = difflib.get_close_matches(str(site), valid, n=3, cutoff=0.5)
        raise ValueError(
            f"{exc}\nClosest valid sites: {close or 'none'}; the model has n_layers={n_layers} "
            f"(blocks.0 .. blocks.{n_layers - 1})"
        ) from None
