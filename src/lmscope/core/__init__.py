"""The core: models, sites, hooks, edits. Method families import only from here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmscope.core import edits
    from lmscope.core.architectures import ARCHITECTURES, Architecture
    from lmscope.core.cache import ActivationCache
    from lmscope.core.hooks import HookRecord, StopForward, active_hooks, capture, intervene
    from lmscope.core.inputs import Batch, last_token_index, position_ids_from_mask, tokenize
    from lmscope.core.loading import cache_dir, load
    from lmscope.core.model import Model, ModelShape
    from lmscope.core.sites import Site, as_site
    from lmscope.core.tiny import TINY_FAMILIES, load_tiny

# Names load on first use (PEP 562), so that reading lmscope.core.version imports no torch.
_WHERE = {
    "edits": "lmscope.core.edits",
    "ARCHITECTURES": "lmscope.core.architectures",
    "Architecture": "lmscope.core.architectures",
    "ActivationCache": "lmscope.core.cache",
    "HookRecord": "lmscope.core.hooks",
    "StopForward": "lmscope.core.hooks",
    "active_hooks": "lmscope.core.hooks",
    "capture": "lmscope.core.hooks",
    "intervene": "lmscope.core.hooks",
    "Batch": "lmscope.core.inputs",
    "last_token_index": "lmscope.core.inputs",
    "position_ids_from_mask": "lmscope.core.inputs",
    "tokenize": "lmscope.core.inputs",
    "cache_dir": "lmscope.core.loading",
    "load": "lmscope.core.loading",
    "Model": "lmscope.core.model",
    "ModelShape": "lmscope.core.model",
    "Site": "lmscope.core.sites",
    "as_site": "lmscope.core.sites",
    "TINY_FAMILIES": "lmscope.core.tiny",
    "load_tiny": "lmscope.core.tiny",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lmscope.core' has no attribute {name!r}")
    module = importlib.import_module(_WHERE[name])
    value = module if name == "edits" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "ARCHITECTURES", "ActivationCache", "Architecture", "Batch", "HookRecord", "Model", "ModelShape",
    "Site", "StopForward", "TINY_FAMILIES", "active_hooks", "as_site", "cache_dir", "capture", "edits",
    "intervene", "last_token_index", "load", "load_tiny", "position_ids_from_mask", "tokenize",
]  # fmt: skip
