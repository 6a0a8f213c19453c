"""Run one measurement in a process of its own, so that no allocation of one case can hide in
another's peak memory. Shared by the benchmark scripts of this folder."""

from __future__ import annotations

import json
import subprocess
import sys


class WorkerFailed(Exception):
    """The worker exited with an error; ``returncode`` and the last line of its stderr."""

    def __init__(self, returncode: int, last_line: str):
        super().__init__(f"exit {returncode}: {last_line}")
        self.returncode, self.last_line = returncode, last_line


def run_worker(script: str, args: list[str], timeout: float) -> dict:
    """``python script *args`` in a new process; returns the JSON object on its last stdout line.

    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds and :class:`WorkerFailed` if
    the worker fails or prints no result.
    """
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout)
    out = p.stdout.strip().splitlines()
    if p.returncode != 0 or not out:
        err = p.stderr.strip().splitlines()
        raise WorkerFailed(p.returncode, err[-1] if err else "")
    return json.loads(out[-1])
