"""Winning-ticket masks (``wgraph train --task ticket-mask``): the graph NFN's per-parameter scores
against NP, HNP and a flat MLP, on a ticket zoo, next to the model-free masks (the IMP ticket
itself, the largest initial magnitudes, a random mask).

The zoo: ``wgraph zoo ticket`` with 1,000 digits MLPs 64-32-32-10 (their own initialization each,
gain log-uniform in [0.5, 2]), tickets from 5 rounds of magnitude pruning with rewinding to 10 % of
every weight matrix, every training 20 epochs of Adam (lr 3e-3, batch 64), generated under
``--work`` (default ``out/ticket``). Every (model, learning rate, seed) is one ``wgraph train`` run
with train_zoo.py's settings (batch 32, AdamW, 5 % warm-up then cosine, gradient norm clipped to 1)
and the same epochs for every model; one torch thread per run. The learning rate is chosen per
model from the same grid (``--lrs``, default 1e-3, 3e-3, 1e-2) by the validation accuracy of seed 0
(at lr 1e-3 NP barely moves from the base-rate loss in 20 epochs), and seeds 1 and 2 run at the
chosen rate. Split by run 800 / 100 / 100 (``--split-seed 0``). The metric: test accuracy of the test networks retrained
from their initialization with the predicted mask (the per-layer counts of the ticket), at the
best-validation epoch (validation networks retrained the same way); mean ± sample std over seeds.

Writes ``benchmarks/results/ticket_mask.{json,md}`` and the table of ``docs/ticket-mask.md``.

    OMP_NUM_THREADS=1 nice python benchmarks/train_ticket_mask.py
    python benchmarks/train_ticket_mask.py --quick          # a smoke run (results named *_quick)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from _docs import publish
from train_zoo import ROOT, TRAIN_CONFIG, summarize, train_run, wgraph

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "ticket-mask.md"
BEGIN, END = "<!-- ticket_mask:begin -->", "<!-- ticket_mask:end -->"
MODELS = ["gnn", "np", "hnp", "magep", "mlp"]
ZOO = ["--runs", "1000"]
#: train_zoo.py's settings but the learning rate, which is chosen per model (``--lrs``).
SETTINGS = {k: v for k, v in TRAIN_CONFIG.items() if k != "lr"}
TRAIN = [a for k, v in SETTINGS.items() for a in (f"--{k.replace('_', '-')}", str(v))]
REFERENCES = {"ticket_accuracy": "IMP ticket (the label)", "magnitude_accuracy": "largest initial magnitudes",
              "random_accuracy": "random mask"}


def run_one(model: str, seed: int, lr: float, epochs: int, zoo: Path, work: Path, threads: int) -> dict | None:
    """One ``wgraph train --task ticket-mask`` run in ``work/runs`` (a finished one with the same
    settings is reused, an interrupted one resumes); ``None`` when the model diverged (the trainer
    stops on a non-finite loss; its log says so)."""
    out = work / "runs" / f"{model}-lr{lr:g}-s{seed}"
    want = {**SETTINGS, "lr": lr, "epochs": epochs, "zoo": str(zoo), "model": model, "seed": seed}
    argv = ["train", "--task", "ticket-mask", "--model", model, "--zoo", str(zoo), "--out", str(out),
            "--seed", str(seed), "--epochs", str(epochs), *TRAIN, "--lr", str(lr), "--resume", "--no-progress"]
    try:
        return train_run(out, want, argv, threads)
    except RuntimeError:
        log = out.with_suffix(".log")
        if log.exists() and "the training loss is" in log.read_text():
            return None
        raise


def markdown(report: dict) -> str:
    s, table = report["settings"], report["table"]["ticket"]
    lines = ["| mask | parameters | lr (validation accuracy of seed 0 per lr) | test accuracy after retraining "
             "| overlap with the ticket | train time per run (s) |", "|---|---|---|---|---|---|"]
    for m in s["models"]:
        grid = report["lr_grid"][m]
        tried = ", ".join(f"{lr}: {'diverged' if acc is None else f'{acc:.3f}'}" for lr, acc in grid.items())
        if m not in table:
            lines.append(f"| {m} | – | – ({tried}) | – | – | – |")
            continue
        c = table[m]
        lines.append(f"| {m} | {c['params']:,} | **{report['lr'][m]:g}** ({tried}) | "
                     f"{c['accuracy']['mean']:.4f} ± {c['accuracy']['std']:.4f} | "
                     f"{c['overlap']['mean']:.3f} ± {c['overlap']['std']:.3f} | {c['train_s_mean']:.0f} |")
    ref = next(iter(table.values()))
    for key, text in REFERENCES.items():
        overlap = {"ticket_accuracy": "1", "magnitude_accuracy": f"{ref['magnitude_overlap']['mean']:.3f}",
                   "random_accuracy": f"{report['keep']:g} (expected)"}[key]
        lines.append(f"| {text} | 0 | – | {ref[key]['mean']:.4f} | {overlap} | – |")
    lines += ["", f"Zoo: `wgraph zoo ticket ZOO {' '.join(report['zoo'])}` ({report['pairs']} digits MLPs 64-32-32-10, "
              f"tickets keep {report['keep']:g} of every weight matrix; mean test accuracy of the dense networks "
              f"{report['dense_acc']:.3f}). Split by run {report['split']} (train / val / test). Every run: `wgraph "
              f"train --task ticket-mask --epochs {s['epochs']} {' '.join(TRAIN)}` with `--lr` chosen per model "
              f"from {s['lrs']} on seed 0's validation accuracy; seeds {s['seeds']}; test metric "
              "of the best-validation epoch (highest validation accuracy after retraining); mean ± sample std "
              "over seeds. The reference masks are the same for every seed (same test networks, same "
              f"retraining). Command: `{report['command']}`; {report['machine']}; the runs took "
              f"{report['runs_s'] / 60:.0f} min in all (learning-rate grid included; finished runs are reused "
              "when the command is repeated)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "out" / "ticket"), help="zoo and runs (reused if present)")
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20, help="epochs of every run")
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2],
                   help="learning rates tried on seed 0; the best validation accuracy's is used for every seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--quick", action="store_true", help="40 short IMP runs, 2 epochs, 1 seed; results named *_quick")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown and the docs table from the JSON")
    args = p.parse_args()
    if args.report_only:
        md = markdown(json.loads((RESULTS / "ticket_mask.json").read_text()))
        publish(RESULTS / "ticket_mask.md", "Winning-ticket masks", md, DOC, BEGIN, END)
        return print(md)
    zoo_args, name = ZOO, "ticket_mask"
    if args.quick:
        zoo_args = ["--runs", "40", "--epochs", "4", "--rounds", "2", "--shard-size", "20"]
        args.seeds, args.epochs, args.work, name = [0], 2, args.work + "_quick", "ticket_mask_quick"
        args.lrs = args.lrs[:1]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    zoo = work / "zoo"
    wgraph("zoo", "ticket", str(zoo), *zoo_args, "-q", threads=args.threads, log=work / "zoo.log")
    runs, grid, chosen, took = [], {}, {}, {}  # took: seconds of every run, by (model, lr, seed)
    for model in args.models:
        first = {lr: run_one(model, args.seeds[0], lr, args.epochs, zoo, work, args.threads) for lr in args.lrs}
        grid[model] = {f"{lr:g}": r and r["metrics"]["val"]["accuracy"] for lr, r in first.items()}
        took.update({(model, lr, args.seeds[0]): r["timings"]["total_s"] for lr, r in first.items() if r})
        usable = [lr for lr in args.lrs if first[lr] is not None]
        print(f"{model}: validation accuracy by lr {grid[model]}", flush=True)
        if not usable:
            continue
        chosen[model] = max(usable, key=lambda lr: (first[lr]["metrics"]["val"]["accuracy"], -lr))
        for seed in args.seeds:
            r = run_one(model, seed, chosen[model], args.epochs, zoo, work, args.threads)
            if r is None:
                raise RuntimeError(f"{model} diverged with seed {seed} at the lr chosen on seed 0 ({chosen[model]:g})")
            took[model, chosen[model], seed] = r["timings"]["total_s"]
            split = " / ".join(str(r["split"][k]["networks"]) for k in ("train", "val", "test"))
            kept = ("seed", "metrics", "selected_step", "steps", "timings", "model_parameters")
            runs.append({"pair": "ticket", "model": model, **{k: r[k] for k in kept}})
            t = r["metrics"]["test"]
            print(f"{model} seed {seed}: test accuracy {t['accuracy']:.4f} (ticket {t['ticket_accuracy']:.4f}, "
                  f"magnitude {t['magnitude_accuracy']:.4f}, random {t['random_accuracy']:.4f}), "
                  f"{r['timings']['train_s']:.0f} s", flush=True)
    from wgraph.zoo import load_zoo

    z = load_zoo(zoo)
    init = z.table["role"] == "init"
    report = {
        "settings": {"models": args.models, "seeds": args.seeds, "epochs": args.epochs, "train": TRAIN,
                     "lrs": args.lrs},
        "lr_grid": grid, "lr": chosen,
        "zoo": zoo_args, "pairs": int(init.sum()), "keep": z.config["keep"],
        "dense_acc": float(z.table["dense_acc"][init].mean()), "split": split,
        "command": " ".join(["OMP_NUM_THREADS=1 nice python benchmarks/train_ticket_mask.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), 1 run at a time x {args.threads} thread(s)",
        "runs_s": sum(took.values()), "runs": runs, "table": summarize(runs),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    publish(RESULTS / f"{name}.md", f"Winning-ticket masks{' (quick)' if args.quick else ''}", md,
            None if args.quick else DOC, BEGIN, END)
    print(md)


if __name__ == "__main__":
    main()
