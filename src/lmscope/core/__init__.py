"""The core: models, sites, hooks, edits. Method families import only from here."""

from lmscope.core import edits
from lmscope.core.architectures import ARCHITECTURES, Architecture
from lmscope.core.cache import ActivationCache
from lmscope.core.hooks import HookRecord, StopForward, active_hooks, capture, intervene
from lmscope.core.inputs import Batch, last_token_index, position_ids_from_mask, tokenize
from lmscope.core.loading import cache_dir, load
from lmscope.core.model import Model, ModelShape
from lmscope.core.sites import Site, as_site
from lmscope.core.tiny import TINY_FAMILIES, load_tiny

__all__ = [
    "ARCHITECTURES", "ActivationCache", "Architecture", "Batch", "HookRecord", "Model", "ModelShape",
    "Site", "StopForward", "TINY_FAMILIES", "active_hooks", "as_site", "cache_dir", "capture", "edits",
    "intervene", "last_token_index", "load", "load_tiny", "position_ids_from_mask", "tokenize",
]  # fmt: skip
