"""Sparse autoencoders: variants, training, metrics, features, steering, SAELens interop.

See ``docs/saes.md`` for the workflow; each module's docstring explains its method.
"""

from lmscope.saes.sae import ARCHITECTURES, SAE, SAEConfig, SAEOutput, topk_codes
from lmscope.saes.sources import ActivationSource, ModelSource, StoreSource, TensorSource
from lmscope.saes.training import TrainConfig, TrainResult, train_sae

__all__ = [
    "ARCHITECTURES", "SAE", "ActivationSource", "ModelSource", "SAEConfig", "SAEOutput", "StoreSource", "TensorSource",
    "TrainConfig", "TrainResult", "topk_codes", "train_sae",
]  # fmt: skip
