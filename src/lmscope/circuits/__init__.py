"""Circuits: tasks with clean/corrupted pairs, activation and attribution patching, circuit
discovery by pruning (ACDC-style and learned masks), and necessity/sufficiency under ablation.

    import lmscope as ls
    from lmscope import circuits
    model = ls.load()
    task = circuits.filter_correct(model, circuits.ioi_task(model, n=16)).task
    grid = circuits.patching.resid_by_layer_pos(model, task)     # heatmap data
    circ = circuits.acdc(model, task, level="nodes", threshold=0.02)
    circuits.necessity_sufficiency(model, task, circ).to_json()

See docs/circuits.md.
"""

from . import attribution, discovery, graph, patching, tasks
from .attribution import EdgeScores, correlation, edge_attribution, edge_patch_exact, node_attribution
from .circuit import Circuit
from .discovery import FaithfulnessCurve, Setup, acdc, faithfulness_curve, learned_mask, setup
from .graph import ComponentGraph, edge_edits, writer_outputs
from .necessity import NecessitySufficiency, necessity_sufficiency
from .patching import PatchGrid, PatchResult, PatchSpec, heatmap, patch_sweep
from .tasks import TASKS, Filtered, TaskPairs, capital_task, filter_correct, greater_than_task, ioi_task

__all__ = [
    "TASKS", "Circuit", "ComponentGraph", "EdgeScores", "FaithfulnessCurve", "Filtered", "NecessitySufficiency",
    "PatchGrid", "PatchResult", "PatchSpec", "Setup", "TaskPairs", "acdc", "attribution", "capital_task",
    "correlation", "discovery", "edge_attribution", "edge_edits", "edge_patch_exact", "faithfulness_curve",
    "filter_correct", "graph", "greater_than_task", "heatmap", "ioi_task", "learned_mask", "necessity_sufficiency",
    "node_attribution", "patch_sweep", "patching", "setup", "tasks", "writer_outputs",
]  # fmt: skip
