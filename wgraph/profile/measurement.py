"""Measuring one configuration: the worker (:func:`measure`), CPU and CUDA memory and time, and the
processes each configuration runs in (:func:`run_isolated`, :func:`profile`).

How memory and time are measured is described in :mod:`wgraph.profile`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict

from .arch import graph_of, layout_of, network_size, random_batch
from .config import Config
from .methods import build, estimate_gb, unsupported_reason

#: The environment of the CPU memory process: glibc maps every allocation of 64 KB or more on its own.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
#: Seconds a configuration may run, and the estimated peak memory above which it is skipped.
TIMEOUT_S = 600.0
MEM_CAP_GB = 8.0


# ----------------------------------------------------------------------------- CPU memory (Linux)
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def _reset_peak() -> None:
    """Return freed heap to the OS, then reset the resident-set high-water mark (Linux)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ----------------------------------------------------------------------------- the worker
def measure(cfg: Config, part: str = "both") -> dict:
    """Run ``cfg`` in this process and return its measurements (see :mod:`wgraph.profile`): ``part``
    ``"time"``, ``"memory"`` or ``"both"``. On CPU, :func:`run_isolated` measures memory in a process
    of its own with large allocations mapped on their own; in any other process the memory step
    runs with whatever malloc settings that process has."""
    import torch

    torch.set_num_threads(cfg.threads)
    cuda = cfg.device == "cuda"
    if not cuda:
        _reset_peak()  # free heap left by earlier work in this process must not count against the base
    base = _rss_mb()
    torch.manual_seed(0)
    one = graph_of(cfg.arch, cfg.input_shape)
    step, params = build(cfg, random_batch(one, cfg.batch).to(torch.device(cfg.device)))

    def run_step():
        step()
        if cuda:
            torch.cuda.synchronize()
        for p in params:
            p.grad = None

    # warm-up: lazy initialization (library handles, optimizer state, caches) is not a step's cost
    run_step()
    out = {"device_name": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    if part in ("time", "both") or cuda:  # on CUDA the peak is taken over the timed steps
        times = []
        # at least `reps` steps, more (up to 50) while they have taken under a second in all: the
        # best of many short steps; a step of over 10 s is not repeated
        while (len(times) < cfg.reps or (sum(times) < 1 and len(times) < 50)) and sum(times) <= 10:
            t = time.perf_counter()
            run_step()
            times.append(time.perf_counter() - t)
        out.update(time_s=min(times), reps=len(times))
    if part in ("memory", "both"):
        if cuda:
            peak = torch.cuda.max_memory_allocated()
            step_mb, total_mb = (peak - before) / 2**20, peak / 2**20
        else:
            _reset_peak()
            before = _rss_mb()
            run_step()
            peak = _hwm_mb()
            step_mb, total_mb = peak - before, peak - base
        out.update(step_mb=round(step_mb, 1), total_mb=round(total_mb, 1))
    return out


def worker_main(argv: list[str]) -> None:
    """``python -m wgraph.profile --worker JSON [--part PART]``: print :func:`measure`'s result as JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--part", default="both", choices=("time", "memory", "both"))
    args = ap.parse_args(argv)
    cfg = json.loads(args.worker)
    if cfg.get("input_shape"):
        cfg["input_shape"] = tuple(cfg["input_shape"])
    print(json.dumps(measure(Config(**cfg), args.part)))


# ----------------------------------------------------------------------------- isolation
class WorkerFailed(Exception):
    """A measurement subprocess exited with an error; ``returncode`` and the last line of its stderr."""

    def __init__(self, returncode: int, last_line: str):
        super().__init__(f"exit {returncode}: {last_line}")
        self.returncode, self.last_line = returncode, last_line


def run_worker(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """``python *argv`` in a new process (with ``env`` added to the environment); returns the JSON
    object on its last stdout line.

    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds and :class:`WorkerFailed` if the
    worker fails or prints no result.
    """
    env = {**os.environ, **env} if env else None
    p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    out = p.stdout.strip().splitlines()
    if p.returncode != 0 or not out:
        err = [line for line in p.stderr.strip().splitlines() if line.strip()]
        raise WorkerFailed(p.returncode, err[-1] if err else "")
    return json.loads(out[-1])


def run_measurement(argv: list[str], device: str, timeout: float) -> dict:
    """One configuration's measurements from a worker ``python *argv`` that takes ``--part``: on CPU
    time with the default malloc settings and memory in a process of its own started with
    :data:`MEMORY_ENV` (see :mod:`wgraph.profile`), on CUDA both in one process."""
    if device == "cuda":
        return run_worker(argv, timeout)
    res = run_worker([*argv, "--part", "time"], timeout)
    res.update(run_worker([*argv, "--part", "memory"], timeout, env=MEMORY_ENV))
    return res


def run_isolated(cfg: Config, *, timeout: float = TIMEOUT_S, mem_cap_gb: float = MEM_CAP_GB, layout=None) -> dict:
    """Measure ``cfg`` in its own subprocess; the record is the config plus results and a ``status``.
    ``layout``: the architecture's layout, if the caller has it (converted otherwise)."""
    if layout is None:
        layout = layout_of(cfg.arch, cfg.input_shape)
    rec = {**asdict(cfg), "params_per_net": network_size(layout)}
    rec.update(rec.pop("extra"))
    why = unsupported_reason(cfg, layout)
    if why:
        return {**rec, "status": f"n/a: {why}"}
    est = estimate_gb(cfg, layout)
    rec["estimate_gb"] = round(est, 2)
    if est > mem_cap_gb:
        return {**rec, "status": f"skipped: estimated {est:.1f} GB > {mem_cap_gb:g} GB cap"}
    t = time.perf_counter()
    try:
        res = run_measurement(["-m", "wgraph.profile", "--worker", json.dumps(asdict(cfg))], cfg.device, timeout)
    except subprocess.TimeoutExpired:
        return {**rec, "status": f"skipped: over {timeout:g} s"}
    except WorkerFailed as e:
        return {**rec, "status": f"failed (exit {e.returncode}): {e.last_line}"}
    return {**rec, **res, "status": "ok", "wall_s": round(time.perf_counter() - t, 1)}


def profile(
    configs: list[Config], *, timeout: float = TIMEOUT_S, mem_cap_gb: float = MEM_CAP_GB, progress: bool = True
) -> list[dict]:
    """Measure every configuration, each in its own process; records in order. Each architecture is
    converted once here (for its layout), and once in every measuring process."""
    from tqdm.auto import tqdm

    layouts: dict = {}  # (arch, input_shape) -> layout, for this call
    records = []
    bar = tqdm(configs, desc="profile", unit="config", disable=not progress)
    for cfg in bar:
        bar.set_postfix_str(f"{cfg.method} B={cfg.batch} C={cfg.width}")
        key = (cfg.arch, cfg.input_shape)
        if key not in layouts:
            layouts[key] = layout_of(cfg.arch, cfg.input_shape)
        records.append(run_isolated(cfg, timeout=timeout, mem_cap_gb=mem_cap_gb, layout=layouts[key]))
    return records
