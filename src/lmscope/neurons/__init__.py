"""Single neurons: record, top examples, correlate with a token property, ablate, dose-response.

The seeds' three-step workflow (is a neuron correlated with a behaviour? does removing it change
the behaviour? does turning it up or down change it gradually?), with random-neuron controls for
every effect. See ``docs/neurons.md``.
"""

from lmscope.neurons.ablate import (
    MODES,
    AblationResult,
    DoseResponse,
    Effect,
    ablate,
    dose_figure,
    dose_response,
    layer_reference,
)  # fmt: skip
from lmscope.neurons.correlate import Candidate, CorrelationResult, auroc, correlate, point_biserial, record_neurons
from lmscope.neurons.labels import LabelledWindows, pattern_windows, string_spans, string_windows, token_labels
from lmscope.neurons.record import Example, record, top_examples

__all__ = [
    "MODES", "AblationResult", "Candidate", "CorrelationResult", "DoseResponse", "Effect", "Example", "LabelledWindows",
    "ablate", "auroc", "correlate", "dose_figure", "dose_response", "layer_reference", "point_biserial", "record",
    "pattern_windows", "record_neurons", "string_spans", "string_windows", "token_labels", "top_examples",
]  # fmt: skip
