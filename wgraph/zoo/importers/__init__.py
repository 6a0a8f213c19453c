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
and reports every network it skips; :mod:`.cli` adds ``wgraph zoo import FORMAT SRC OUT``.
"""

from __future__ import annotations

from pathlib import Path

from . import checkpoints, inr, small_cnn_zoo
from .cli import register_import
from .common import IMPORTER, REPORT, ImportFailed, ImportReport, Problem

#: The importable formats: name -> module with ``plan``, ``HELP``, ``add_arguments``, ``options``.
FORMATS = {"small-cnn-zoo": small_cnn_zoo, "inr": inr, "checkpoints": checkpoints}
#: Networks per shard of an imported zoo.
SHARD_SIZE = 4096


def import_zoo(format: str, src, out, *, strict: bool = False, progress: bool = True, shard_size: int = SHARD_SIZE,
               **options) -> ImportReport:
    """Import the zoo at ``src`` (in ``format``, one of :data:`FORMATS`) into the new wgraph zoo
    directory ``out``, or resume an import that was interrupted (the same call again).

    Networks that cannot be imported (a missing or unreadable file, a truncated array, keys or
    shapes that do not match the architecture, non-finite weights, a missing label) are skipped and
    reported by file and index; ``strict=True`` raises :class:`ImportFailed` at the first one
    instead. ``options`` go to the format's ``plan`` (see each module). Returns an
    :class:`ImportReport` whose ``zoo`` is the imported zoo, loaded with :func:`~wgraph.zoo.load_zoo`.
    """
    from .common import write_import

    if format not in FORMATS:
        raise ImportFailed(f"unknown import format {format!r}; known: {', '.join(FORMATS)}", [])
    plan = FORMATS[format].plan(src, **options)
    return write_import(format, Path(src).resolve(), out, plan, shard_size=shard_size, strict=strict,
                        progress=progress)


__all__ = ["FORMATS", "IMPORTER", "REPORT", "SHARD_SIZE", "ImportFailed", "ImportReport", "Problem", "import_zoo",
           "register_import"]
