"""Import the field's published model zoos and plain checkpoint folders as wgraph zoos.

>>> from wgraph.zoo import import_zoo
>>> # report = import_zoo("small-cnn-zoo", "cifar10", "zoos/cifar10"); print(report.summary())

One module per format, each with ``plan(src, **options)`` (what the source holds, and how to read
it), ``add_arguments`` / ``options`` (its command-line options) and ``HELP``:

- :mod:`.small_cnn_zoo`: the Small CNN Zoo (Unterthiner et al. 2020): ``weights.npy``, ``layout.csv``,
  ``metrics.csv.gz``;
- :mod:`.inr`: INR datasets of DWSNets / neural-graphs (split JSON) and NFN (``{prefix}_{label}s/net{i}.pth``);
- :mod:`.checkpoints`: a folder or list of ``.safetensors`` / ``.pt`` checkpoints of one architecture, labels
  from a CSV.

:mod:`.common` writes any plan through :class:`~wgraph.zoo.store.ZooWriter` (atomic, resumable)
and reports every network it skips; :mod:`.api` holds :data:`FORMATS` and :func:`import_zoo`; :mod:`.cli` adds
``wgraph zoo import FORMAT SRC OUT``.
"""

from __future__ import annotations

from .api import FORMATS, SHARD_SIZE, import_zoo
from .cli import register_import
from .common import IMPORTER, REPORT, ImportFailed, ImportReport, Problem

__all__ = ["FORMATS", "IMPORTER", "REPORT", "SHARD_SIZE", "ImportFailed", "ImportReport", "Problem", "import_zoo",
           "register_import"]
