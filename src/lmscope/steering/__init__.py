"""Steering: contrastive vectors (mean difference, PCA, probe), steering during generation,
directional ablation, sweeps with a capability cost, and llama.cpp control-vector export.

    >>> import lmscope as ls
    >>> from lmscope.steering import builtin, extract, steer
    >>> model = ls.load()
    >>> res = extract(model, builtin("harmful_harmless"))     # all layers, one batched pass per chunk
    >>> res.separability                                       # where refusal is linearly readable
    >>> with steer(model, res.vector, layers=[14], scale=4.0, positions="all"):
    ...     model.generate("List three benefits of yoga.", chat=True)
"""

from lmscope.steering import behaviour
from lmscope.steering.contrast import BUILTIN, ContrastSet, Example, builtin, from_records, load_contrast
from lmscope.steering.extract import METHODS, ExtractResult, extract, extract_many, last_token_acts, threshold_accuracy
from lmscope.steering.steer import ablate, ablation_edits, steer, steering_edits
from lmscope.steering.sweep import Capability, Cell, SweepResult, sweep
from lmscope.steering.vector import SteeringVector

__all__ = [
    "BUILTIN", "METHODS", "Capability", "Cell", "ContrastSet", "Example", "ExtractResult", "SteeringVector",
    "SweepResult", "ablate", "ablation_edits", "behaviour", "builtin", "extract", "extract_many", "from_records",
    "last_token_acts", "load_contrast", "steer", "steering_edits", "sweep", "threshold_accuracy",
]  # fmt: skip
