"""Run one measurement in a process of its own, so that no allocation of one case can hide in
another's peak memory. Shared by the benchmark scripts of this folder; the runner itself is
:func:`wgraph.profile.run_worker`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgraph.profile import WorkerFailed  # noqa: E402
from wgraph.profile import run_worker as _run_argv  # noqa: E402

__all__ = ["WorkerFailed", "run_worker"]


def run_worker(script: str, args: list[str], timeout: float) -> dict:
    """``python script *args`` in a new process; returns the JSON object on its last stdout line."""
    return _run_argv([script, *args], timeout)
