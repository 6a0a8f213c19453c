"""GPU micro-benchmark of :func:`wgraph.kernels.message_pass`: ``reference``, ``fused`` and ``triton``.

What is measured: one step = for every dense block of a batch of networks, both directions
(``reverse=False`` and ``True``), ``message_pass`` forward (``mean``, ReLU, width ``H``) and then the
backward of ``sum(out * g)`` for a fixed random ``g``. The edge features are the raw weights
(``K`` = kernel size, no gradient, as in a graph NFN that re-lifts them inside the kernel); node
states and the edge map ``C`` require gradients. Synthetic inputs with the blocks of:

  a: 8 x MLP 784-256-256-10, H = 32
  b: 64 x Small-CNN-Zoo CNN (3x3 convs 1-16-16-16, Linear 16-10), H = 64
  c: 512 x MLP 2-32-32-1, H = 64

Time: CUDA events around the step, median of ``--reps`` after ``--warmup`` steps (forward alone is
timed the same way). Memory: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
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
    "b": ("64 x Small-CNN-Zoo CNN (3x3 convs, 16 channels), H=64", 64, 64, [(16, 1, 9), (16, 16, 9), (16, 16, 9), (10, 16, 1)]),
    "c": ("512 x MLP 2-32-32-1, H=64", 512, 64, [(32, 2, 1), (32, 32, 1), (1, 32, 1)]),
}  # fmt: skip
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
    p.add_argument("--tiles", default="2048,4096,8192", help="TILE_ELEMS values tried for triton (sweep)")
    args = p.parse_args()
    import triton

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
    default_tile = tf.TILE_ELEMS
    for name in args.cases.split(","):
        desc, batch, H, blocks = CASES[name]
        inputs = make_inputs(batch, H, blocks)
        total, edge = floor_bytes(batch, H, blocks)
        res = {"description": desc, "edge_MB": edge / 1e6, "floor_MB": total / 1e6,
               "floor_us": total / (args.peak_tbs * 1e12) * 1e6, "backends": {}, "triton_tiles": {}}  # fmt: skip
        for be in BACKENDS:
            fwd = timed(lambda: step(be, inputs, backward=False), args.warmup, args.reps)
            both = timed(lambda: step(be, inputs), args.warmup, args.reps)
            mem = peak_mb(lambda: step(be, inputs))
            res["backends"][be] = {"fwd_ms": fwd, "fwd_bwd_ms": both, "peak_MB": mem,
                                   "bandwidth_fraction": res["floor_us"] / (both * 1e3)}  # fmt: skip
            print(name, be, f"fwd {fwd:.3f} ms  fwd+bwd {both:.3f} ms  peak {mem:.1f} MB", flush=True)
        for t in [int(x) for x in args.tiles.split(",") if x]:
            tf.TILE_ELEMS = t
            both = timed(lambda: step("triton", inputs), args.warmup, args.reps)
            res["triton_tiles"][t] = both
            print(name, "triton TILE_ELEMS", t, f"fwd+bwd {both:.3f} ms", flush=True)
        tf.TILE_ELEMS = default_tile
        info["cases"][name] = res
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "triton_gpu.json").write_text(json.dumps(info, indent=2))
    (out / "triton_gpu.md").write_text(to_markdown(info))
    print(to_markdown(info))


def to_markdown(info):
    lines = [
        "# message_pass on GPU: reference, fused, triton",
        "",
        f"{info['device']}, torch {info['torch']}, triton {info['triton']}. One step: every dense block of the case, "
        "both directions, forward (mean, ReLU) + backward (gradients of node states and of the edge map; raw weights "
        "as edge features, no edge gradient). Median of CUDA-event timings after warm-up; peak = "
        "`max_memory_allocated` above the memory held before the step. Produced by `benchmarks/bench_triton.py`.",
        "",
        f"Bandwidth floor: edge features read once per pass (4 passes: forward and backward of each direction) plus "
        f"node states, at an assumed peak of {info['peak_bandwidth_tb_s']} TB/s; fraction = floor / measured fwd+bwd time.",
        "",
        "| case | backend | fwd ms | fwd+bwd ms | peak MB | bandwidth fraction |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in info["cases"].items():
        for be, r in res["backends"].items():
            lines.append(
                f"| {name}: {res['description']} | {be} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                f"{r['peak_MB']:.1f} | {r['bandwidth_fraction']:.1%} |"
            )
    lines += ["", "Floors: " + "; ".join(
        f"{n}: {r['edge_MB']:.2f} MB of edge features, {r['floor_MB']:.2f} MB per step, {r['floor_us']:.1f} us"
        for n, r in info["cases"].items()
    ), ""]  # fmt: skip
    lines += ["Triton tile sweep (fwd+bwd ms by `TILE_ELEMS`; default "
              f"{info['tile_elems_default']}, `MAX_BI` {info['max_bi']}, {info['num_warps']} warps):", ""]  # fmt: skip
    for name, res in info["cases"].items():
        lines.append(f"- {name}: " + ", ".join(f"{t}: {ms:.3f}" for t, ms in res["triton_tiles"].items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
