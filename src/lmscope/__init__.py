"""lmscope: read any activation of a Hugging Face causal LM, change it, and run the experiments
interpretability research uses to explain and steer models.

    >>> import lmscope as ls
    >>> model = ls.load()                                   # bundled SmolLM2-135M-Instruct
    >>> with ls.capture(model, ["blocks.12.hook_resid_post"]) as acts:
    ...     model("The capital of Poland is")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lmscope.core.version import LMSCOPE_VERSION as __version__

if TYPE_CHECKING:
    from lmscope.core import (
        ARCHITECTURES,
        TINY_FAMILIES,
        ActivationCache,
        Architecture,
        Batch,
        HookRecord,
        Model,
        ModelShape,
        Site,
        StopForward,
        active_hooks,
        as_site,
        cache_dir,
        capture,
        edits,
        intervene,
        last_token_index,
        load,
        load_tiny,
        position_ids_from_mask,
        tokenize,
    )  # fmt: skip
    from lmscope.lenses import LogitLensResult, logit_lens

# Names load on first use (PEP 562): ``import lmscope`` and the CLI's --help do not import torch.
_WHERE = {name: "lmscope.core" for name in (
    "ARCHITECTURES", "ActivationCache", "Architecture", "Batch", "HookRecord", "Model", "ModelShape", "Site",
    "StopForward", "TINY_FAMILIES", "active_hooks", "as_site", "cache_dir", "capture", "edits", "intervene",
    "last_token_index", "load", "load_tiny", "position_ids_from_mask", "tokenize",
)} | {"LogitLensResult": "lmscope.lenses", "logit_lens": "lmscope.lenses"}  # fmt: skip


_SUBPACKAGES = ("circuits", "cli", "core", "data", "experiments", "icl", "introspection", "lenses", "neurons",
                "relations", "saes", "sparse", "steering", "reproduce")  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"lmscope.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module 'lmscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_SUBPACKAGES))


__all__ = [
    "ARCHITECTURES", "ActivationCache", "Architecture", "Batch", "HookRecord", "Model", "ModelShape",
    "LogitLensResult", "Site", "StopForward", "TINY_FAMILIES", "__version__", "active_hooks", "as_site", "cache_dir", "capture",
    "edits", "intervene", "last_token_index", "load", "load_tiny", "logit_lens", "position_ids_from_mask", "tokenize",
]  # fmt: skip
