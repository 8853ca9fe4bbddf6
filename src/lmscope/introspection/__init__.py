"""Introspection: the concept-injection experiment (seed 000; Lindsey 2025) with control trials,
and a Golden-Gate-style positive control.

    >>> import lmscope as ls
    >>> from lmscope.introspection import IntrospectionConfig, introspection_grid
    >>> model = ls.load()
    >>> res = introspection_grid(model, IntrospectionConfig(layers=[10], strengths=[4.0], n_trials=8))
    >>> res.rates
"""

from lmscope.introspection.concepts import ConceptVectors, ConceptWords, concept_vectors, load_concepts
from lmscope.introspection.grid import (
    GoldenGateResult,
    IntrospectionConfig,
    IntrospectionResult,
    golden_gate,
    introspection_grid,
    pick_concepts,
)
from lmscope.introspection.judge import ModelJudge
from lmscope.introspection.protocol import (
    PREAMBLE,
    QUESTION,
    Grade,
    RowwiseInjection,
    claims_detection,
    grade,
    names_concept,
    run_trials,
    summarize,
    trial_ids,
    trial_text,
)

__all__ = [
    "PREAMBLE", "QUESTION", "ConceptVectors", "ConceptWords", "GoldenGateResult", "Grade", "IntrospectionConfig",
    "IntrospectionResult", "ModelJudge", "RowwiseInjection", "claims_detection", "concept_vectors", "golden_gate", "grade",
    "introspection_grid", "load_concepts", "names_concept", "pick_concepts", "run_trials", "summarize", "trial_ids", "trial_text",
]  # fmt: skip
