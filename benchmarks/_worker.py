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

__all__ = ["WorkerFailed", "run_worker", "run_case", "gnn_check", "GNN_WIDTH"]

#: Width of the graph NFN of :func:`gnn_check`.
GNN_WIDTH = 16


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


def gnn_check(graph, dtype) -> str:
    """``"ok"`` if the ``gnn`` preset runs forward and backward on ``graph`` (weights of ``dtype``),
    else the exception's type and first line (reported in a table, not a conversion failure).

    The preset (its depth embedding grows to the layout's depth) at width :data:`GNN_WIDTH` instead
    of 64: on a shared 2-core machine width 64 takes minutes per model, and the question is whether
    every block, layer and feature of the graph is read (the width changes no code path)."""
    import wgraph.nn

    try:
        gnn = wgraph.nn.from_preset("gnn", graph.layout, hidden=GNN_WIDTH, readout={"hidden": GNN_WIDTH})
        gnn.to(dtype)(graph).sum().backward()
        return "ok"
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
