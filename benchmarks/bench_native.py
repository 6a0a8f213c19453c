"""What building the fused backend's native kernels costs, and what they gain over the eager tiles.

On CPU the ``fused`` backend builds ``wgraph/kernels/native.c`` with the machine's C compiler the
first time a process needs it, into a cache directory (``wgraph.kernels.native``). This script
runs, each in a fresh process with 1 torch thread, a 2-layer graph NFN of width 32 (forward,
backward) on a batch of networks for each ``ARCH@BATCH``:

* ``cold``: an empty cache directory (a new machine, or a new version of ``native.c``): the first
  step includes the build;
* ``warm``: the same directory again (every later process on the machine);
* ``eager``: ``WGRAPH_NATIVE=0``, the eager tiles,

and records the first step and the best of the next three steps.

    python benchmarks/bench_native.py [--archs "mlp:784,256,256,10@4;torchvision:resnet18@2"]

Writes ``benchmarks/results/native_build.json`` and ``.md``, and the table between the
``native-build`` markers of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import replace_block  # noqa: E402  (benchmarks/_docs.py, beside this script)

WORKER = """
import json, sys, time, torch
torch.set_num_threads(1)
from wgraph.nn import GraphNFN
from wgraph.profile import random_batch
graph = random_batch(sys.argv[1], int(sys.argv[2]))
model = GraphNFN(graph.layout, hidden=32, layers=2, backend="fused")
times = []
for _ in range(4):
    t = time.perf_counter()
    model(graph).square().sum().backward()
    times.append(time.perf_counter() - t)
print(json.dumps({"first_s": times[0], "step_s": min(times[1:])}))
"""


def run(spec: str, mode: str, cache: str) -> dict:
    arch, batch = spec.rsplit("@", 1)
    env = dict(os.environ, WGRAPH_CACHE_DIR=cache, WGRAPH_NATIVE="0" if mode == "eager" else "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", WORKER, arch, batch]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return {"arch": arch, "batch": int(batch), "mode": mode, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--archs",
        default="mlp:784,256,256,10@4;cnn:16@64;torchvision:resnet18@2",
        help="semicolon-separated ARCH@BATCH (architecture spec and batch size)",
    )
    args = ap.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as cache:
        for arch in args.archs.split(";"):
            for mode in ("cold", "warm", "eager"):
                records.append(run(arch, mode, os.path.join(cache, arch.replace(":", "_"))))
                print(records[-1], flush=True)
    import torch

    meta = {
        "command": "python benchmarks/bench_native.py " + " ".join(sys.argv[1:]),
        "device": f"cpu ({platform.machine()}, {os.cpu_count()} CPUs)",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "native_build.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    lines = [
        "# Building the fused backend's native kernels",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; torch {meta['torch']}; 1 torch thread; {meta['date']}.",
        "",
        "2-layer graph NFN of width 32, forward + backward; each row a fresh process.",
        "",
        "| architecture | batch | kernels | first step | later steps (best of 3) |",
        "|---|---|---|---|---|",
    ]
    label = {
        "cold": "native, built in the first step (empty cache)",
        "warm": "native, cached",
        "eager": "eager tiles (`WGRAPH_NATIVE=0`)",
    }
    for r in records:
        times = f"{r['first_s']:.3g} s | {r['step_s']:.3g} s"
        lines.append(f"| {r['arch']} | {r['batch']} | {label[r['mode']]} | {times} |")
    (RESULTS / "native_build.md").write_text("\n".join(lines) + "\n")
    replace_block(DOC, "<!-- native-build:start -->", "<!-- native-build:end -->", "\n".join(lines[2:]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
