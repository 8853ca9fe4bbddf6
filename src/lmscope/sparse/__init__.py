"""Weight-sparse transformers (Gao et al., OpenAI 2025): tiny sparse GPT-2s, circuit pruning, bridges.

- :mod:`lmscope.sparse.task`: an in-process Python-like corpus, a character tokenizer, the quote-closing task.
- :mod:`lmscope.sparse.model`: ``SparsityConfig``, top-k weight masks with an annealed density, AbsTopK
  activations (:func:`activation_sparsity`), the training loop, save/load as safetensors.
- :mod:`lmscope.sparse.prune`: learned node masks with mean ablation; circuit size, necessity, sufficiency.
- :mod:`lmscope.sparse.bridge`: per-layer encoder (linear + AbsTopK) / decoder (linear) between a dense and
  a sparse model's residual streams, trained with MSE + spliced KL.

The models are plain HF ``GPT2LMHeadModel`` s wrapped in the core ``Model``, so capture/intervene work on them.
"""

from lmscope.sparse.bridge import (
    Bridge,
    BridgeConfig,
    LayerBridgeResult,
    fit_bridge,
    fvu,
    load_bridges,
    save_bridges,
    train_bridges,
)  # fmt: skip
from lmscope.sparse.model import (
    SparsityConfig,
    TrainConfig,
    TrainResult,
    abs_topk,
    activation_sparsity,
    density_at,
    load_model,
    new_model,
    save_model,
    topk_mask_,
    train,
    weight_density,
)  # fmt: skip
from lmscope.sparse.prune import PruneConfig, PruneResult, learn_scores, prune_model, smallest_circuit
from lmscope.sparse.task import QuotePrompt, char_tokenizer, quote_loss, quote_prompts, quote_task

__all__ = [
    "Bridge", "BridgeConfig", "LayerBridgeResult", "PruneConfig", "PruneResult", "QuotePrompt", "SparsityConfig",
    "TrainConfig", "TrainResult", "abs_topk", "activation_sparsity", "char_tokenizer", "density_at", "fit_bridge",
    "fvu", "learn_scores", "load_bridges", "load_model", "new_model", "prune_model", "quote_loss", "quote_prompts",
    "quote_task", "save_bridges", "save_model", "smallest_circuit", "topk_mask_", "train", "train_bridges",
    "weight_density",
]
