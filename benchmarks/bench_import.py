"""Wall time of importing a Small-CNN-Zoo-format file of 30,000 networks.

Writes a synthetic zoo in the published layout into a temporary directory (not timed): weights.npy
(30,000 rows of 4,970 float32: three 3x3 convolutions of 16 channels on 1-channel images, a dense
layer to 10 classes, TensorFlow shapes), layout.csv and metrics.csv.gz with the published columns
(config.*, modeldir, step, test/train accuracy and loss; 9 checkpoints per run). Then runs, in a
process of its own:

    import_zoo("small-cnn-zoo", SRC, OUT, progress=False)

and reports seconds (start-up, reading, writing and verifying the shards, loading the zoo), CPU
time, peak memory, and the load average before and after (the machine may be shared).

    python benchmarks/bench_import.py [--networks 30000]

Writes benchmarks/results/import.json and import.md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
STEPS = (0, 1, 2, 3, 20, 40, 60, 80, 86)
LAYOUT = [("sequential/conv2d/kernel:0", (3, 3, 1, 16)), ("sequential/conv2d/bias:0", (16,)),
          ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)), ("sequential/conv2d_1/bias:0", (16,)),
          ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)), ("sequential/conv2d_2/bias:0", (16,)),
          ("sequential/dense/kernel:0", (16, 10)), ("sequential/dense/bias:0", (10,))]
DRIVER = """
import sys
from wgraph.zoo import import_zoo
report = import_zoo("small-cnn-zoo", sys.argv[1], sys.argv[2], progress=False)
print(report.imported, report.networks)
"""


def write_source(root: Path, n: int, seed: int = 0) -> None:
    """The synthetic zoo: weights.npy written in chunks (memory stays small), layout, metrics."""
    width = sum(int(np.prod(s)) for _, s in LAYOUT)
    rng = np.random.default_rng(seed)
    rows = np.lib.format.open_memmap(root / "weights.npy", mode="w+", dtype=np.float32, shape=(n, width))
    for a in range(0, n, 5000):
        b = min(a + 5000, n)
        rows[a:b] = rng.normal(0, 0.2, (b - a, width)).astype(np.float32)
    rows.flush()
    del rows
    with open(root / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        start = 0
        for name, shape in LAYOUT:
            size = int(np.prod(shape))
            w.writerow([name, start, start + size, str(shape)])
            start += size
    cols = ["config.activation", "config.b_init", "config.dataset", "config.dnn_architecture", "config.dropout",
            "config.epochs", "config.epochs_between_checkpoints", "config.init_std", "config.l2reg",
            "config.learning_rate", "config.num_layers", "config.num_units", "config.optimizer", "config.random_seed",
            "config.train_fraction", "config.w_init", "modeldir", "step", "test_accuracy", "test_loss",
            "train_accuracy", "train_loss"]
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(n):
            run = i // len(STEPS)
            r = np.random.default_rng([seed, run])
            w.writerow([["relu", "tanh"][run % 2], "zeros", "mnist", "cnn", round(float(r.uniform(0, 0.7)), 3), 86, 20,
                        round(float(r.uniform(0.01, 0.5)), 4), float(r.choice([1e-8, 1e-6, 1e-4])),
                        float(r.choice([5e-4, 5e-3, 5e-2])), 3, 16, ["adam", "sgd", "rmsprop"][run % 3], 42,
                        [0.1, 0.25, 0.5, 1.0][run % 4], ["he_normal", "glorot_uniform"][run % 2],
                        f"runs/{run:06d}", STEPS[i % len(STEPS)], round(float(r.uniform(0.1, 0.99)), 4),
                        round(float(r.uniform(0.05, 2.3)), 4), round(float(r.uniform(0.1, 0.99)), 4),
                        round(float(r.uniform(0.05, 2.3)), 4)])


def measure(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "mnist", Path(tmp) / "zoo"
        src.mkdir()
        write_source(src, n)
        source_mb = sum(p.stat().st_size for p in src.iterdir()) / 2**20
        load_before = os.getloadavg()[0]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", DRIVER, str(src), str(out)], check=True, cwd=ROOT,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        imported, networks = map(int, done.stdout.split())
        zoo_mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
        shards = len(json.loads((out / "manifest.json").read_text())["shards"])
    return {
        "networks": networks, "imported": imported, "seconds": seconds,
        "cpu_seconds": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "peak_rss_mb": cpu1.ru_maxrss / 1024, "networks_per_s": networks / seconds, "source_mb": source_mb,
        "zoo_mb": zoo_mb, "shards": shards, "load_before": load_before, "load_after": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--networks", type=int, default=30000)
    args = ap.parse_args()
    row = measure(args.networks)
    print(f"{row['imported']} of {row['networks']} networks in {row['seconds']:.1f} s "
          f"({row['networks_per_s']:.0f}/s, {row['cpu_seconds']:.1f} CPU s, peak {row['peak_rss_mb']:.0f} MB)")
    machine = f"CPU ({platform.machine()}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores usable)"
    env = {"machine": machine, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "import.json").write_text(json.dumps({"env": env, "rows": [row]}, indent=1) + "\n")
    verdict = "under" if row["seconds"] < 60 else "over"  # the target is for 30,000 networks
    md = [
        "# bench_import: importing the Small CNN Zoo format",
        "",
        f"{machine}, torch {torch.__version__}; one run, wall time of a fresh process running "
        '`import_zoo("small-cnn-zoo", SRC, OUT, progress=False)` (start-up, reading `weights.npy` memory-mapped, '
        "mapping the TensorFlow variables to torch, writing and fsyncing the shards and manifest, loading the "
        "zoo with every shard's sha256 checked). The source is synthetic, in the published layout: "
        "3x3 convolutions of 16 channels, 4,970 float32 per network, 9 checkpoints per run.",
        "",
        "| networks | source | zoo | shards | wall time | CPU time | peak memory | networks/s | load before / after |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {row['networks']:,} | {row['source_mb']:.0f} MB | {row['zoo_mb']:.0f} MB | {row['shards']} "
        f"| {row['seconds']:.1f} s | {row['cpu_seconds']:.1f} s | {row['peak_rss_mb']:.0f} MB "
        f"| {row['networks_per_s']:,.0f} | {row['load_before']:.1f} / {row['load_after']:.1f} |",
        "",
        f"The target, 30,000 networks in under a minute: {verdict} ({row['seconds']:.1f} s).",
        "",
        "Reproduce: `python benchmarks/bench_import.py` (`--networks N` for another size).",
    ]
    (RESULTS / "import.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
