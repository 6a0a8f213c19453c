"""Run one measurement in a process of its own, so that no allocation of one case can hide in
another's peak memory. Shared by the benchmark scripts of this folder; the runner itself is
:func:`wgraph.profile.run_worker`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgraph.profile import WorkerFailed  # noqa: E402
from wgraph.profile import run_worker as _run_argv  # noqa: E402

__all__ = ["WorkerFailed", "run_worker", "run_case"]


def run_worker(script: str, args: list[str], timeout: float) -> dict:
    """``python script *args`` in a new process; returns the JSON object on its last stdout line."""
    return _run_argv([script, *args], timeout)


def run_case(script: str, name: str, timeout: float) -> dict:
    """``python script --one name`` in a new process (the conversion benchmarks' worker): its JSON
    row, or a row ``{"model", "status", "error"}`` saying that the worker crashed (its last line of
    stderr) or ran past ``timeout`` seconds."""
    try:
        return run_worker(script, ["--one", name], timeout)
    except WorkerFailed as e:
        return {"model": name, "status": "crashed", "error": e.last_line or "?"}
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "timeout", "error": f"more than {timeout} s"}
