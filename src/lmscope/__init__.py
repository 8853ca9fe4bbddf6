"""lmscope: read any activation of a Hugging Face causal LM, change it, and run the experiments
interpretability research uses to explain and steer models.

    >>> import lmscope as ls
    >>> model = ls.load()                                   # bundled SmolLM2-135M-Instruct
    >>> with ls.capture(model, ["blocks.12.hook_resid_post"]) as acts:
    ...     model("The capital of Poland is")
"""

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
from lmscope.core.version import LMSCOPE_VERSION as __version__
from lmscope.lenses import LogitLensResult, logit_lens

__all__ = [
    "ARCHITECTURES", "ActivationCache", "Architecture", "Batch", "HookRecord", "Model", "ModelShape",
    "LogitLensResult", "Site", "StopForward", "TINY_FAMILIES", "__version__", "active_hooks", "as_site", "cache_dir", "capture",
    "edits", "intervene", "last_token_index", "load", "load_tiny", "logit_lens", "position_ids_from_mask", "tokenize",
]  # fmt: skip
