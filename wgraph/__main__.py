"""``python -m wgraph`` runs the ``wgraph`` command (also under ``torchrun -m wgraph``)."""

import sys

from .cli import main

sys.exit(main())
