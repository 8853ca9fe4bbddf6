"""The experiment substrate: what every method family uses to turn a method into finished, resumable work.

- :mod:`~lmscope.experiments.spec`: an experiment is a frozen config dataclass with ``run()``;
  one argument vocabulary (layer lists, strengths, prompt files) the CLI is generated from.
- :mod:`~lmscope.experiments.runner`: :func:`run` an experiment value on a model, with progress,
  identity and provenance; :func:`open_model` for ``--model/--tiny/--device/--dtype``.
- :mod:`~lmscope.experiments.report`: the :class:`Result` every experiment returns and the one
  page builder (``result.json`` of one schema, figures, a self-contained ``index.html``).
- :mod:`~lmscope.experiments.identity`: the identity of a piece of work (config, weight hash,
  data hash, lmscope version) and the one check every resume goes through.
- :mod:`~lmscope.experiments.cells`: a resumable grid of cells (sweeps, grids), keyed by identity.
- :mod:`~lmscope.experiments.artifacts` and :mod:`~lmscope.experiments.store`: checksummed
  safetensors artifacts and the sharded activation store (:mod:`~lmscope.experiments.ray_harvest`
  fills it from a Ray cluster).
- :mod:`~lmscope.experiments.distributed`: rank and process group under ``torchrun``.

It imports only :mod:`lmscope.core` and :mod:`lmscope.data`; the method families import it.
"""

from lmscope.experiments.cells import CellCheckpoint
from lmscope.experiments.identity import Identity, StaleResume, check_resume, fingerprint, identity
from lmscope.experiments.report import Result, new_figure, read_result
from lmscope.experiments.runner import Context, open_model, run
from lmscope.experiments.spec import Experiment, Layers, Strengths, param, parse_layers, resolve_layers

__all__ = [
    "CellCheckpoint", "Context", "Experiment", "Identity", "Layers", "Result", "StaleResume", "Strengths",
    "check_resume", "fingerprint", "identity", "new_figure", "open_model", "param", "parse_layers", "read_result",
    "resolve_layers", "run",
]  # fmt: skip
