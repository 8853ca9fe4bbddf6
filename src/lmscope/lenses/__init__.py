"""Lenses: read the residual stream in words.

- :func:`logit_lens` decodes every layer with the model's own unembedding (``logit_lens.py``).
- :class:`TunedLens` / :func:`train_tuned_lens` learn one affine translator per layer
  (Belrose et al. 2023); :func:`compare_lenses` scores both on held-out text (``tuned_lens.py``).
- :func:`patchscope` / :func:`patchscope_sweep` patch a hidden state into another prompt and let
  the model describe it (Ghandeharioun et al. 2024, ``patchscopes.py``).
- :func:`build_two_hop`, :func:`analyze_two_hop`, :func:`backpatch`: two-hop queries, bridge and
  answer emergence, and backpatching (Biran et al. 2024, ``multihop.py``).
"""

from lmscope.lenses.compare import LensComparison, compare_lenses
from lmscope.lenses.logit_lens import LogitLensResult, logit_lens
from lmscope.lenses.multihop import BackpatchResult, TwoHopAnalysis, TwoHopDataset, analyze_two_hop, backpatch, build_two_hop
from lmscope.lenses.patchscopes import PRESETS, PatchscopeResult, PatchscopeSweep, patchscope, patchscope_sweep, preset_sweep
from lmscope.lenses.tuned_lens import TunedLens, TunedLensConfig, train_tuned_lens

__all__ = [
    "PRESETS", "BackpatchResult", "LensComparison", "LogitLensResult", "PatchscopeResult", "PatchscopeSweep",
    "TunedLens", "TunedLensConfig", "TwoHopAnalysis", "TwoHopDataset", "analyze_two_hop", "backpatch",
    "build_two_hop", "compare_lenses", "logit_lens", "patchscope", "patchscope_sweep", "preset_sweep",
    "train_tuned_lens",
]  # fmt: skip
