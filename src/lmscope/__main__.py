"""``python -m lmscope`` runs the CLI (and ``torchrun --nproc-per-node N -m lmscope sae train ...`` trains data-parallel)."""

import sys

from lmscope.cli.main import main

sys.exit(main())
