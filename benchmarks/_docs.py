"""Benchmark scripts write their tables into the docs between two marker comments."""

from __future__ import annotations

from pathlib import Path


def replace_block(path: Path, start: str, end: str, body: str) -> bool:
    """Replace what lies between the markers ``start`` and ``end`` in ``path`` with ``body`` (one
    line break after ``start`` and before ``end``; the markers stay). Returns ``False``, writing
    nothing, when the file or a marker is missing."""
    text = path.read_text() if path.exists() else ""
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1])
    return True


def publish(path: Path, title: str, md: str, doc: Path | None = None, start: str = "", end: str = "") -> None:
    """Write the report ``md`` under the heading ``title`` to ``path`` and, with ``doc``, into ``doc``
    between the markers ``start`` and ``end`` (:func:`replace_block`)."""
    path.write_text(f"# {title}\n\n{md}")
    if doc is not None:
        replace_block(doc, start, end, md.rstrip("\n"))
