"""Throughput of batch conversion: checkpoints -> one WeightGraph.

Builds a WeightGraph for N checkpoints (default 10,000) of the Small-CNN-Zoo architecture
(3 conv layers of 16 channels, global average pool, linear; 4,970 parameters) and reports
networks/s and GB/s of parameters, beside the obvious baseline measured in the same run: one
``torch.stack`` per state-dict entry on one thread (what a hand-written gather does).

    python benchmarks/bench_convert.py [--n 10000] [--repeats 5]

Writes benchmarks/results/convert.json and convert.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import wgraph
from wgraph.zoo import small_cnn

RESULTS = Path(__file__).parent / "results"


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = small_cnn()
    x = torch.randn(1, 1, 28, 28)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    sds = [
        {k: torch.randn(s) for k, s in shapes.items()}
        for _ in tqdm(range(args.n), desc="making checkpoints", unit="ckpt")
    ]
    n_params = sum(v.numel() for v in sds[0].values())
    nbytes = args.n * n_params * 4

    t0 = time.perf_counter()
    wgraph.layout_of(model, x)
    t_trace = time.perf_counter() - t0

    t_list = _time(lambda: wgraph.to_graph_batch(sds, model, x), args.repeats)
    stacked = {k: torch.stack([sd[k] for sd in sds]) for k in shapes}
    t_stacked = _time(lambda: wgraph.to_graph_batch(stacked, model, x), args.repeats)
    t_copy = _time(lambda: {k: torch.stack([sd[k] for sd in sds]) for k in shapes}, args.repeats)
    g = wgraph.to_graph_batch(sds, model, x)
    t_back = _time(lambda: [g.to_state_dict(i) for i in range(min(args.n, 1000))], 1) * args.n / min(args.n, 1000)

    def gbps(seconds: float) -> float:
        return nbytes / seconds / 1e9

    res = {
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "networks": args.n,
        "params_per_network": n_params,
        "gigabytes": nbytes / 1e9,
        "trace_layout_s": t_trace,
        "list_of_state_dicts": {"seconds": t_list, "networks_per_s": args.n / t_list, "GB_per_s": gbps(t_list)},
        "stacked_mapping": {"seconds": t_stacked, "networks_per_s": args.n / t_stacked, "GB_per_s": gbps(t_stacked)},
        "serial_stack_baseline": {"seconds": t_copy, "GB_per_s": gbps(t_copy)},
        "speedup_over_serial_stack": t_copy / t_list,
        "to_state_dict_per_network_us": t_back / args.n * 1e6,
    }
    # Single-model conversion (trace + interpretation + gather), median of repeats, uncached.
    import torchvision

    single = {}
    for name in ("resnet50", "vit_b_16"):
        tv = torchvision.models.get_model(name, weights=None).eval()
        img = torch.randn(1, 3, 224, 224)

        def convert():
            return wgraph.convert.gather(wgraph.convert.build_layout(tv, img), [tv.state_dict()])

        single[name] = _time(convert, args.repeats)
    res["to_graph_seconds"] = single
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "convert.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        f"# bench_convert: {args.n} Small-CNN-Zoo checkpoints ({n_params} parameters each, {nbytes / 1e9:.3f} GB fp32)",
        "",
        f"{res['device']}, torch {torch.__version__}; median of {args.repeats} runs.",
        "",
        "| input | time | networks/s | GB/s |",
        "|---|---|---|---|",
        f"| list of state dicts | {t_list:.3f} s | {args.n / t_list:,.0f} | {gbps(t_list):.2f} |",
        "| stacked mapping (zoo file layout; weights kept as views, no copy) | "
        f"{t_stacked * 1e3:.2f} ms | {args.n / t_stacked:,.0f} | {gbps(t_stacked):.1f} |",
        "| baseline: `torch.stack` per entry, one thread | "
        f"{t_copy:.3f} s | {args.n / t_copy:,.0f} | {gbps(t_copy):.2f} |",
        "",
        f"Speed-up over the baseline: {t_copy / t_list:.2f}x. One-time layout trace: {t_trace * 1e3:.0f} ms. "
        f"Write-back `to_state_dict`: {res['to_state_dict_per_network_us']:.0f} µs per network.",
        "",
        "Converting one model (`to_graph` without the layout cache, 1x3x224x224 input, median): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in single.items()) + ".",
    ]
    (RESULTS / "convert.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
