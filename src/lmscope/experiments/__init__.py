"""The experiment substrate: what every method family uses to turn a method into finished, resumable work.

- :mod:`~lmscope.experiments.identity`: the identity of a piece of work (config, weight hash,
  data hash, lmscope version) and the one check every resume goes through.
- :mod:`~lmscope.experiments.cells`: a resumable grid of cells (sweeps, grids), keyed by identity.

It imports only :mod:`lmscope.core`; the method families import it.
"""

from lmscope.experiments.cells import CellCheckpoint
from lmscope.experiments.identity import Identity, StaleResume, check_resume, fingerprint, identity

__all__ = ["CellCheckpoint", "Identity", "StaleResume", "check_resume", "fingerprint", "identity"]
