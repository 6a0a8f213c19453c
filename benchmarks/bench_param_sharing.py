"""wgraph's NP / HNP layers against nfn's, and the MAGEP layers: forward+backward time and peak memory, one run.

Each measurement (case x implementation x layer) is a :mod:`wgraph.profile` configuration at layer
scope, run in its own subprocess: one ``width -> width`` channel layer on a random weight-space input
of ``width`` channels (requires grad), then ``backward`` from fixed random gradients of its outputs;
time is the best of at least 3 steps after a warm-up step (more while they take under a second,
fewer once they have taken 10 s); memory is the step's peak above the resident size before it
(``step``) and with the inputs (``total``), measured in a process of its own; see ``wgraph/profile/``.

Cases (the fused message-passing issue's):
  a: batch 8 of 784-256-256-10 MLPs, width 32
  b: batch 64 of Small-CNN-Zoo CNNs (wgraph.zoo.small_cnn), width 64
  c: batch 512 of 2-32-32-1 SIRENs, width 64
  a8: case a's networks with HNP and MAGEP-paper at width 8 (their first layers have about 2 or 3
      (784 x width)^2 parameters)

Layers: ``np`` and ``hnp`` against nfn's; ``magep`` (wgraph's variant) and ``magep-paper`` (the published
MAGEP-NFN layer, on the kernel-free chain) have no counterpart in nfn and are measured alone.

A measurement whose estimated peak exceeds ``--mem-cap-gb`` is not started and is recorded as
skipped with the estimate; one that runs past ``--timeout`` seconds is killed and recorded as such.

    python benchmarks/bench_param_sharing.py [--quick] [--cases a,b,c,a8] [--timeout 300] [--mem-cap-gb 10]

Writes benchmarks/results/param_sharing.json and param_sharing.md (``--quick``: *_quick.*).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wgraph.profile import Config, profile  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

ALL = ("np", "hnp", "magep", "magep-paper")
NFN_LAYERS = ("np", "hnp")  # the layers nfn also has
# name: (description, arch spec, batch, width, layers)
CASES = {
    "a": ("8 x MLP 784-256-256-10, width 32", "mlp:784,256,256,10", 8, 32, ALL),
    "b": ("64 x Small-CNN-Zoo CNN, width 64", "cnn:16", 64, 64, ALL),
    "c": ("512 x SIREN 2-32-32-1, width 64", "siren:2,32,32,1", 512, 64, ALL),
    "a8": ("8 x MLP 784-256-256-10, width 8", "mlp:784,256,256,10", 8, 8, ("hnp", "magep-paper")),
}
QUICK = {
    "a": ("4 x MLP 64-32-32-10, width 8", "mlp:64,32,32,10", 4, 8, ALL),
    "b": ("8 x Small-CNN-Zoo CNN (8 channels), width 8", "cnn:8", 8, 8, ALL),
    "c": ("64 x SIREN 2-32-32-1, width 16", "siren:2,32,32,1", 64, 16, ALL),
    "a8": ("4 x MLP 64-32-32-10, width 4", "mlp:64,32,32,10", 4, 4, ("hnp", "magep-paper")),
}


def _fmt(r: dict, key: str) -> str:
    if not r:  # not measured (nfn has no MAGEP layer)
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "") if key == "time_s" else "-"
    return f"{r['time_s']:.3g} s" if key == "time_s" else f"{r['step_mb']:.0f} / {r['total_mb']:.0f} MB"


def write(records: list[dict], quick: bool, meta: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    stem = "param_sharing_quick" if quick else "param_sharing"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    lines = [
        f"# bench_param_sharing{' (--quick)' if quick else ''}: NP / HNP layers, wgraph vs nfn; MAGEP layers",
        "",
        f"{meta['machine']}, torch {meta['torch']}, nfn {meta['nfn']}. One `width -> width` layer, forward + "
        "backward from fixed random output gradients; time: best of at least 3 steps after a warm-up; memory: the "
        "step's peak above the resident size before it / the same with the inputs (time and memory each in a "
        "process of its own; see wgraph/profile/).",
        "",
        "| case | layer | wgraph time | nfn time | wgraph memory (step / total) | nfn memory (step / total) "
        "| speed-up | memory ratio (step) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["case"], r["method"]): r for r in records}
    for case, layer in dict.fromkeys((r["case"], r["method"].removeprefix("nfn-")) for r in records):
        w, n = by.get((case, layer), {}), by.get((case, f"nfn-{layer}"), {})
        ok = w.get("status") == "ok" and n.get("status") == "ok"
        sp = f"{n['time_s'] / w['time_s']:.2f}x" if ok else "-"
        mr = f"{w['step_mb'] / max(n['step_mb'], 1e-9):.2f}" if ok else "-"
        lines.append(
            f"| {case}: {w.get('desc', n.get('desc'))} | {layer.upper()} | {_fmt(w, 'time_s')} | {_fmt(n, 'time_s')} | "
            f"{_fmt(w, 'step_mb')} | {_fmt(n, 'step_mb')} | {sp} | {mr} |"
        )
    lines += [
        "",
        "Speed-up: nfn time / wgraph time. Memory ratio: wgraph step peak / nfn step peak (below 1: wgraph is leaner).",
        "SIREN weight spaces are built from a tanh MLP of the same shape (the activation does not change them).",
        "The machine's 2 cores were shared with other jobs: repeated runs vary by about 30% in time.",
        "HNP's first layer mixes all `n_0 x width` entries of a row of W_0, so it has about "
        "`2 (n_0 width)^2` parameters (1.3 billion for case a): that cost is in the HNP equations, not in "
        "either implementation; case a8 measures HNP on case a's networks at width 8.",
        "MAGEP is wgraph's variant; MAGEP-PAPER the published MAGEP-NFN layer (HNPSMixerLinear: three "
        "`width^2 n_0^2` first-layer terms, so about `3 (n_0 width)^2` parameters), on the kernel-free chain "
        "(CNN kernels summed, as the published model's input layer does); nfn has neither (no nfn columns).",
        "",
        f"Reproduce: `python benchmarks/bench_param_sharing.py{' --quick' if quick else ''}`",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--cases", default="a,b,c,a8")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    ap.add_argument("--mem-cap-gb", type=float, default=10.0, help="skip measurements estimated above this")
    args = ap.parse_args()
    import nfn
    import torch

    table = QUICK if args.quick else CASES
    configs = [
        Config(arch, batch, width, impl + layer, threads=args.threads, extra={"case": name, "desc": desc})
        for name in args.cases.split(",")
        for desc, arch, batch, width, layers in [table[name]]
        for layer in layers
        for impl in (("", "nfn-") if layer in NFN_LAYERS else ("",))
    ]
    records = profile(configs, timeout=args.timeout, mem_cap_gb=args.mem_cap_gb)
    meta = {
        "machine": f"CPU ({platform.machine()}, {args.threads} torch thread(s))",
        "torch": torch.__version__,
        "nfn": getattr(nfn, "__version__", "0.1.2"),
        "python": platform.python_version(),
        "timeout_s": args.timeout,
        "mem_cap_gb": args.mem_cap_gb,
    }
    write(records, args.quick, meta)
    print((RESULTS / f"param_sharing{'_quick' if args.quick else ''}.md").read_text())


if __name__ == "__main__":
    main()
