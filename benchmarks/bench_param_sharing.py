"""wgraph's NP / HNP layers against nfn's: forward+backward time and peak memory, one run.

Each measurement (case x implementation x layer) runs in its own subprocess, so allocations of one
cannot hide in another's peak. A measurement is one ``width -> width`` channel layer applied to a
random weight-space input of ``width`` channels (requires grad), then ``backward`` of a scalar
loss; time is the best of up to 3 repetitions (1 if the first takes > 10 s); memory is the
subprocess's peak resident set size (``ru_maxrss``) above its resident size after imports, so it
includes the layer's parameters, the input, activations and gradients.

Cases (the fused message-passing issue's):
  a: batch 8 of 784-256-256-10 MLPs, width 32
  b: batch 64 of Small-CNN-Zoo CNNs (wgraph.zoo.small_cnn), width 64
  c: batch 512 of 2-32-32-1 SIRENs, width 64
  a8: case a's networks with HNP at width 8 (HNP's first layer has (784 x width)^2 parameters)

A measurement whose estimated peak exceeds ``--mem-cap-gb`` is not started and is recorded as
skipped with the estimate; one that runs past ``--timeout`` seconds is killed and recorded as such.

    python benchmarks/bench_param_sharing.py [--quick] [--cases a,b,c,a8] [--timeout 120] [--mem-cap-gb 10]

Writes benchmarks/results/param_sharing.json and param_sharing.md (``--quick``: *_quick.*).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path

from _worker import WorkerFailed, run_worker  # benchmarks/_worker.py, beside this script

RESULTS = Path(__file__).parent / "results"

# name: (description, architecture, batch, width, layers)
CASES = {
    "a": ("8 x MLP 784-256-256-10, width 32", ("mlp", (784, 256, 256, 10)), 8, 32, ("np", "hnp")),
    "b": ("64 x Small-CNN-Zoo CNN, width 64", ("cnn", 16), 64, 64, ("np", "hnp")),
    "c": ("512 x SIREN 2-32-32-1, width 64", ("mlp", (2, 32, 32, 1)), 512, 64, ("np", "hnp")),
    "a8": ("8 x MLP 784-256-256-10, width 8", ("mlp", (784, 256, 256, 10)), 8, 8, ("hnp",)),
}
QUICK = {
    "a": ("4 x MLP 64-32-32-10, width 8", ("mlp", (64, 32, 32, 10)), 4, 8, ("np", "hnp")),
    "b": ("8 x Small-CNN-Zoo CNN (8 channels), width 8", ("cnn", 8), 8, 8, ("np", "hnp")),
    "c": ("64 x SIREN 2-32-32-1, width 16", ("mlp", (2, 32, 32, 1)), 64, 16, ("np", "hnp")),
    "a8": ("4 x MLP 64-32-32-10, width 4", ("mlp", (64, 32, 32, 10)), 4, 4, ("hnp",)),
}


def _layout(arch):
    import torch

    import wgraph
    from wgraph.zoo import mlp, small_cnn

    kind, arg = arch
    if kind == "mlp":
        # the activation does not change the weight space; tanh stands in for a SIREN's sin
        return wgraph.to_graph(mlp(arg, torch.nn.Tanh), torch.randn(1, arg[0])).layout
    return wgraph.to_graph(small_cnn(channels=arg), torch.randn(1, 1, 28, 28)).layout


def _num_params(lay, layer: str, width: int) -> int:
    """Parameters of wgraph's layer (``width -> width``), built on the meta device (no memory).
    nfn's layer has the same matrices (plus a few bias vectors)."""
    import torch

    from wgraph.nn.np_layers import HNPLinear, NPLinear

    with torch.device("meta"):
        m = (NPLinear if layer == "np" else HNPLinear)(lay, width, width)
    return sum(p.numel() for p in m.parameters())


def estimate_gb(case: dict, layer: str) -> float:
    """Rough peak: parameters and their gradients (x2, x3 for nfn's concatenations) plus 6 copies of the input."""
    from wgraph.nn.weight_space import ChainSpec

    lay = _layout(case["arch"])
    spec = ChainSpec.from_layout(lay)
    B, C = case["batch"], case["width"]
    n_in = sum(math.prod(spec.weight_shape(i)) + spec.sizes[i + 1] for i in range(spec.num_layers))
    acts = 6 * B * C * n_in
    params = _num_params(lay, layer, C)
    factor = 3 if case["impl"] == "nfn" else 2
    return (factor * params + acts) * 4 / 1e9


# ------------------------------------------------------------------ worker
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def worker(spec_json: str) -> None:
    import resource

    import torch

    case = json.loads(spec_json)
    from wgraph.interop import nfn as wnfn
    from wgraph.nn.np_layers import HNPLinear, NPLinear
    from wgraph.nn.weight_space import ChainSpec, WeightSpace

    base = _rss_mb()
    torch.manual_seed(0)
    lay = _layout(case["arch"])
    spec = ChainSpec.from_layout(lay)
    B, C = case["batch"], case["width"]
    ws = [torch.randn(B, C, *spec.weight_shape(i), requires_grad=True) for i in range(spec.num_layers)]
    bs = [torch.randn(B, C, n, requires_grad=True) for n in spec.sizes[1:]]
    if case["impl"] == "nfn":
        import nfn.layers as L

        cls = L.NPLinear if case["layer"] == "np" else L.HNPLinear
        layer = cls(wnfn.network_spec(lay), C, C)
        x = wnfn.to_wsfeat(WeightSpace(ws, bs, spec))
    else:
        cls = NPLinear if case["layer"] == "np" else HNPLinear
        layer = cls(lay, C, C)
        x = WeightSpace(ws, bs, spec)
    n_params = sum(p.numel() for p in layer.parameters())
    times = []
    for rep in range(3):
        t = time.perf_counter()
        out = layer(x)
        loss = sum(w.square().mean() for w in out.weights) + sum(b.square().mean() for b in out.biases)
        loss.backward()
        times.append(time.perf_counter() - t)
        del out, loss
        for p in [*ws, *bs, *layer.parameters()]:
            p.grad = None  # each repetition starts from the same state
        if times[0] > 10:
            break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"time_s": min(times), "peak_mb": peak - base, "params": n_params, "reps": len(times)}))


# ------------------------------------------------------------------ driver
def run_one(case: dict, timeout: float, cap_gb: float) -> dict:
    est = estimate_gb(case, case["layer"])
    rec = {**case, "estimate_gb": round(est, 2), "params": _num_params(_layout(case["arch"]), case["layer"], case["width"])}
    if est > cap_gb:
        return {**rec, "status": f"skipped: estimated {est:.1f} GB > {cap_gb:g} GB cap"}
    t = time.perf_counter()
    try:
        res = run_worker(__file__, ["--worker", json.dumps(case)], timeout)
    except subprocess.TimeoutExpired:
        return {**rec, "status": f"skipped: >{timeout:g}s"}
    except WorkerFailed as e:
        return {**rec, "status": f"failed (exit {e.returncode}): {e.last_line}"}
    return {**rec, **res, "status": "ok", "wall_s": round(time.perf_counter() - t, 1)}


def _fmt(r: dict, key: str) -> str:
    if r.get("status") != "ok":
        return r.get("status", "") if key == "time_s" else "-"
    return f"{r['time_s']:.3g} s" if key == "time_s" else f"{r['peak_mb']:.0f} MB"


def write(records: list[dict], quick: bool, meta: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    stem = "param_sharing_quick" if quick else "param_sharing"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    lines = [
        f"# bench_param_sharing{' (--quick)' if quick else ''}: NP / HNP layers, wgraph vs nfn",
        "",
        f"{meta['machine']}, torch {meta['torch']}, nfn {meta['nfn']}. One `width -> width` layer, forward + "
        "backward; time: best of up to 3 runs; memory: peak RSS of the measurement's own subprocess above "
        "its RSS after imports (parameters, input, activations and gradients).",
        "",
        "| case | layer | parameters | wgraph time | nfn time | wgraph peak | nfn peak | speed-up | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["name"], r["layer"], r["impl"]): r for r in records}
    for name, layer in dict.fromkeys((r["name"], r["layer"]) for r in records):
        w, n = by.get((name, layer, "wgraph"), {}), by.get((name, layer, "nfn"), {})
        ok = w.get("status") == "ok" and n.get("status") == "ok"
        sp = f"{n['time_s'] / w['time_s']:.2f}x" if ok else "-"
        mr = f"{w['peak_mb'] / max(n['peak_mb'], 1e-9):.2f}" if ok else "-"
        params = w.get("params", n.get("params", 0))
        lines.append(
            f"| {name}: {w.get('desc', n.get('desc'))} | {layer.upper()} | {params:,} | {_fmt(w, 'time_s')} | "
            f"{_fmt(n, 'time_s')} | {_fmt(w, 'peak_mb')} | {_fmt(n, 'peak_mb')} | {sp} | {mr} |"
        )
    lines += [
        "",
        "Speed-up: nfn time / wgraph time. Memory ratio: wgraph peak / nfn peak (below 1: wgraph is leaner).",
        "SIREN weight spaces are built from a tanh MLP of the same shape (the activation does not change them).",
        "The machine's 2 cores were shared with other jobs: repeated runs vary by about 30% in time.",
        "HNP's first layer mixes all `n_0 x width` entries of a row of W_0, so it has about "
        "`2 (n_0 width)^2` parameters (1.3 billion for case a): that cost is in the HNP equations, not in "
        "either implementation; case a8 measures HNP on case a's networks at width 8.",
        "",
        f"Reproduce: `python benchmarks/bench_param_sharing.py{' --quick' if quick else ''}`",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--cases", default="a,b,c,a8")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per measurement")
    ap.add_argument("--mem-cap-gb", type=float, default=10.0, help="skip measurements estimated above this")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    import nfn
    import torch

    table = QUICK if args.quick else CASES
    records = []
    for name in args.cases.split(","):
        desc, arch, batch, width, layers = table[name]
        for layer in layers:
            for impl in ("wgraph", "nfn"):
                case = {"name": name, "desc": desc, "arch": arch, "batch": batch, "width": width, "layer": layer, "impl": impl}
                rec = run_one(case, args.timeout, args.mem_cap_gb)
                records.append(rec)
                res = f"{_fmt(rec, 'time_s'):>10} {_fmt(rec, 'peak_mb'):>9}" if rec["status"] == "ok" else rec["status"]
                print(f"{name:>3} {layer:>3} {impl:>6}: {res}", flush=True)
    meta = {
        "machine": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "nfn": getattr(nfn, "__version__", "0.1.2"),
        "python": platform.python_version(),
        "timeout_s": args.timeout,
        "mem_cap_gb": args.mem_cap_gb,
    }
    write(records, args.quick, meta)


if __name__ == "__main__":
    main()
