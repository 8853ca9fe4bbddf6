"""The identity of a piece of work, and the one check every resume goes through.

A checkpoint (a sweep's finished cells, an SAE's optimizer state, a tuned lens half trained)
is only worth resuming if it was computed from the same things this run would compute from:
the same settings, the same model weights, the same input data and the same lmscope. An
:class:`Identity` holds those four; :func:`check_resume` compares a saved identity with the
current one and raises :class:`StaleResume` naming every part that changed, so a rerun with one
input changed can never return the old numbers under the new name.

    >>> from lmscope.experiments import identity, check_resume
    >>> saved = identity({"lr": 1e-3, "seed": 0}, data=["a", "b"]).to_dict()
    >>> check_resume(saved, identity({"lr": 1e-3, "seed": 0}, data=["a", "b"]), "ckpt")  # same work: fine
    >>> try:
    ...     check_resume(saved, identity({"lr": 3e-3, "seed": 0}, data=["a", "b"]), "ckpt")
    ... except ValueError as e:
    ...     print(str(e).split(":")[1].strip())
    config.lr was 0.001, now 0.003
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmscope.core.version import LMSCOPE_VERSION

if TYPE_CHECKING:
    from lmscope.core.model import Model


class StaleResume(ValueError):
    """A checkpoint was written for other work than the run that found it."""


def _canonical(obj: Any, h: Any) -> None:
    """Feed a canonical rendering of ``obj`` to hash ``h`` (tensors by dtype, shape and bytes)."""
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(json.dumps(str(k)).encode() + b":")
            _canonical(obj[k], h)
            h.update(b",")
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _canonical(item, h)
            h.update(b",")
        h.update(b"]")
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())


def fingerprint(obj: Any) -> str:
    """sha256 of ``obj``: JSON-like data, tensors (by their bytes), or nestings of both."""
    h = hashlib.sha256()
    _canonical(obj, h)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


@dataclass(frozen=True)
class Identity:
    """What a piece of work is computed from."""

    config: dict[str, Any]
    """The settings that change the numbers (JSON-able; grid axes that only add cells are left out)."""
    weights: str | None = None
    """The model's weight hash (None for work without a model)."""
    data: str | None = None
    """A fingerprint of the input data (prompts, pairs, activations, a store's manifest)."""
    version: str = field(default=LMSCOPE_VERSION)
    """The lmscope version that computed it."""

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "weights": self.weights, "data": self.data, "version": self.version,
                "digest": self.digest}  # fmt: skip

    @property
    def digest(self) -> str:
        return fingerprint({"config": self.config, "weights": self.weights, "data": self.data, "version": self.version})

    def changes(self, saved: Mapping[str, Any]) -> list[str]:
        """What differs between a saved identity and this one, one readable item per part."""
        out = [f"config.{key} was {_short(a)}, now {_short(b)}"
               for key, a, b in _differences(saved.get("config") or {}, self.config)]  # fmt: skip
        if saved.get("weights") != self.weights:
            out.append(f"model weights differ (hash {_short(saved.get('weights'))} vs {_short(self.weights)})")
        if saved.get("data") != self.data:
            out.append(f"input data differs (fingerprint {_short(saved.get('data'))} vs {_short(self.data)})")
        if saved.get("version") != self.version:
            out.append(f"lmscope version was {saved.get('version')}, now {self.version}")
        return out


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs; nested mappings are compared key by key."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12]
    return text if len(text) <= 80 else text[:77] + "..."


def identity(config: Mapping[str, Any], *, model: Model | None = None, data: Any = None,
             weights: str | None = None) -> Identity:  # fmt: skip
    """The :class:`Identity` of work with ``config`` on ``model`` (its weight hash) and ``data`` (fingerprinted)."""
    w = weights if weights is not None else (None if model is None else model.weight_hash)
    return Identity(config=_jsonable(dict(config)), weights=w, data=None if data is None else fingerprint(data))


def check_resume(saved: Mapping[str, Any] | None, current: Identity, where: object) -> None:
    """Raise :class:`StaleResume` unless ``saved`` (an ``Identity.to_dict()``) is the same work as ``current``."""
    if saved is None:
        raise StaleResume(
            f"{where} holds a checkpoint without an identity (written by an older lmscope): it cannot be checked "
            "against this run's settings, weights and data; delete it or use another output folder"
        )
    changes = current.changes(saved)
    if changes:
        raise StaleResume(
            f"{where} holds work for other inputs: {'; '.join(changes)}. Resuming would mix results of "
            "different work; use another output folder, or delete the checkpoint to recompute"
        )
