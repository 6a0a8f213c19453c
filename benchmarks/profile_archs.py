"""The profiles of docs/profiling.md: how graph NFNs and parameter-sharing layers grow with width,
with the size of the work, and on an architecture parameter-sharing layers cannot represent.

Every configuration is a :mod:`wgraph.profile` measurement (one layer, forward + backward, its own
subprocess, 1 torch thread), exactly what ``wgraph profile`` runs:

* ``width``: 8 MNIST-sized MLPs (784-256-256-10), widths 16, 32, 64: the graph NFN under the
  ``reference``, ``scatter`` and ``fused`` backends beside NP, HNP, MAGEP and nfn's NP;
* ``size``: the same MLPs at width 32, batches of 2, 8 and 32 networks: ``reference``, ``fused``, NP;
* ``resnet18``: a torchvision ResNet-18, batch 2, widths 8 and 16: the graph NFN (reference and
  fused); the parameter-sharing layers are listed as unable to represent it (with the reason).

    nice python benchmarks/profile_archs.py [--parts width,size,resnet18] [--timeout 600]

Writes ``benchmarks/results/profile_archs.json`` / ``.md``, ``docs/img/profile_width.png``,
``docs/img/profile_size.png`` and the tables between the markers of ``docs/profiling.md``.
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

from wgraph.profile import MEM_CAP_GB, TIMEOUT_S, Config, plot, profile, table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "profiling.md"
MLP = "mlp:784,256,256,10"

WIDTH_METHODS = ("gnn-reference", "gnn-scatter", "gnn-fused", "np", "hnp", "magep", "nfn-np")
RESNET18 = "torchvision:resnet18"
PARTS = {
    "width": [Config(MLP, 8, w, m) for w in (16, 32, 64) for m in WIDTH_METHODS],
    "size": [Config(MLP, b, 32, m) for b in (2, 8, 32) for m in ("gnn-reference", "gnn-fused", "np")],
    "resnet18": [
        Config(RESNET18, 2, w, m, input_shape=(1, 3, 32, 32))
        for w in (8, 16)
        for m in ("gnn-reference", "gnn-fused", "np", "hnp")
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S)
    ap.add_argument("--mem-cap-gb", type=float, default=MEM_CAP_GB)
    args = ap.parse_args()
    import torch

    saved = RESULTS / "profile_archs.json"
    # a run of some parts keeps the other parts of the previous run
    previous = json.loads(saved.read_text()) if saved.exists() else {"parts": {}, "meta": {}}
    out: dict[str, list[dict]] = previous["parts"]
    dates: dict[str, str] = previous["meta"].get("dates", {})
    for part in filter(None, args.parts.split(",")):  # --parts "": rewrite the docs from the saved JSON
        out[part] = profile(PARTS[part], timeout=args.timeout, mem_cap_gb=args.mem_cap_gb)
        dates[part] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(table(out[part]), flush=True)
    meta = {
        "command": "python benchmarks/profile_archs.py [--parts ...]",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, 1 torch thread per measurement",
        "torch": torch.__version__,
        "dates": dates,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile_archs.json").write_text(json.dumps({"meta": meta, "parts": out}, indent=1) + "\n")
    sections = [f"Command: `{meta['command']}`; {meta['machine']}; torch {meta['torch']}.", ""]
    for part in PARTS:
        if part not in out:
            continue
        sections += [f"### {part} (measured {dates.get(part, '?')})", "", table(out[part]), ""]
    (RESULTS / "profile_archs.md").write_text("# Profiles (wgraph.profile)\n\n" + "\n".join(sections))
    img = ROOT / "docs" / "img"
    if "width" in out:
        plot(out["width"], img / "profile_width.png", x="width")
    if "size" in out:
        plot(out["size"], img / "profile_size.png", x="size")
    replace_block(DOC, "<!-- profiles:start -->", "<!-- profiles:end -->", "\n".join(sections))


if __name__ == "__main__":
    main()
