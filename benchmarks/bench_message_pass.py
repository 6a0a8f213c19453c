"""Graph-NFN message passing against the parameter-sharing NP layer: every backend, one run.

Three measurements, all through :mod:`wgraph.profile` (each configuration in its own subprocess; its
docstring documents how peak memory is taken: resident-set high-water mark reset after the inputs
are built on CPU, ``max_memory_allocated`` on CUDA):

* **layer**: one ``width -> width`` layer, forward + backward, for the graph NFN under each
  message-passing backend (``reference``, ``pyg``, ``scatter``, ``fused``; ``triton`` on CUDA) beside
  wgraph's ``NPLinear`` and ``nfn``'s ``NPLinear``, on the cases of the fused message-passing issue:

    a: batch 8 of 784-256-256-10 MLPs, width 32
    b: batch 64 of Small-CNN-Zoo CNNs (wgraph.zoo.small_cnn, 16 channels, 28x28 inputs), width 64
    c: batch 512 of 2-32-32-1 SIRENs, width 64

* **pna**: the same layer with PNA aggregators (mean, max, std: the ``gnn-pna`` preset's), ``reference``
  against ``fused`` (which computes them in one tile-by-tile sweep), on the same cases.

* **model** (the headline): one training step (forward, MSE, backward, Adam) of a 4-layer graph NFN
  of width 64 (preset ``gnn``; edge inputs are the raw weights, re-lifted inside the kernel at every
  layer) against a 4-layer NP stack of width 64 (preset ``np``), on case a.

    nice python benchmarks/bench_message_pass.py [--quick] [--device cpu|cuda] [--threads 1]
        [--parts layer,pna,model] [--timeout 600] [--from-json RESULTS.json]

Writes ``benchmarks/results/message_pass[_cuda|_t<N>][_quick][_<parts>].json`` and ``.md`` (``_t<N>``: a
CPU run with ``--threads N`` other than 1; ``_<parts>``: a run of some parts only); a full run of every
part also writes ``docs/img/performance[...].png`` and the
tables between the markers of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _docs import replace_block  # noqa: E402  (benchmarks/_docs.py, beside this script)

from wgraph.profile import Config, profile  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"

# name: (description, arch spec, batch, width)
CASES = {
    "a": ("8 x MLP 784-256-256-10, width 32", "mlp:784,256,256,10", 8, 32),
    "b": ("64 x Small-CNN-Zoo CNN, width 64", "cnn:16", 64, 64),
    "c": ("512 x SIREN 2-32-32-1, width 64", "siren:2,32,32,1", 512, 64),
}
HEADLINE = ("a", 64, 4)  # case, width, layers
QUICK = {
    "a": ("4 x MLP 64-32-32-10, width 8", "mlp:64,32,32,10", 4, 8),
    "b": ("8 x Small-CNN-Zoo CNN (8 channels), width 8", "cnn:8", 8, 8),
    "c": ("64 x SIREN 2-32-32-1, width 16", "siren:2,32,32,1", 64, 16),
}
QUICK_HEADLINE = ("a", 16, 2)

#: What a run measures (``--parts``); only a run of all of them updates the docs.
PARTS = ("layer", "pna", "model")

#: The aggregators of the ``pna`` part (those of the ``gnn-pna`` preset).
PNA = ("mean", "max", "std")

TARGETS = {  # the targets, as ratios of one run
    "layer": "the fused backend (`gnn-fused` on CPU, `gnn-triton` on CUDA) at most 1.0x the NP layer's memory and "
    "time; at least 3x less memory and 2x less time than `gnn-reference` and `gnn-pyg`",
    "model": "graph NFN at most 0.25x the NP stack's peak memory and 0.5x its time",
}


def methods(device: str) -> list[str]:
    gnn = ["reference", "pyg", "scatter", "fused"] + (["triton"] if device == "cuda" else [])
    return [f"gnn-{b}" for b in gnn] + ["np", "nfn-np"]


#: The node part of a layer: the same GNN layer with message passing replaced by a stand-in that
#: does no per-edge work (this script registers it as a backend in its own worker processes).
NODES = "gnn-nodes"


def _nodes_backend(send, recv, edge, edge_weight, *, kind, reverse, aggr, act, groups=1):
    """Stand-in messages: node-sized, differentiable in both ends, no per-edge work."""
    import torch

    m = recv + send.mean(1, keepdim=True)
    return torch.cat([m] * len(aggr), dim=-1) if len(aggr) > 1 else m


def nodes_record(cfg: Config, timeout: float) -> dict:
    """:data:`NODES` measured like :func:`wgraph.profile.run_isolated` (time and memory processes)."""
    from wgraph.profile import WorkerFailed, run_measurement

    rec = {**{k: v for k, v in cfg.__dict__.items() if k != "extra"}, **cfg.extra}
    try:
        worker = [__file__, "--nodes-worker", json.dumps({**cfg.__dict__, "extra": {}})]
        res = run_measurement(worker, cfg.device, timeout)
    except WorkerFailed as e:
        return {**rec, "status": f"failed (exit {e.returncode}): {e.last_line}"}
    return {**rec, **res, "status": "ok"}


def configs(args) -> list[Config]:
    cases = QUICK if args.quick else CASES
    out = []
    if "layer" in args.parts:
        for name, (desc, arch, batch, width) in cases.items():
            kw = dict(device=args.device, threads=args.threads)
            for m in [NODES, *methods(args.device)]:
                out.append(Config(arch, batch, width, m, **kw, extra={"case": name, "desc": desc, "part": "layer"}))
    if "pna" in args.parts:
        for name, (desc, arch, batch, width) in cases.items():
            kw = dict(device=args.device, threads=args.threads, aggr=PNA)
            for m in ("gnn-reference", "gnn-fused"):
                out.append(Config(arch, batch, width, m, **kw, extra={"case": name, "desc": desc, "part": "pna"}))
    if "model" in args.parts:
        name, width, layers = QUICK_HEADLINE if args.quick else HEADLINE
        desc, arch, batch, _ = cases[name]
        gnn = "gnn-triton" if args.device == "cuda" else "gnn-fused"
        desc = f"{desc.split(',')[0]}, {layers} layers of width {width}"
        kw = dict(scope="model", layers=layers, device=args.device, threads=args.threads)
        for m in (gnn, "np"):
            out.append(Config(arch, batch, width, m, **kw, extra={"case": name, "desc": desc, "part": "model"}))
    return out


def ratio_rows(records: list[dict], part: str, base: str = "np") -> list[str]:
    """Markdown rows: each method's time and step memory, and both as ratios of method ``base``'s
    (the NP layer / stack, or the reference backend) in the same case."""
    rows = []
    ok = [r for r in records if r["part"] == part]
    for case in dict.fromkeys(r["case"] for r in ok):
        group = [r for r in ok if r["case"] == case]
        b = next((r for r in group if r["method"] == base and r["status"] == "ok"), None)
        for r in group:
            if r["status"] != "ok":
                rows.append(f"| {case}: {r['desc']} | {r['method']} | {r['status']} | | | | |")
                continue
            tr = f"{r['time_s'] / b['time_s']:.2f}x" if b else "-"
            mr = f"{r['step_mb'] / b['step_mb']:.2f}x" if b and b["step_mb"] > 0 else "-"
            rows.append(
                f"| {case}: {r['desc']} | {r['method']} | {r['time_s']:.3g} s | {r['step_mb']:.0f} MB | "
                f"{r['total_mb']:.0f} MB | {tr} | {mr} |"
            )
    return rows


def verdicts(records: list[dict]) -> list[str]:
    """The issue's targets, checked on the records of this run."""
    out = []
    by = {(r["part"], r["case"], r["method"]): r for r in records if r["status"] == "ok"}
    fused = "gnn-triton" if any(r["method"] == "gnn-triton" for r in records) else "gnn-fused"
    for case in dict.fromkeys(r["case"] for r in records if r["part"] == "layer"):
        f, n = by.get(("layer", case, fused)), by.get(("layer", case, "np"))
        if not (f and n):
            continue
        checks = [f"memory {f['step_mb'] / n['step_mb']:.2f}x NP", f"time {f['time_s'] / n['time_s']:.2f}x NP"]
        ok = f["step_mb"] <= n["step_mb"] and f["time_s"] <= n["time_s"]
        for other in ("gnn-reference", "gnn-pyg"):
            o = by.get(("layer", case, other))
            if o:
                mem, t = o["step_mb"] / max(f["step_mb"], 1e-9), o["time_s"] / f["time_s"]
                checks.append(f"{mem:.1f}x less memory and {t:.1f}x less time than {other[4:]}")
                ok &= mem >= 3 and t >= 2
        out.append(f"* layer, case {case}: `{fused}` {'meets' if ok else 'misses'} the target: {'; '.join(checks)}.")
        x, ref = by.get(("layer", case, NODES)), by.get(("layer", case, "gnn-reference"))
        if x and ref:
            share_t, share_m = x["time_s"] / ref["time_s"], x["step_mb"] / ref["step_mb"]

            def edge_ratio(key):  # reference's edge part over the fused backend's (each minus the node part)
                theirs, ours = ref[key] - x[key], f[key] - x[key]
                return f"{theirs / ours:.1f}x" if ours > 0 else "n/a (the fused edge part is within noise of zero)"

            out.append(
                f"  The node part (`{NODES}`) takes {share_t:.0%} of `reference`'s time and {share_m:.0%} of its "
                f"memory; the edge part alone (each backend minus the node part) is {edge_ratio('time_s')} faster and "
                f"{edge_ratio('step_mb')} leaner with `{fused}` than with `reference`."
            )
    for case in dict.fromkeys(r["case"] for r in records if r["part"] == "pna"):
        f, ref = by.get(("pna", case, "gnn-fused")), by.get(("pna", case, "gnn-reference"))
        if f and ref:
            mem = f["step_mb"] / max(ref["step_mb"], 1e-9)
            out.append(
                f"* PNA layer ({', '.join(PNA)}), case {case}: `gnn-fused` needs {mem:.2f}x "
                f"the memory and {f['time_s'] / ref['time_s']:.2f}x the time of `gnn-reference` (no target)."
            )
    model = [r for r in records if r["part"] == "model" and r["status"] == "ok"]
    g = next((r for r in model if r["method"].startswith("gnn-")), None)
    n = next((r for r in model if r["method"] == "np"), None)
    if g and n:
        mem, t = g["step_mb"] / n["step_mb"], g["time_s"] / n["time_s"]
        verdict = "meets" if mem <= 0.25 and t <= 0.5 else "misses"
        out.append(
            f"* model (headline), case {g['case']}: the graph NFN ({g['method']}) {verdict} the target: "
            f"peak memory {mem:.2f}x and time {t:.2f}x of the NP stack "
            f"({g['step_mb']:.0f} MB vs {n['step_mb']:.0f} MB, {g['time_s']:.3g} s vs {n['time_s']:.3g} s)."
        )
    return out


def plot(records: list[dict], path: Path) -> None:
    """Grouped bars per case: step memory and time of every method, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = [r for r in records if r["part"] == "layer" and r["status"] == "ok" and r["method"] != NODES]
    model = [r for r in records if r["part"] == "model" and r["status"] == "ok"]
    groups = [(f"case {c}", [r for r in layer if r["case"] == c]) for c in dict.fromkeys(r["case"] for r in layer)]
    if model:
        groups.append(("whole model\n(case a, 1 train step)", model))
    names = list(dict.fromkeys(r["method"] for _, g in groups for r in g))
    colors = {m: plt.cm.tab10(i) for i, m in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in zip(axes, ("step_mb", "time_s"), ("peak memory of the step (MB)", "time per step (s)")):
        for gi, (_, g) in enumerate(groups):
            present = [m for m in names if any(r["method"] == m for r in g)]
            for j, m in enumerate(present):
                r = next(r for r in g if r["method"] == m)
                x = gi - 0.4 + (j + 0.5) * 0.8 / len(present)
                first = gi == 0 or m not in [q["method"] for q in groups[0][1]]  # one legend entry per method
                bar = dict(width=0.8 / len(present) * 0.9, color=colors[m], label=m if first else None)
                ax.bar(x, max(r[key], 1e-3), **bar)
        ax.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[1].legend(handles, labels, fontsize=8)
    dev = records[0].get("device_name", "cpu") if records else "cpu"
    fig.suptitle(f"Graph NFN backends vs NP layers, forward + backward ({dev}); lower is better", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def variant(args) -> str:
    """What tells this run's results apart: ``cuda``, ``cpu``, or ``cpu-t<N>`` for N CPU threads other than 1."""
    if args.device == "cuda":
        return "cuda"
    return "cpu" if args.threads == 1 else f"cpu-t{args.threads}"


def write(records: list[dict], args, meta: dict) -> None:
    name = variant(args)
    suffix = ("" if name == "cpu" else "_" + name.replace("cpu-", "")) + ("_quick" if args.quick else "")
    if set(args.parts) != set(PARTS):  # a partial run writes beside the full results, never over them
        suffix += "_" + "-".join(args.parts)
    stem = f"message_pass{suffix}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    head = [
        "| case | method | time / step | step memory | total memory | time vs NP | memory vs NP |",
        "|---|---|---|---|---|---|---|",
    ]
    body = [
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; torch {meta['torch']}; {meta['threads']} torch thread(s); {meta['date']}.",
        "",
        "One layer, forward + backward (targets: " + TARGETS["layer"] + "):",
        "",
        *head,
        *ratio_rows(records, "layer"),
        "",
        f"One layer with PNA aggregators ({', '.join(PNA)}; no target in the issue), forward + backward: "
        "`fused` computes them in one tile-by-tile sweep without the per-edge messages:",
        "",
        "| case | method | time / step | step memory | total memory | time vs reference | memory vs reference |",
        "|---|---|---|---|---|---|---|",
        *ratio_rows(records, "pna", base="gnn-reference"),
        "",
        "Whole model, one training step (target: " + TARGETS["model"] + "):",
        "",
        *head,
        *ratio_rows(records, "model"),
        "",
        "Against the targets:",
        "",
        *verdicts(records),
    ]
    method_note = [
        "",
        "Step memory: what one step adds to the process's peak (CPU: a process of its own, started with",
        "`MALLOC_MMAP_THRESHOLD_=65536`, resident-set high-water mark reset after the inputs are built and a warm-up",
        "step; CUDA: `max_memory_allocated` above the memory allocated before the steps). Total memory adds the",
        "inputs. Time: the best of at least 3 steps (up to 50 while they take under a second in all) after a warm-up",
        "step, with the default malloc settings. A layer's backward starts from fixed random gradients of its",
        "outputs. Each row ran in its own processes; see `wgraph/profile/` (its package docstring). `gnn-nodes`:",
        "the same layer with message passing replaced by a stand-in without per-edge work (the node-sized part every",
        "backend shares).",
    ]
    (RESULTS / f"{stem}.md").write_text(
        "\n".join([f"# Message passing vs NP{' (--quick)' if args.quick else ''}", "", *body, *method_note]) + "\n"
    )
    if args.quick or set(args.parts) != set(PARTS):
        return
    img = ROOT / "docs" / "img" / f"performance{suffix}.png"
    plot(records, img)
    start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
    replace_block(DOC, start, end, "\n".join([*body, "", f"![{name} results](img/{img.name})"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated, of: " + ", ".join(PARTS))
    ap.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    ap.add_argument("--mem-cap-gb", type=float, default=16.0)
    ap.add_argument("--from-json", help="rewrite the tables, plot and docs from a results JSON of an earlier run")
    ap.add_argument("--nodes-worker", help=argparse.SUPPRESS)  # one measurement of NODES (internal)
    ap.add_argument("--part", default="both", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nodes_worker:
        from wgraph.kernels import register_backend
        from wgraph.profile import measure

        register_backend(NODES.removeprefix("gnn-"), _nodes_backend)
        cfg = json.loads(args.nodes_worker)
        cfg["input_shape"] = tuple(cfg["input_shape"]) if cfg.get("input_shape") else None
        print(json.dumps(measure(Config(**cfg), args.part)))
        return
    args.parts = args.parts.split(",")
    if set(args.parts) - set(PARTS):
        ap.error(f"--parts: unknown {sorted(set(args.parts) - set(PARTS))}; choose from {', '.join(PARTS)}")
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        write(saved["records"], args, saved["meta"])
        print("\n".join(verdicts(saved["records"])))
        return
    import torch

    todo = configs(args)
    measured = profile([c for c in todo if c.method != NODES], timeout=args.timeout, mem_cap_gb=args.mem_cap_gb)
    nodes = {c.extra["case"]: nodes_record(c, args.timeout) for c in todo if c.method == NODES}
    records = []
    for r in measured:  # each case's node part first among its layer rows
        if r["part"] == "layer" and r["case"] in nodes:
            records.append(nodes.pop(r["case"]))
        records.append(r)
    for r in records:
        print(json.dumps({k: r.get(k) for k in ("case", "part", "method", "time_s", "step_mb", "status")}))
    dev = records[0].get("device_name") if records and "device_name" in records[0] else args.device
    meta = {
        "command": "python benchmarks/bench_message_pass.py " + " ".join(sys.argv[1:]),
        "device": f"{dev} ({platform.machine()}, {__import__('os').cpu_count()} CPUs)",
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    write(records, args, meta)
    print("\n".join(verdicts(records)))


if __name__ == "__main__":
    main()
