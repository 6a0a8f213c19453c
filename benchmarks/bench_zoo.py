"""Wall time of zoo generation with the ``wgraph zoo`` command.

Runs, each in a process of its own, into a fresh temporary directory:

    wgraph zoo cnn DIR --runs 250 --checkpoints 4 --epochs 20 --threads T -q   (1,000 CNNs)
    wgraph zoo inr DIR --images all --threads T -q                              (1,797 INRs)

and reports seconds and networks/s, with the machine's load average before and after (the
machine may be shared; the numbers are as measured).

    python benchmarks/bench_zoo.py [--threads 1 [2 ...]] [--runs 250] [--kinds cnn inr] [--inr-threads 1 2] [--append]

Writes benchmarks/results/zoo_generation.json and zoo_generation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def _measure(kind: str, extra: list[str], threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "zoo"
        argv = ["wgraph", "zoo", kind, str(out), *extra, "--threads", str(threads), "-q"]
        load_before = os.getloadavg()[0]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wgraph", *argv[1:]], check=True, cwd=ROOT)
        seconds = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        load_after = os.getloadavg()[0]
        manifest = json.loads((out / "manifest.json").read_text())
        networks = sum(s["count"] for s in manifest["shards"])
    row = {
        "command": " ".join(argv).replace(str(out), "DIR"), "kind": kind, "threads": threads,
        "seconds": seconds, "cpu_seconds": cpu, "networks": networks, "networks_per_s": networks / seconds,
        "load_before": load_before, "load_after": load_after,
    }
    rate = row["networks_per_s"]
    print(f"{row['command']}: {networks} networks in {seconds:.1f} s, {cpu:.1f} CPU s ({rate:.2f}/s)", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--runs", type=int, default=250)
    ap.add_argument("--kinds", nargs="+", choices=["cnn", "inr"], default=["cnn", "inr"])
    inr_help = "threads of the INR runs (default: the first of --threads)"
    ap.add_argument("--inr-threads", type=int, nargs="+", help=inr_help)
    ap.add_argument("--append", action="store_true", help="keep the rows already in the results file")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    jobs = []
    if "cnn" in args.kinds:
        jobs += [("cnn", ["--runs", str(args.runs), "--checkpoints", "4", "--epochs", "20"], t) for t in args.threads]
    if "inr" in args.kinds:
        jobs += [("inr", ["--images", "all"], t) for t in args.inr_threads or args.threads[:1]]
    old = args.out / "zoo_generation.json"
    rows = json.loads(old.read_text())["rows"] if args.append and old.exists() else []
    for job in jobs:
        rows.append(_measure(*job))
        _write(rows, args.out)  # after every row: a cut-off run keeps what it measured


def _write(rows: list[dict], out: Path) -> None:
    machine = {"cpu": platform.machine(), "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}
    info = {**machine, "torch": torch.__version__, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo_generation.json").write_text(json.dumps(info, indent=1) + "\n")
    lines = [
        "# bench_zoo: generating model zoos with `wgraph zoo`",
        "",
        f"CPU ({info['cpu']}, {info['affinity']} of {info['cores']} cores usable), torch {info['torch']}; one run per "
        "row, wall time of the whole command (start-up, data, training, writing and verifying the shards). CPU time "
        "is the user + system time of the command; the load average (1 minute, before / after) shows whether the "
        "machine was shared with other jobs.",
        "",
        "| command | networks | wall time | CPU time | networks/s (wall) | load before / after |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = f"{r['load_before']:.1f} / {r['load_after']:.1f}"
        lines.append(
            f"| `{r['command']}` | {r['networks']} | {r['seconds']:.0f} s | {r['cpu_seconds']:.0f} s "
            f"| {r['networks_per_s']:.2f} | {load} |"
        )
    lines += ["", "Reproduce: `python benchmarks/bench_zoo.py` (defaults: `--threads 1 --runs 250`)."]
    (out / "zoo_generation.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'zoo_generation.md'}", flush=True)


if __name__ == "__main__":
    main()
