"""Ablation of the graph NFN's readout on the digits zoos: what each setting of the shipped ``gnn``
preset does, 3 seeds, with the budget and runs of ``benchmarks/train_zoo.py``.

Every variant is the shipped ``models/gnn.toml`` with the keys named in :data:`VARIANTS` changed
(written as a preset file into the work folder and passed to ``wgraph train --model``); variants
that equal a model of ``train_zoo.py`` (``gnn``, ``gnn+probes16``) reuse its runs. Results land in
``benchmarks/results/ablate_gnn.{json,md}`` and the ablation table of ``docs/results.md``.

    nice python benchmarks/ablate_gnn.py                     # both digits pairs, 3 seeds
    nice python benchmarks/ablate_gnn.py --pairs digits-cnn/generalization --variants none+probes16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _docs import replace_block
from tqdm.auto import tqdm
from train_zoo import DOC, PAIRS, PRIMARY, RESULTS, ROOT, TRAIN, make_zoo, run_one, zoo_dir

from wgraph.nn.presets import load_preset

BEGIN, END = "<!-- ablate_gnn:begin -->", "<!-- ablate_gnn:end -->"
#: name -> (readout keys changed from the shipped preset, probes). "center" and "center+probes16"
#: are the shipped preset itself (models ``gnn`` and ``gnn+probes16`` of train_zoo.py).
VARIANTS = {
    "mean, none": ({"pool": ["mean"], "norm": "none"}, 0),
    "mean+max, none": ({"norm": "none"}, 0),
    "mean+max, batch": ({"norm": "batch"}, 0),
    "mean+max, zoo": ({"norm": "zoo"}, 0),
    "mean+max, center (shipped)": ({}, 0),
    "mean+max, none, probes 16": ({"norm": "none"}, 16),
    "mean+max, center, probes 16 (shipped + --probes 16)": ({}, 16),
    "mean+max, none, per layer": ({"norm": "none", "per_layer": True}, 0),
    "mean+max, none, per layer, probes 16": ({"norm": "none", "per_layer": True}, 16),
}
PAIRS_DEFAULT = ["digits-cnn/generalization", "digits-inr/inr-classify"]


def to_toml(preset: dict) -> str:
    """A preset (scalars, lists and one level of tables) as TOML; JSON spells these values as TOML does."""
    top = [f"{k} = {json.dumps(v)}" for k, v in preset.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())
              for k, v in preset.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "".join(tables) + "\n"


def model_for(name: str, work: Path) -> tuple[str, str]:
    """(the ``--model`` argument with its ``+probesK`` suffix, the run folder stem) of a variant."""
    keys, probes = VARIANTS[name]
    suffix = f"+probes{probes}" if probes else ""
    if not keys:  # the shipped preset: the runs of train_zoo.py
        return "gnn" + suffix, "gnn" + suffix
    preset = load_preset("gnn")
    preset["readout"] = {**preset["readout"], **keys}
    stem = "ablate-" + "-".join(f"{k}_{'_'.join(v) if isinstance(v, list) else v}" for k, v in keys.items())
    path = work / "presets" / f"{stem}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(preset))
    return str(path) + suffix, stem + suffix


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "out" / "train_zoo"), help="zoos and runs (shared with train_zoo.py)")
    p.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=PAIRS_DEFAULT)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = p.parse_args()
    work = Path(args.work)
    saved = RESULTS / "ablate_gnn.json"
    report = json.loads(saved.read_text()) if saved.exists() else {"pairs": {}, "cells": {}}
    for pair in args.pairs:
        spec = PAIRS[pair]
        make_zoo(pair, spec, work, args.threads * args.jobs)
        jobs = []
        for name in args.variants:
            model, stem = model_for(name, work)
            jobs += [{"pair": pair, "task": spec["task"], "model": model, "seed": s, "variant": name,
                      "zoo": str(zoo_dir(work, pair)), "epochs": spec["epochs"],
                      "out": str(work / "runs" / pair.replace("/", "-") / f"{stem}-s{s}")} for s in args.seeds]
        t = time.perf_counter()
        metric = PRIMARY[spec["task"]]
        cells: dict = {}
        with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(jobs), desc=pair, unit="run") as bar:
            for job, r in zip(jobs, pool.map(lambda j: run_one(j, args.threads), jobs)):
                c = cells.setdefault(job["variant"], {"test": [], "val": [], "seeds": []})
                c["test"].append(r["metrics"]["test"][metric])
                c["val"].append(r["metrics"]["val"][metric])
                c["seeds"].append(job["seed"])
                bar.update(1)
        for c in cells.values():
            for k in ("test", "val"):
                v = np.array(c[k])
                sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
                c[k] = {"mean": float(v.mean()), "std": sd, "values": v.tolist()}
        report["cells"][pair] = {**report["cells"].get(pair, {}), **cells}
        report["pairs"][pair] = {"metric": metric, "epochs": spec["epochs"], "wall_s": time.perf_counter() - t,
                                 "command": " ".join(["nice python benchmarks/ablate_gnn.py", *sys.argv[1:]]),
                                 "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)"}
    report["train"] = TRAIN
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (RESULTS / "ablate_gnn.md").write_text("# Ablation of the graph NFN's readout\n\n" + md)
    replace_block(DOC, BEGIN, END, md.rstrip("\n"))
    print(md)


def markdown(report: dict) -> str:
    pairs = list(report["cells"])
    lines = ["| readout of `gnn` | " + " | ".join(f"{p} ({report['pairs'][p]['metric']})" for p in pairs) + " |",
             "|---" * (len(pairs) + 1) + "|"]
    for name in VARIANTS:
        row = []
        for p in pairs:
            c = report["cells"][p].get(name)
            if c is None:
                row.append("—")
                continue
            n = len(c["seeds"])
            spread = f" ± {c['test']['std']:.3f}" if n > 1 else ""
            seeds = "" if n == 3 else f"; {n} seed{'s' if n > 1 else ''}"
            row.append(f"{c['test']['mean']:.3f}{spread} (val {c['val']['mean']:.3f}{seeds})")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    eps = ", ".join(f"{p}: {report['pairs'][p]['epochs']} epochs" for p in pairs)
    lines += ["", f"Test metric of the best-validation epoch, mean ± std over seeds (validation mean in brackets); "
              f"{eps}; every run `wgraph train ... {' '.join(TRAIN)}`. "
              f"Command: `{'`, `'.join(sorted({report['pairs'][p]['command'] for p in pairs}))}`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
