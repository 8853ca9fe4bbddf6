"""In-context learning from the inside.

Two views of how a model learns from examples in its prompt:

- **Vectors** (:mod:`.vectors`, :mod:`.function_vectors`, :mod:`.algebra`): the demonstrations'
  effect as one residual-stream vector — in-context vectors, task vectors (Hendel et al. 2023),
  function vectors (Todd et al. 2024), Liu et al.'s PCA ICV — injected into a bare query, and
  composed by vector arithmetic.
- **Implicit dynamics** (:mod:`.rank1`, :mod:`.trajectory`, :mod:`.takeaways`): the context's
  effect on the query as a rank-1 update of each MLP's first matrices (Dherin et al. 2025),
  verified layer by layer, absorbed into the whole model, followed token by token, and used to
  test the prompt-engineering takeaways.

Tasks and prompt formats are in :mod:`.tasks`. See docs/icl.md and docs/icl_rank1.md.
"""

from lmscope.icl.algebra import algebra_report, list_tasks
from lmscope.icl.function_vectors import aie_from_prompts, function_vector, head_aie, head_prompts, top_heads
from lmscope.icl.rank1 import (
    Absorption,
    ContextualBlock,
    LayerCheck,
    Rank1Update,
    absorb_context,
    applied,
    contextual_block,
    rank1_update,
    verify_rank1,
)
from lmscope.icl.takeaways import run_condition, takeaway_experiments, transfer
from lmscope.icl.tasks import BUILTIN_TASKS, FORMATS, Pair, PromptFormat, Task, load_task, make_queries
from lmscope.icl.trajectory import Trajectory, trajectory
from lmscope.icl.vectors import TaskVectors, add_at_last, build_vectors, evaluate_injection

__all__ = [
    "BUILTIN_TASKS", "FORMATS", "Absorption", "ContextualBlock", "LayerCheck", "Pair", "PromptFormat", "Rank1Update",
    "Task", "TaskVectors", "Trajectory", "absorb_context", "add_at_last", "aie_from_prompts", "algebra_report",
    "applied", "build_vectors", "contextual_block", "evaluate_injection", "function_vector", "head_aie",
    "head_prompts", "list_tasks", "load_task", "make_queries", "rank1_update", "run_condition",
    "takeaway_experiments", "top_heads", "trajectory", "transfer", "verify_rank1",
]  # fmt: skip
