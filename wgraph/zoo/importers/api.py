"""The formats and :func:`import_zoo`, re-exported by :mod:`wgraph.zoo.importers`."""

from __future__ import annotations

from pathlib import Path

from . import checkpoints, inr, small_cnn_zoo
from .common import ImportFailed, ImportReport, write_import

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
    if format not in FORMATS:
        raise ImportFailed(f"unknown import format {format!r}; known: {', '.join(FORMATS)}", [])
    plan = FORMATS[format].plan(src, **options)
    return write_import(format, Path(src).resolve(), out, plan, shard_size=shard_size, strict=strict,
                        progress=progress)
