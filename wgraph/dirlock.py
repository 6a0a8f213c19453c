"""One writer per output directory: an exclusive, non-blocking ``flock`` on ``DIR/.lock``.

Zoo writers and training runs hold it while they write; a second process that tries to write the
same directory is refused at once with a clear error instead of silently overwriting (or losing)
the first one's results. The lock is released when its file is closed, also when the process dies
(``kill -9`` included), so a stale ``.lock`` file never blocks a later run.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

LOCK = ".lock"


def lock_directory(root: Path, error: type[Exception], what: str) -> IO:
    """Hold the lock of directory ``root`` (which must exist) until the returned file is closed.

    Raises ``error("<root>: another process is <what>")`` if another process holds it. On systems
    without ``fcntl`` (not POSIX) there is no lock."""
    f = open(Path(root) / LOCK, "a")  # noqa: SIM115 (held for the writer's lifetime)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise error(f"{root}: another process is {what}") from None
    return f
