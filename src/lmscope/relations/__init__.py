"""Relations: linear relational embeddings (Hernandez et al. 2024) — estimate, faithfulness, editing.

    import lmscope as ls
    from lmscope import relations
    model = ls.load()
    rel = relations.load_relation("country_capital")
    lre = relations.estimate_lre(model, rel, layer=8)
    relations.choose_beta(model, rel, lre)
    relations.faithfulness(model, rel, lre), relations.causality(model, rel, lre)

See docs/relations.md.
"""

from .evaluate import Causality, Faithfulness, SubjectStates, causality, choose_beta, faithfulness, subject_states
from .lre import LRE, Prompting, Relation, estimate_lre, jacobian, load_relation, relation_names

__all__ = [
    "LRE", "Causality", "Faithfulness", "Prompting", "Relation", "SubjectStates", "causality", "choose_beta",
    "estimate_lre", "faithfulness", "jacobian", "load_relation", "relation_names", "subject_states",
]  # fmt: skip
