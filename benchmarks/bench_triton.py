"""GPU micro-benchmark of :func:`wgraph.kernels.message_pass`: ``reference``, ``fused`` and ``triton``.

What is measured: one step = for every dense block of a batch of networks, both directions
(``reverse=False`` and ``True``), ``message_pass`` forward (``mean``, ReLU, width ``H``) and then the
backward of ``sum(out * g)`` for a fixed random ``g``. The edge features are the raw weights
(``K`` = kernel size, no gradient, as in a graph NFN that re-lifts them inside the kernel); node
states and the edge map ``C`` require gradients. Synthetic inputs with the blocks of:

  a: 8 x MLP 784-256-256-10, H = 32
  b: 64 x Small-CNN-Zoo CNN (3x3 convs 1-16-16-16, Linear 16-10), H = 64
  c: 512 x MLP 2-32-32-1, H = 64

Time, two ways, each the median of ``--reps`` after ``--warmup`` steps:

* ``wall``: CUDA events around the eager step (forward alone is timed the same way). At these sizes
  this is mostly the host's launch overhead (Python, autograd, kernel launches): the GPU idles between
  kernels.
* ``gpu``: the same step captured once in a CUDA graph and replayed (CUDA events around the replay):
  the device time of the step's kernels without host overhead. This is the time the bandwidth
  fraction uses.
 Memory: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
minus the memory allocated when the step starts (inputs excluded).

Memory-bandwidth floor: the bytes one step must move at least are the edge features read once per
pass (4 passes: forward and backward of each direction) plus the node states: per direction,
forward reads ``send``, ``recv`` and writes the output; backward reads ``send``, ``recv``, the
incoming gradient and writes ``d send`` and ``d recv``. ``floor = bytes / peak`` with the peak HBM
bandwidth given by ``--peak-tbs`` (3.35 TB/s: H100 SXM5 HBM3 data sheet; 4.8 for an H200);
``fraction = floor / measured time``.

    PYTHONPATH=$PWD python benchmarks/bench_triton.py [--out benchmarks/results] [--peak-tbs 3.35]

Writes ``triton_gpu.json`` and ``triton_gpu.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import wgraph.kernels.triton_fused as tf
from wgraph.kernels import message_pass

# name: (description, batch, H, blocks as (out, in, K))
CASES = {
    "a": ("8 x MLP 784-256-256-10, H=32", 8, 32, [(256, 784, 1), (256, 256, 1), (10, 256, 1)]),
    "b": (
        "64 x Small-CNN-Zoo CNN (3x3 convs, 16 channels), H=64",
        64,
        64,
        [(16, 1, 9), (16, 16, 9), (16, 16, 9), (10, 16, 1)],
    ),
    "c": ("512 x MLP 2-32-32-1, H=64", 512, 64, [(32, 2, 1), (32, 32, 1), (1, 32, 1)]),
}
BACKENDS = ("reference", "fused", "triton")


def make_inputs(batch, H, blocks, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for o, i, k in blocks:
        for reverse in (False, True):
            n_send, n_recv = (i, o) if not reverse else (o, i)

            def r(*s, grad=True):
                return torch.randn(*s, generator=g, device="cuda", dtype=dtype).requires_grad_(grad)

            send, recv, edge, w = r(batch, n_send, H), r(batch, n_recv, H), r(batch, o, i, k, grad=False), r(k, H)
            out.append((reverse, send, recv, edge, w, torch.randn(batch, n_recv, H, generator=g, device="cuda")))
    return out


def step(backend, inputs, backward=True):
    outs = [
        message_pass(s, r, e, w, reverse=rev, aggr="mean", act="relu", backend=backend)
        for rev, s, r, e, w, _ in inputs
    ]
    if backward:
        loss = sum((o * gr).sum() for o, (*_, gr) in zip(outs, inputs))
        leaves = [t for rev, s, r, e, w, _ in inputs for t in (s, r, w)]
        torch.autograd.grad(loss, leaves)


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def graph_ms(fn, warmup, reps):
    """Median replay time of ``fn`` captured in a CUDA graph (``None`` with the error if capture fails)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as e:  # noqa: BLE001 - recorded in the results
        return None, f"{type(e).__name__}: {e}"[:200]
    ms = timed(graph.replay, warmup, reps)
    del graph
    return ms, None


def peak_mb(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def floor_bytes(batch, H, blocks, itemsize=4):
    edge = sum(batch * o * i * k for o, i, k in blocks) * itemsize
    nodes = 0
    for o, i, _ in blocks:
        for n_send, n_recv in ((i, o), (o, i)):
            nodes += batch * H * itemsize * ((n_send + 2 * n_recv) + (2 * n_send + 3 * n_recv))
    return 4 * edge + nodes, edge


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--peak-tbs", type=float, default=3.35)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--cases", default="a,b,c")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument(
        "--tiles",
        default="2048:32:4,4096:32:4,4096:16:4,8192:32:8,8192:64:8",
        help="TILE_ELEMS:MAX_BI:NUM_WARPS settings tried for triton (a sweep)",
    )
    p.add_argument("--profile", action="store_true", help="only profile triton's kernels (torch.profiler) per case")
    args = p.parse_args()
    import triton

    if args.profile:
        return profile(args)

    info = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "peak_bandwidth_tb_s": args.peak_tbs,
        "tile_elems_default": tf.TILE_ELEMS,
        "max_bi": tf.MAX_BI,
        "num_warps": tf.NUM_WARPS,
        "cases": {},
    }
    defaults = (tf.TILE_ELEMS, tf.MAX_BI, tf.NUM_WARPS)
    for name in args.cases.split(","):
        desc, batch, H, blocks = CASES[name]
        inputs = make_inputs(batch, H, blocks)
        total, edge = floor_bytes(batch, H, blocks)
        floor_us = total / (args.peak_tbs * 1e12) * 1e6
        res = {"description": desc, "edge_MB": edge / 1e6, "floor_MB": total / 1e6, "floor_us": floor_us}
        res.update(backends={}, triton_tiles={})
        for be in args.backends.split(","):
            fwd = timed(lambda: step(be, inputs, backward=False), args.warmup, args.reps)
            both = timed(lambda: step(be, inputs), args.warmup, args.reps)
            mem = peak_mb(lambda: step(be, inputs))
            gpu, err = graph_ms(lambda: step(be, inputs), args.warmup, args.reps)
            frac = None if gpu is None else res["floor_us"] / (gpu * 1e3)
            times = {"fwd_ms": fwd, "fwd_bwd_ms": both, "gpu_fwd_bwd_ms": gpu, "graph_error": err}
            res["backends"][be] = {**times, "peak_MB": mem, "bandwidth_fraction": frac}
            msg = f"fwd {fwd:.3f} ms  fwd+bwd {both:.3f} ms  gpu {gpu} ms  peak {mem:.1f} MB {err or ''}"
            print(name, be, msg, flush=True)
        for t in [x for x in args.tiles.split(",") if x]:
            tf.TILE_ELEMS, tf.MAX_BI, tf.NUM_WARPS = (int(v) for v in t.split(":"))
            gpu, _ = graph_ms(lambda: step("triton", inputs), args.warmup, args.reps)
            res["triton_tiles"][t] = gpu
            print(name, "triton TILE_ELEMS:MAX_BI:NUM_WARPS", t, f"gpu fwd+bwd {gpu} ms", flush=True)
        tf.TILE_ELEMS, tf.MAX_BI, tf.NUM_WARPS = defaults
        info["cases"][name] = res
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "triton_gpu.json").write_text(json.dumps(info, indent=2))
    (out / "triton_gpu.md").write_text(to_markdown(info))
    print(to_markdown(info))


def profile(args):
    """Per-kernel device time of one triton step per case (torch.profiler), to ``triton_gpu.profile.txt``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof_ctx

    texts = [f"{torch.cuda.get_device_name()}: device time per kernel, 5 steps of triton (fwd + bwd)"]
    for name in args.cases.split(","):
        desc, batch, H, blocks = CASES[name]
        inputs = make_inputs(batch, H, blocks)
        for _ in range(args.warmup):
            step("triton", inputs)
        torch.cuda.synchronize()
        with prof_ctx(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step("triton", inputs)
            torch.cuda.synchronize()
        try:
            table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=15)
        except Exception:  # noqa: BLE001 - older torch names the column after CUDA
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15)
        texts += [f"\ncase {name}: {desc}", table]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "triton_gpu.profile.txt").write_text("\n".join(texts))
    print("\n".join(texts))


def to_markdown(info):
    lines = [
        "# message_pass on GPU: reference, fused, triton",
        "",
        f"{info['device']}, torch {info['torch']}, triton {info['triton']}. One step: every dense block of the case, "
        "both directions, forward (mean, ReLU) + backward (gradients of node states and of the edge map; raw weights "
        "as edge features, no edge gradient). Median of CUDA-event timings after warm-up; peak = "
        "`max_memory_allocated` above the memory held before the step. Wall: CUDA events around the eager step "
        "(mostly host launch overhead at these sizes); GPU: the step captured in a CUDA graph and replayed (device "
        "time without host overhead). Produced by `benchmarks/bench_triton.py`.",
        "",
        f"Bandwidth floor: edge features read once per pass (4 passes: forward and backward of each direction) plus "
        f"node states, at an assumed peak of {info['peak_bandwidth_tb_s']} TB/s; fraction = floor / GPU fwd+bwd time.",
        "",
        "| case | backend | wall fwd ms | wall fwd+bwd ms | GPU fwd+bwd ms | peak MB | bandwidth fraction |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in info["cases"].items():
        for be, r in res["backends"].items():
            lines.append(
                f"| {name}: {res['description']} | {be} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                f"{_ms(r['gpu_fwd_bwd_ms'])} | {r['peak_MB']:.1f} | {_pct(r['bandwidth_fraction'])} |"
            )
    floors = [
        f"{n}: {r['edge_MB']:.2f} MB of edge features, {r['floor_MB']:.2f} MB per step, {r['floor_us']:.1f} us"
        for n, r in info["cases"].items()
    ]
    lines += ["", "Floors: " + "; ".join(floors), ""]
    defaults = f"{info['tile_elems_default']}, `MAX_BI` {info['max_bi']}, {info['num_warps']} warps"
    lines += [f"Triton tile sweep (GPU fwd+bwd ms by `TILE_ELEMS:MAX_BI:NUM_WARPS`; default {defaults}):", ""]
    for name, res in info["cases"].items():
        lines.append(f"- {name}: " + ", ".join(f"{t}: {_ms(ms)}" for t, ms in res["triton_tiles"].items()))
    errors = [
        f"{n}/{be}: {r['graph_error']}"
        for n, res in info["cases"].items()
        for be, r in res["backends"].items()
        if r["graph_error"]
    ]
    if errors:
        lines += ["", "CUDA-graph capture failed (no GPU time): " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def _ms(v):
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v):
    return "n/a" if v is None else f"{v:.1%}"


if __name__ == "__main__":
    main()
