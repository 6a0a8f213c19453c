"""Tree-sliced Wasserstein (``wgraph.ot``) against sliced Wasserstein and POT.

1. Gradient flows: 100 points from N(0, I) flow to 25 Gaussians and to a Swiss roll (100 points)
   by Adam (lr 5e-3, 2,500 iterations) on TSW-SL (chain, uniform split), Db-TSW (concurrent,
   distance split), both L = 25 trees of k = 4 lines drawn anew each iteration, and on sliced
   Wasserstein with L = 100 directions (SW_1 and SW_2). Error: W_2^2 = ``ot.emd2`` with the squared
   Euclidean cost, as the papers' code measures it; time per iteration (forward and backward).
2. Runtime of one distance against ``ot.sliced_wasserstein_distance`` and ``ot.emd2`` (its cost
   matrix included) as n, d and the number of lines L * k grow.
3. Network distances on zoos generated here (MLPs 64-32-32-10 and CNNs of ``digits_cnn(8)``
   trained on scikit-learn's digits with several seeds, checkpoints after 30, 100 and 300 Adam
   steps): Spearman correlation of TSW / SW distances with the exact matching cost over all pairs,
   and the MLP width at which exact matching becomes slower than TSW.
4. The sliced-Wasserstein embedding readout (``readout.pool = ["swe"]``) against mean pooling and
   the shipped mean+max on ``digits-cnn/generalization`` of ``benchmarks/train_zoo.py`` (its zoo,
   budget and runs, 3 seeds; Kendall tau of the test split at the best-validation epoch). Every
   variant is the shipped ``gnn`` preset with ``readout.pool`` changed (written as a preset file by
   ``ablate_gnn.model_for``), or the shipped ``gnn-swe`` preset; the shipped ``gnn`` reuses
   train_zoo.py's runs. ``--work`` is train_zoo.py's work folder (zoo and runs are shared).

Everything runs on the CPU with one torch thread (the machine may be shared; the load average is
recorded).

    python benchmarks/bench_ot.py [--parts 1 2 3] [--seeds 3] [--iterations 2500] [--quick]
    nice python benchmarks/bench_ot.py --parts 4 [--work out/train_zoo] [--jobs 1]   # keeps parts 1-3

Parts not run keep their saved results. Writes benchmarks/results/ot.json, ot.md, ot_flows.png,
ot_runtime.png and ot_networks.png, and the results block of docs/ot.md (``--report`` redraws them
from ot.json without measuring).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import ot
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

import wgraph
from wgraph.ot import network_distance, sample_trees, sliced_wasserstein, tree_sliced_wasserstein
from wgraph.zoo import digits_cnn, mlp
from wgraph.zoo.data import digits_split

RESULTS = Path(__file__).parent / "results"


# ----------------------------------------------------------------------------- 1. gradient flows
def gaussians_25(n: int, rng: np.random.Generator) -> np.ndarray:
    centers = np.array(list(itertools.product(range(-2, 3), repeat=2)), dtype=float)
    x = centers[rng.integers(0, 25, n)] + 0.05 * rng.standard_normal((n, 2))
    return x - x.mean(0)


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    x = make_swiss_roll(n, noise=0.2, random_state=int(rng.integers(2**31)))[0][:, [0, 2]] / 7.5
    return x - x.mean(0)


def w2_squared(x: torch.Tensor, y: torch.Tensor) -> float:
    u = np.full(len(x), 1 / len(x))
    return float(ot.emd2(u, np.full(len(y), 1 / len(y)), ot.dist(x.detach().numpy(), y.detach().numpy())))


FLOWS = {
    "TSW-SL (L=25, k=4)": lambda x, y, g: tree_sliced_wasserstein(x, y, n_trees=25, n_lines=4, kind="chain",
                                                                  split="uniform", generator=g),
    "Db-TSW (L=25, k=4)": lambda x, y, g: tree_sliced_wasserstein(x, y, n_trees=25, n_lines=4, generator=g),
    "SW_1 (L=100)": lambda x, y, g: sliced_wasserstein(x, y, n_projections=100, p=1, generator=g),
    "SW_2 (L=100)": lambda x, y, g: sliced_wasserstein(x, y, n_projections=100, p=2, generator=g),
}


def gradient_flows(seeds: int, iterations: int, every: int = 100) -> dict:
    out = {}
    datasets = {"25 Gaussians": gaussians_25, "Swiss roll": swiss_roll}
    runs = list(itertools.product(datasets, FLOWS, range(seeds)))
    for data, method, seed in tqdm(runs, desc="gradient flows"):
        rng = np.random.default_rng(seed)
        target = torch.tensor(datasets[data](100, rng), dtype=torch.float32)
        y = torch.tensor(rng.standard_normal((100, 2)), dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([y], lr=5e-3)
        gen = torch.Generator().manual_seed(1000 + seed)
        errors, steps, seconds = [w2_squared(target, y)], [0], 0.0
        for it in range(1, iterations + 1):
            t = time.perf_counter()
            opt.zero_grad()
            FLOWS[method](target, y, gen).backward()
            opt.step()
            seconds += time.perf_counter() - t
            if it % every == 0 or it == iterations:
                errors.append(w2_squared(target, y))
                steps.append(it)
        row = out.setdefault(data, {}).setdefault(method, {"steps": steps, "w2_squared": [], "ms_per_iteration": []})
        row["w2_squared"].append(errors)
        row["ms_per_iteration"].append(1000 * seconds / iterations)
    return out


# ----------------------------------------------------------------------------- 2. runtime
def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if times[-1] > 2:
            break
    return min(times)


def runtime(quick: bool) -> dict:
    sweeps = {
        "n": [(n, 10, 256) for n in ((100, 1000) if quick else (100, 300, 1000, 3000, 10000))],
        "d": [(1000, d, 256) for d in ((2, 32) if quick else (2, 8, 32, 128, 512))],
        "lines": [(1000, 10, lk) for lk in ((16, 256) if quick else (16, 64, 256, 1024, 4096))],
    }
    rows = []
    cases = [(axis, case) for axis, cases in sweeps.items() for case in cases]
    for axis, (n, d, lk) in tqdm(cases, desc="runtime"):
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen) + 0.5
        xn, yn = x.double().numpy(), y.double().numpy()
        trees = sample_trees(lk // 4, 4, d, generator=gen)
        theta = torch.randn(lk, d, generator=gen)
        theta = theta / theta.norm(dim=-1, keepdim=True)
        row = {"axis": axis, "n": n, "d": d, "lines": lk}
        row["Db-TSW (torch)"] = _best(lambda: tree_sliced_wasserstein(x, y, n_trees=lk // 4, n_lines=4, generator=gen))
        row["TSW, fixed trees (torch)"] = _best(lambda: tree_sliced_wasserstein(x, y, trees=trees))
        row["SW (torch)"] = _best(lambda: sliced_wasserstein(x, y, directions=theta))
        row["SW (POT)"] = _best(lambda: ot.sliced_wasserstein_distance(xn, yn, n_projections=lk, p=1, seed=0))
        if n <= 3000:
            u = np.full(n, 1 / n)
            row["exact (POT emd2)"] = _best(lambda: ot.emd2(u, u, ot.dist(xn, yn, metric="euclidean")), repeat=1)
        rows.append(row)
    return {"rows": rows}


# ----------------------------------------------------------------------------- 3. network distances
def _train(arch: str, seed: int, checkpoints: tuple[int, ...]) -> tuple[list, torch.nn.Module, torch.Tensor]:
    x, y, _, _ = digits_split(0)
    torch.manual_seed(seed)
    if arch == "mlp":
        model, x = mlp((64, 32, 32, 10)), x.flatten(1)
    else:
        model = digits_cnn(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = []
    for step in range(1, max(checkpoints) + 1):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if step in checkpoints:
            out.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    example = x[:1]
    return out, model, example


NET_METHODS = {
    "exact": dict(method="exact"),
    "Db-TSW (L=64, k=4)": dict(method="tsw"),
    "Db-TSW (L=16, k=4)": dict(method="tsw", n_trees=16),
    "TSW-SL (L=64, k=4)": dict(method="tsw", kind="chain", split="uniform"),
    "SW (256 directions)": dict(method="sw", n_projections=256),
}


def network_ranking(seeds: int, checkpoints: tuple[int, ...]) -> dict:
    out = {}
    for arch in ("mlp", "cnn"):
        sds, run = [], []
        for seed in tqdm(range(seeds), desc=f"training {arch} zoo"):
            states, model, example = _train(arch, seed, checkpoints)
            sds += states
            run += [seed] * len(states)
        g = wgraph.to_graph_batch(sds, model, example)
        pairs = list(itertools.combinations(range(len(sds)), 2))
        dist = {m: [] for m in NET_METHODS}
        seconds = {m: 0.0 for m in NET_METHODS}
        for i, j in tqdm(pairs, desc=f"{arch} pairs"):
            for m, kw in NET_METHODS.items():
                t = time.perf_counter()
                dist[m].append(float(network_distance(g, g, index1=i, index2=j, **kw)))
                seconds[m] += time.perf_counter() - t
        across = np.array([run[i] != run[j] for i, j in pairs])
        exact = np.array(dist["exact"])
        rows = {}
        for m in NET_METHODS:
            d = np.array(dist[m])
            rows[m] = {
                "spearman_all": float(spearmanr(d, exact).statistic),
                "spearman_across_runs": float(spearmanr(d[across], exact[across]).statistic),
                "ms_per_pair": 1000 * seconds[m] / len(pairs),
            }
        out[arch] = {"networks": len(sds), "pairs": len(pairs), "params": g.layout.num_params,
                     "methods": rows, "distances": dist, "across_runs": across.tolist()}
    return out


def width_crossover(widths: tuple[int, ...]) -> dict:
    rows = []
    for w in tqdm(widths, desc="widths"):
        torch.manual_seed(w)
        model = mlp((64, w, w, 10))
        sds = [mlp((64, w, w, 10)).state_dict() for _ in range(2)]
        g = wgraph.to_graph_batch(sds, model, torch.randn(1, 64))
        row = {"width": w}
        for m in ("exact", "Db-TSW (L=64, k=4)", "SW (256 directions)"):
            row[m] = _best(lambda: network_distance(g, g, index1=0, index2=1, **NET_METHODS[m]))
        rows.append(row)
    slower = [r["width"] for r in rows if r["exact"] > r["Db-TSW (L=64, k=4)"]]
    return {"rows": rows, "exact_slower_from_width": min(slower) if slower else None}


# ----------------------------------------------------------------------------- report
# ----------------------------------------------------------------------------- 4. readout on a zoo task
#: Part 4's variants: name -> readout keys changed from the shipped ``gnn`` preset, or a preset name.
READOUTS = {
    "mean": {"pool": ["mean"]},
    "mean+max (shipped gnn)": "gnn",
    "swe": {"pool": ["swe"]},
    "mean+swe (gnn-swe)": "gnn-swe",
    "mean+max+swe": {"pool": ["mean", "max", "swe"]},
    "swe, 32 references": {"pool": ["swe"], "swe_references": 32},
}
READOUT_PAIR = "digits-cnn/generalization"


def readout_task(work: Path, seeds: list[int], jobs: int, threads: int, names: list[str]) -> dict:
    """Train each readout variant of :data:`READOUTS` on :data:`READOUT_PAIR` with train_zoo.py's
    budget (its ``run_one``: a finished run of the same settings is reused)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).parent))
    import ablate_gnn
    from train_zoo import PAIRS, PRIMARY, TRAIN, make_zoo, run_one, zoo_dir

    spec, t = PAIRS[READOUT_PAIR], time.perf_counter()
    make_zoo(READOUT_PAIR, spec, work, threads)
    jobs_ = []
    for name in names:
        keys = READOUTS[name]
        if isinstance(keys, str):
            model = stem = keys
        else:  # a variant preset of gnn, written and named as ablate_gnn.py writes its own
            ablate_gnn.VARIANTS.setdefault(f"ot: {name}", (keys, 0))
            model, stem = ablate_gnn.model_for(f"ot: {name}", work)
        runs = work / "runs" / READOUT_PAIR.replace("/", "-")
        jobs_ += [{"name": name, "task": spec["task"], "model": model, "seed": s, "epochs": spec["epochs"],
                   "zoo": str(zoo_dir(work, READOUT_PAIR)), "out": str(runs / f"{stem}-s{s}")} for s in seeds]
    metric, cells = PRIMARY[spec["task"]], {}
    with ThreadPoolExecutor(jobs) as pool:
        for job, r in tqdm(zip(jobs_, pool.map(lambda j: run_one(j, threads), jobs_)), total=len(jobs_), desc="part 4"):
            c = cells.setdefault(job["name"], {"model": job["model"], "seeds": [], "test": [], "val": [],
                                                "train_s": [], "params": r["model_parameters"]})
            c["seeds"].append(job["seed"])
            c["test"].append(r["metrics"]["test"][metric])
            c["val"].append(r["metrics"]["val"][metric])
            c["train_s"].append(r["timings"]["train_s"])
    return {"pair": READOUT_PAIR, "metric": metric, "epochs": spec["epochs"], "zoo": spec["text"], "train": TRAIN,
            "cells": cells, "wall_s": time.perf_counter() - t, "load_after": os.getloadavg()[0],
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
            "command": "nice python benchmarks/bench_ot.py " + " ".join(sys.argv[1:])}


def _plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "flows" in res:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, (data, methods) in zip(axes, res["flows"].items()):
            for m, r in methods.items():
                e = np.log10(np.maximum(np.array(r["w2_squared"]), 1e-30))
                ax.plot(r["steps"], e.mean(0), label=m)
                ax.fill_between(r["steps"], e.mean(0) - e.std(0), e.mean(0) + e.std(0), alpha=0.2)
            ax.set(title=data, xlabel="iteration", ylabel="log10 W2^2 (ot.emd2)")
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "ot_flows.png", dpi=110)
    if "runtime" in res:
        rows = res["runtime"]["rows"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        labels = {"n": "points n (d = 10, L k = 256)", "d": "dimension d (n = 1000, L k = 256)",
                  "lines": "lines L k (n = 1000, d = 10)"}
        for ax, axis in zip(axes, ("n", "d", "lines")):
            sub = [r for r in rows if r["axis"] == axis]
            for m in ("Db-TSW (torch)", "TSW, fixed trees (torch)", "SW (torch)", "SW (POT)", "exact (POT emd2)"):
                pts = [(r[axis], r[m]) for r in sub if m in r]
                if pts:
                    ax.loglog(*zip(*pts), marker="o", label=m)
            ax.set(xlabel=labels[axis], ylabel="seconds")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "ot_runtime.png", dpi=110)
    if "networks" in res:
        nets = res["networks"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, arch in zip(axes, ("mlp", "cnn")):
            r = nets["ranking"][arch]
            exact = np.array(r["distances"]["exact"])
            for m in ("Db-TSW (L=64, k=4)", "SW (256 directions)"):
                rho = r["methods"][m]["spearman_all"]
                ax.scatter(exact, r["distances"][m], s=6, label=f"{m}: Spearman {rho:.3f}")
            ax.set(title=f"{arch} zoo: {r['networks']} networks", xlabel="exact matching cost", ylabel="distance")
            ax.legend(fontsize=8)
        rows = nets["widths"]["rows"]
        for m in ("exact", "Db-TSW (L=64, k=4)", "SW (256 directions)"):
            axes[2].loglog([r["width"] for r in rows], [r[m] for r in rows], marker="o", label=m)
        axes[2].set(title="MLP 64-w-w-10: one network distance", xlabel="width w", ylabel="seconds")
        axes[2].grid(True, which="both", alpha=0.3)
        axes[2].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "ot_networks.png", dpi=110)


def _markdown(res: dict) -> str:
    lines = ["# wgraph.ot benchmark", "", f"Parts 1 to 3: {res['machine']}; torch threads 1; load average "
             f"{res['load_before']:.1f} before, {res['load_after']:.1f} after; {res['seconds']:.0f} s in all.", ""]
    if "flows" in res:
        lines += ["## 1. Gradient flows (100 points, Adam lr 5e-3)", "",
                  f"W2^2 (`ot.emd2`, squared Euclidean cost) after 500 iterations and at the last (mean, ± std over "
                  f"{res['seeds']} seeds); milliseconds per iteration (forward and backward).", "",
                  "| data | method | W2^2 at 500 | W2^2 at the end | ms / iteration |", "|---|---|---|---|---|"]
        for data, methods in res["flows"].items():
            for m, r in methods.items():
                e = np.array(r["w2_squared"])
                mid = r["steps"].index(500) if 500 in r["steps"] else len(r["steps"]) // 2
                lines.append(f"| {data} | {m} | {e[:, mid].mean():.3g} | {e[:, -1].mean():.3g} ± {e[:, -1].std():.2g} "
                             f"| {np.mean(r['ms_per_iteration']):.2f} |")
        lines.append("")
    if "runtime" in res:
        methods = ("Db-TSW (torch)", "TSW, fixed trees (torch)", "SW (torch)", "SW (POT)", "exact (POT emd2)")
        lines += ["## 2. Runtime of one distance (seconds, best of 3)", "",
                  "| n | d | L k | " + " | ".join(methods) + " |", "|---" * (3 + len(methods)) + "|"]
        for r in res["runtime"]["rows"]:
            cells = [f"{r[m]:.3g}" if m in r else "-" for m in methods]
            lines.append(f"| {r['n']} | {r['d']} | {r['lines']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "networks" in res:
        nets = res["networks"]
        lines += ["## 3. Network distances against exact matching", "",
                  "| zoo | method | Spearman, all pairs | Spearman, pairs of different runs | ms / pair |",
                  "|---|---|---|---|---|"]
        for arch, r in nets["ranking"].items():
            for m, v in r["methods"].items():
                lines.append(f"| {arch} ({r['networks']} nets, {r['params']} params) | {m} | "
                             f"{v['spearman_all']:.3f} | {v['spearman_across_runs']:.3f} | {v['ms_per_pair']:.1f} |")
        lines += ["", "One distance between two MLPs 64-w-w-10 (seconds, best of 3):", "",
                  "| width | exact | Db-TSW (L=64, k=4) | SW (256 directions) |", "|---|---|---|---|"]
        for r in nets["widths"]["rows"]:
            lines.append(f"| {r['width']} | {r['exact']:.3g} | {r['Db-TSW (L=64, k=4)']:.3g} "
                         f"| {r['SW (256 directions)']:.3g} |")
        cross = nets["widths"]["exact_slower_from_width"]
        lines += ["", f"Exact matching is slower than Db-TSW from width {cross}.", ""]
    if "readout" in res:
        r = res["readout"]
        lines += [f"## 4. The sliced-Wasserstein embedding readout on {r['pair']}", "",
                  "| readout.pool (graph NFN, norm center) | test Kendall τ | val Kendall τ | parameters | "
                  "train s / run |", "|---|---|---|---|---|"]
        for name, c in r["cells"].items():
            test, val = np.array(c["test"]), np.array(c["val"])
            lines.append(f"| {name} | {test.mean():.3f} ± {test.std(ddof=1):.3f} | {val.mean():.3f} ± "
                         f"{val.std(ddof=1):.3f} | {c['params']:,} | {np.mean(c['train_s']):.0f} |")
        seeds = sorted({s for c in r["cells"].values() for s in c["seeds"]})
        lines += ["", f"{r['zoo']}; split by training run; {r['epochs']} epochs, `wgraph train ... "
                  f"{' '.join(r['train'])}` for every variant (the budget of `benchmarks/train_zoo.py`); test metric "
                  f"of the best-validation epoch, mean ± sample std over seeds {seeds}; swe with 16 slices and "
                  f"8 references (the defaults) unless named. Command: `{r['command']}` ({r['machine']}, "
                  f"{r['wall_s'] / 60:.0f} min for the runs not saved before).", ""]
    return "\n".join(lines)


def _docs(res: dict) -> None:
    """The results block of docs/ot.md: the plots and the tables (section titles one level down)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _docs import replace_block

    tables = _markdown(res).split("\n")[2:]  # without the title
    body = [f"{tables[0]}", "", "![gradient flows](../benchmarks/results/ot_flows.png)",
            "![runtime](../benchmarks/results/ot_runtime.png)",
            "![network distances](../benchmarks/results/ot_networks.png)"]
    body += [("#" + line) if line.startswith("## ") else line for line in tables[1:]]
    docs = Path(__file__).resolve().parent.parent / "docs" / "ot.md"
    if not replace_block(docs, "<!-- results -->", "<!-- /results -->", "\n".join(body).strip()):
        print(f"{docs}: no results markers, not updated")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the gradient flows (default 3)")
    ap.add_argument("--iterations", type=int, default=2500, help="gradient-flow iterations (default 2500)")
    ap.add_argument("--zoo-seeds", type=int, default=8, help="training runs per zoo (default 8)")
    ap.add_argument("--quick", action="store_true", help="toy sizes (a smoke test)")
    ap.add_argument("--report", action="store_true", help="only redraw the tables, plots and docs from ot.json")
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent.parent / "out" / "train_zoo"),
                    help="part 4: train_zoo.py's work folder (zoo and runs)")
    ap.add_argument("--readouts", nargs="+", choices=list(READOUTS), default=list(READOUTS), help="part 4 variants")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2], help="part 4 training seeds")
    ap.add_argument("--jobs", type=int, default=1, help="part 4: training runs at a time (one torch thread each)")
    args = ap.parse_args()
    if args.report:
        res = json.loads((RESULTS / "ot.json").read_text())
        (RESULTS / "ot.md").write_text(_markdown(res))
        _plot(res)
        _docs(res)
        return
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    saved = RESULTS / "ot.json"
    res = json.loads(saved.read_text()) if saved.exists() and not args.quick else {}  # parts not run are kept
    if {1, 2, 3} & set(args.parts) or not res:
        res.update({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                    "torch": torch.__version__, "pot": ot.__version__, "seeds": args.seeds})
    if args.quick:
        args.iterations, args.seeds, args.zoo_seeds = 100, 1, 3
        res["seeds"] = 1
    if 1 in args.parts:
        res["flows"] = gradient_flows(args.seeds, args.iterations)
    if 2 in args.parts:
        res["runtime"] = runtime(args.quick)
    if 3 in args.parts:
        widths = (16, 64) if args.quick else (16, 32, 64, 128, 256, 512, 1024)
        res["networks"] = {"ranking": network_ranking(args.zoo_seeds, (30, 100, 300)),
                           "widths": width_crossover(widths)}
    if {1, 2, 3} & set(args.parts) or "seconds" not in res:
        res["seconds"], res["load_before"] = time.perf_counter() - t0, load_before
        res["load_after"] = os.getloadavg()[0]
    if 4 in args.parts and not args.quick:
        res["readout"] = readout_task(Path(args.work).resolve(), args.train_seeds, args.jobs, 1, args.readouts)
    name = "ot_quick" if args.quick else "ot"
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1))
    (RESULTS / f"{name}.md").write_text(_markdown(res))
    if not args.quick:
        _plot(res)
        _docs(res)
    print(_markdown(res))


if __name__ == "__main__":
    main()
