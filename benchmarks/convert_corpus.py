"""Convert every torchvision classification model and check each conversion.

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights,
nothing downloaded), in its own subprocess so that memory of one cannot affect the next:

* time ``wgraph.to_graph(model, 1x3x224x224)`` (299 for Inception),
* check the round trip ``to_state_dict`` is bit-exact,
* check that ``random_symmetry`` preserves the function: the permuted weights, written back,
  give the same outputs in eval mode (float64 and rtol 1e-6 for models under 150M parameters,
  float32 and rtol 1e-4 above and for models with grouped/depthwise convolutions, whose float64
  CPU kernels are two orders of magnitude slower; a wrong permutation changes outputs at order 1).
  In float32 the tolerance is at least 10x the network's own rounding noise, measured as the
  difference between the model computed in two memory layouts. Parameters get small noise and
  BatchNorm statistics are set from a random calibration batch first, so that zero-initialized
  heads and vanishing signals cannot make the check vacuous; the outputs must also differ between
  the two inputs;
* a graph NFN (the ``gnn`` preset at width 16, ``_worker.gnn_check``) runs forward and backward on
  the graph of the check (in its dtype).

    python benchmarks/convert_corpus.py [--models resnet18 vit_b_16 ...] [--timeout 900] [--resume]

Writes benchmarks/results/convert_corpus.{json,md} and the table in docs/conversion.md
(``--models``: convert_corpus_subset.{json,md}). The JSON is
rewritten after every model; ``--resume`` keeps its rows and converts only the missing models.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from _docs import replace_block  # benchmarks/_docs.py, beside this script
from _worker import gnn_check, run_case  # benchmarks/_worker.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "conversion.md"
START, END = "<!-- corpus:start -->", "<!-- corpus:end -->"
BIG = 150_000_000


def input_size(name: str) -> int:
    return 299 if name.startswith("inception") else 224


def check_size(name: str) -> int:
    """Smaller inputs for the function check where the architecture allows them."""
    if name.startswith(("vit", "maxvit", "inception")):
        return input_size(name)
    return 64


def run_one(name: str) -> dict:
    import torch
    import torchvision

    import wgraph

    torch.manual_seed(0)
    wgraph.to_graph(torch.nn.Linear(2, 2), torch.randn(1, 2))  # warm imports before timing
    model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():  # no degenerate checks: perturb zero-initialized heads, calibrate BN statistics
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None  # running statistics = the statistics of the calibration batch
        model.train()
        model(torch.randn(4, 3, check_size(name), check_size(name)))
        model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    s = input_size(name)
    res = {"model": name, "parameters": n_params}
    t = time.perf_counter()
    try:
        g = wgraph.to_graph(model, torch.randn(1, 3, s, s))
    except wgraph.WgraphError as e:
        res.update(status="unsupported", error=f"{type(e).__name__}: {str(e).splitlines()[0]}")
        return res
    res["seconds"] = time.perf_counter() - t
    lay = g.layout
    res.update(nodes=lay.num_nodes, edges=lay.num_edges, blocks=len(lay.blocks))
    sd = g.to_state_dict()
    res["exact"] = all(torch.equal(sd[k], v) and sd[k].dtype == v.dtype for k, v in model.state_dict().items())
    res["permutable_neurons"] = sum(sp.size for sp in lay.spaces if sp.permutable)
    hidden = [sp for sp in lay.spaces if all(lay.layers[li].kind == "hidden" for li in sp.layers)]
    res["hidden_neurons"] = sum(sp.size for sp in hidden)
    del g, sd

    grouped = any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in model.modules())
    dtype, rtol = (torch.float64, 1e-6) if n_params < BIG and not grouped else (torch.float32, 1e-4)
    model = model.to(dtype)
    cs = check_size(name)
    x = torch.randn(2, 3, cs, cs, dtype=dtype)
    g = wgraph.to_graph(model, x[:1])
    g2 = g.permute(wgraph.random_symmetry(g, seed=0))
    permuted = wgraph.load_into(copy.deepcopy(model), g2)
    with torch.no_grad():
        a, b = model(x), permuted(x)
        if dtype == torch.float32:
            # Rounding-noise floor of this network in float32: the same model computed with another
            # memory layout (other kernels, other summation orders). Deep networks with large
            # activations reach 1e-3 this way; a wrong permutation gives errors of order 1.
            cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            noise = ((cl(x.to(memory_format=torch.channels_last)) - a).abs().max() / a.abs().max()).item()
            rtol = max(rtol, 10 * noise)
            res["float32_noise"] = noise
    err = ((a - b).abs().max() / a.abs().max()).item()
    informative = bool((a[0] - a[1]).abs().max() > 1e-3 * a.abs().max())  # outputs depend on the input
    res.update(check_dtype=str(dtype).removeprefix("torch."), rel_error=err, tolerance=rtol,
               function_preserved=err <= rtol and informative)
    del model, permuted, g2
    res["gnn"] = gnn_check(g, dtype)
    res["status"] = "ok" if res["exact"] and res["function_preserved"] else "wrong"
    return res


def render(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    gnn = [r for r in ok if r.get("gnn") == "ok"]
    lines = [
        f"{len(ok)} of {len(rows)} torchvision classification models convert with an exact round trip "
        f"and a function-preserving random symmetry ({100 * len(ok) / max(1, len(rows)):.0f}%); a graph NFN "
        f"runs forward and backward on {len(gnn)} of them.",
        "",
        "| model | parameters | nodes | edges | seconds | exact | symmetry (rel. error) | permutable neurons "
        "| graph NFN | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") in ("ok", "wrong"):
            sym = f"{'yes' if r['function_preserved'] else 'NO'} ({r['rel_error']:.0e}, {r['check_dtype']})"
            perm = f"{r['permutable_neurons']:,} / {r['hidden_neurons']:,}"
            gnn_cell = "yes" if r.get("gnn") == "ok" else r.get("gnn", "not run")[:60].replace("|", "\\|")
            lines.append(
                f"| {r['model']} | {r['parameters']:,} | {r['nodes']:,} | {r['edges']:,} | {r['seconds']:.2f} | "
                f"{'yes' if r['exact'] else 'NO'} | {sym} | {perm} | {gnn_cell} | {r['status']} |"
            )
        else:
            reason = r.get("error", "").replace("|", "\\|")[:160]
            lines.append(f"| {r['model']} | {r.get('parameters', 0):,} | | | | | | | | {r.get('status')}: {reason} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--resume", action="store_true", help="keep the rows of the previous results file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    import torchvision
    from tqdm import tqdm

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"convert_corpus{'_subset' if args.models else ''}.json"
    done = {r["model"]: r for r in json.loads(out.read_text())} if args.resume and out.exists() else {}
    for name in tqdm([n for n in names if n not in done], desc="converting torchvision models", unit="model"):
        row = done[name] = run_case(__file__, name, args.timeout)
        tqdm.write(f"{name}: {row.get('status')} {row.get('gnn', '')} {row.get('error', '')[:120]}")
        out.write_text(json.dumps(list(done.values()), indent=2) + "\n")
    rows = [done[n] for n in names]
    out.write_text(json.dumps(rows, indent=2) + "\n")
    table = render(rows)
    out.with_suffix(".md").write_text("# torchvision corpus conversion\n\n" + table + "\n")
    if not args.models:
        replace_block(DOC, START, END, table)
    print(table)


if __name__ == "__main__":
    main()
