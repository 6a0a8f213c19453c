"""Generalization prediction on the transformer zoo: Transformer-NFN against the graph NFN on raw and
on canonicalized weights, StatNN and gradient-boosted trees (issue 17).

Steps: ``wgraph zoo transformer`` writes the zoo (:data:`ZOO`; reused or resumed if present),
``wgraph zoo canonicalize`` its copy with every attention head in canonical GL form (same
functions), ``wgraph train --task generalization`` runs every (model, seed) one at a time with one
torch thread (the helpers of ``benchmarks/train_zoo.py``: same budget, a finished run is reused),
and scikit-learn's ``HistGradientBoostingRegressor`` is fitted on StatNN's weight statistics with
the same split (by training run, ``split_groups`` seed 0, 10 % val / 10 % test runs). Metric:
Kendall τ of the predicted against the true test accuracy on the test networks, test metric of
the best-validation epoch, mean ± sample std over 3 seeds. NP / HNP do not apply (they need an
MLP or CNN weight space; attention is neither); ``gnn-pna`` is left out: one epoch on this zoo
takes 5x the ``gnn`` preset's (53 s against 9 s on one core). Results: ``benchmarks/results/
train_transformer_zoo.{json,md}`` and the table of ``docs/transformer-nfn.md``.

    nice python benchmarks/train_transformer_zoo.py                # everything (~30 min on one core)
    nice python benchmarks/train_transformer_zoo.py --report-only  # rewrite the markdown and docs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _docs import replace_block
from train_zoo import RESULTS, ROOT, TRAIN, run_one, summarize, wgraph

DOC = ROOT / "docs" / "transformer-nfn.md"
BEGIN, END = "<!-- train_transformer_zoo:begin -->", "<!-- train_transformer_zoo:end -->"
ZOO = ["--runs", "200", "--checkpoints", "4", "--epochs", "20"]
ZOO_TEXT = "200 runs x 4 checkpoints of `row_transformer` (D = 16, 2 heads, 2 blocks, no residuals) on digits"
#: Label -> (preset, zoo): the raw zoo or its canonicalized copy.
MODELS = {
    "transformer-nfn": ("transformer-nfn", "raw"),
    "transformer-nfn, 2 equivariant layers": ("transformer-nfn-deep", "raw"),
    "gnn": ("gnn", "raw"),
    "gnn + canonicalization": ("gnn", "canonical"),
    "statnn": ("statnn", "raw"),
    "statnn + canonicalization": ("statnn", "canonical"),
}
GBT = "gradient-boosted trees (weight statistics)"
GBT_CANONICAL = f"{GBT} + canonicalization"
PAIR = "transformer/generalization"


def gbt_runs(zoo_path: Path, seeds: list[int], label: str = GBT) -> list[dict]:
    """``HistGradientBoostingRegressor`` on :func:`~wgraph.nn.statnn.weight_statistics` (flattened),
    trained on the train runs, scored on the test runs of the split ``wgraph train`` uses."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from wgraph.nn.statnn import weight_statistics
    from wgraph.tasks.data import split_groups
    from wgraph.tasks.metrics import regression_metrics
    from wgraph.zoo import transformer  # noqa: F401  registers the architecture
    from wgraph.zoo.store import load_zoo

    zoo = load_zoo(zoo_path)
    x = weight_statistics(zoo.graphs()).flatten(1).numpy()
    y = np.asarray(zoo.table["test_acc"], dtype=np.float64)
    split = split_groups(zoo.table["run"], 0, 0.1, 0.1)
    runs = []
    for seed in seeds:
        t = time.perf_counter()
        model = HistGradientBoostingRegressor(random_state=seed, early_stopping=False, max_features=0.5)
        model.fit(x[split["train"]], y[split["train"]])
        metrics = {"test": regression_metrics(model.predict(x[split["test"]]), y[split["test"]])}
        runs.append({"pair": PAIR, "model": label, "seed": seed, "metrics": metrics, "selected_step": None,
                     "steps": None, "timings": {"train_s": time.perf_counter() - t}, "model_parameters": 0})
    return runs


def time_zoo(raw: Path, scratch: Path, threads: int) -> float:
    """Seconds to generate the zoo from scratch in ``scratch`` (removed after), whose networks must
    equal those of ``raw`` bit for bit (generation is deterministic at a fixed thread count)."""
    import shutil

    import torch

    from wgraph.zoo import transformer  # noqa: F401  registers the architecture
    from wgraph.zoo.store import load_zoo

    shutil.rmtree(scratch, ignore_errors=True)
    t = time.perf_counter()
    wgraph("zoo", "transformer", str(scratch), *ZOO, "-q", threads=threads)
    seconds = time.perf_counter() - t
    a, b = load_zoo(raw), load_zoo(scratch)
    if a.weights.keys() != b.weights.keys() or not all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights):
        raise RuntimeError(f"{scratch} differs from {raw}: the zoo generation is not reproducible")
    shutil.rmtree(scratch)
    return seconds


def markdown(report: dict) -> str:
    cells = report["table"][PAIR]
    lines = ["| model | Kendall τ | R² | parameters | train time per run |", "|---|---|---|---|---|"]
    best = max(cells, key=lambda m: cells[m]["kendall_tau"]["mean"])
    for m in [*MODELS, GBT, GBT_CANONICAL]:
        c = cells.get(m)
        if c is None:
            continue
        tau = f"{c['kendall_tau']['mean']:.3f} ± {c['kendall_tau']['std']:.3f}"
        lines.append(f"| {m} | {f'**{tau}**' if m == best else tau} | {c['r2']['mean']:.3f} ± {c['r2']['std']:.3f} | "
                     f"{c['params']:,} | {c['train_s_mean']:.0f} s |")
    s = report["settings"]
    acc = s["test_acc"]
    lines += ["", f"Zoo: {ZOO_TEXT} (`wgraph zoo transformer ZOO {' '.join(ZOO)}`, generated in "
              f"{s['zoo_s'] / 60:.1f} min with one torch thread): "
              f"{s['networks']} networks, test accuracy {acc['min']:.2f} .. {acc['max']:.2f} "
              f"(quartiles {acc['q25']:.2f} / {acc['q50']:.2f} / {acc['q75']:.2f}); split by training run "
              f"{s['split']} (train / val / test networks). Every neural model: `wgraph train --task "
              f"generalization --epochs {s['epochs']} {' '.join(TRAIN)}`; seeds {s['seeds']}; test metric of the "
              "best-validation epoch; mean ± sample std over seeds. \"+ canonicalization\": trained on "
              "`wgraph zoo canonicalize ZOO ZOO-canonical`. Gradient-boosted trees: scikit-learn's "
              "`HistGradientBoostingRegressor` (defaults, `max_features=0.5`, the seed as `random_state`) on "
              f"StatNN's statistics of every weight tensor. {s['machine']}; `{s['command']}`; "
              f"training time of all runs {s['train_s_total'] / 60:.0f} min."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "out" / "train_transformer_zoo"), help="zoos and runs (reused)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20, help="training epochs of every neural model")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one run at a time)")
    p.add_argument("--time-zoo", action="store_true", help="time a fresh generation of the zoo (default: only "
                   "when the saved results hold no time)")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown and docs from the saved JSON")
    args = p.parse_args()
    if args.report_only:
        return write(json.loads((RESULTS / "train_transformer_zoo.json").read_text()))
    work = Path(args.work)
    raw, canonical = work / "zoos" / "transformer", work / "zoos" / "transformer-canonical"
    wgraph("zoo", "transformer", str(raw), *ZOO, "-q", threads=args.threads, log=work / "zoo-transformer.log")
    saved = RESULTS / "train_transformer_zoo.json"
    zoo_s = json.loads(saved.read_text())["settings"].get("zoo_s") if saved.exists() and not args.time_zoo else None
    if zoo_s is None:
        zoo_s = time_zoo(raw, work / "zoos" / "transformer-timing", args.threads)
    wgraph("zoo", "canonicalize", str(raw), str(canonical), "-q", threads=args.threads, log=work / "zoo-canonical.log")
    runs, split = [], None
    for seed in args.seeds:
        for label in args.models:
            preset, which = MODELS[label]
            zoo = raw if which == "raw" else canonical
            job = {"task": "generalization", "model": preset, "seed": seed, "zoo": str(zoo), "epochs": args.epochs,
                   "out": str(work / "runs" / f"{preset}-{which}-s{seed}")}
            t = time.perf_counter()
            r = run_one(job, args.threads)
            split = " / ".join(str(r["split"][k]["networks"]) for k in ("train", "val", "test"))
            kept = ("seed", "metrics", "selected_step", "steps", "timings", "model_parameters")
            runs.append({"pair": PAIR, "model": label, **{k: r[k] for k in kept}})
            print(f"{label} s{seed}: tau {r['metrics']['test']['kendall_tau']:.3f} ({time.perf_counter() - t:.0f} s)",
                  flush=True)
    runs += gbt_runs(raw, args.seeds) + gbt_runs(canonical, args.seeds, GBT_CANONICAL)
    from wgraph.zoo.store import load_zoo

    acc = np.asarray(load_zoo(raw).table["test_acc"])
    settings = {
        "models": args.models, "seeds": args.seeds, "epochs": args.epochs, "train": TRAIN, "zoo": ZOO, "zoo_s": zoo_s,
        "networks": len(acc), "split": split, "train_s_total": sum(r["timings"]["train_s"] for r in runs),
        "test_acc": {"min": float(acc.min()), "max": float(acc.max()),
                     **{f"q{q}": float(np.percentile(acc, q)) for q in (25, 50, 75)}},
        "command": " ".join(["nice python benchmarks/train_transformer_zoo.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, 1 run at a time x {args.threads} torch thread(s), shared cores",
    }
    write({"settings": settings, "runs": runs, "table": summarize(runs)})


def write(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_transformer_zoo.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (RESULTS / "train_transformer_zoo.md").write_text(f"# Generalization prediction on the transformer zoo\n\n{md}")
    replace_block(DOC, BEGIN, END, md.rstrip("\n"))
    print(md)


if __name__ == "__main__":
    main()
