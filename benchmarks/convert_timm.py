"""Convert the smallest model of every timm family and check each conversion.

A family is a module of ``timm.models`` (``timm.list_modules()``: resnet, vision_transformer,
efficientnet, ...); its smallest variant is its architecture with the fewest parameters (counted on
the "meta" device, nothing allocated; ``test_*`` models excluded), up to 60M parameters. Each model
is built with ``pretrained=False`` (nothing downloaded) and checked in a subprocess of its own with a
timeout, as a new user would run it (default input size, float64):

* time ``wgraph.to_graph(model, 1 x input_size)``;
* the round trip ``to_state_dict`` is bit-exact;
* ``random_symmetry`` preserves the function: the permuted weights, written back, give the same
  outputs on two inputs (relative error below 1e-6). Parameters get small noise and BatchNorm
  statistics are set from a calibration batch first, so that zero-initialized heads cannot make the
  check vacuous; the outputs must also differ between the two inputs;
* a graph NFN (``wgraph.nn.from_preset("gnn", layout, hidden=16, readout={"hidden": 16})``: the
  preset at width 16; its depth embedding grows to the deepest layer of the layout) runs forward
  and backward on the graph.

A refusal (``WgraphError``) is recorded with its reason; any other exception, an inexact round trip
or a symmetry that changes the function is a wrong answer.

    python benchmarks/convert_timm.py [--models resnet10t deit_tiny_patch16_224 ...] [--timeout 300]
        [--resume] [--redo refused timeout crashed wrong] [--workers N] [--render]

Writes benchmarks/results/convert_timm.{json,md} and, for a full run, the table in docs/conversion.md.
The JSON is rewritten after every model, so an interrupted run loses nothing: ``--resume`` keeps the
rows of the previous results and converts only the missing models, except those whose status is
or name is listed in ``--redo`` (after a new rule: rerun only the models that failed). The choice of models is
kept in benchmarks/results/convert_timm_models.json (per timm version). ``--workers N`` converts N
models at once, each in its own process (default 1: the float64 checks of one model keep a core
busy; run with ``OMP_NUM_THREADS=1`` on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from _docs import replace_block  # benchmarks/_docs.py, beside this script
from _worker import gnn_check, run_case  # benchmarks/_worker.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "conversion.md"
START, END = "<!-- timm:start -->", "<!-- timm:end -->"
MAX_PARAMETERS = 60_000_000
RTOL = 1e-6


def parameter_count(name: str) -> int | None:
    """Parameters of timm model ``name``, built on the "meta" device; None if it cannot be built there."""
    import timm
    import torch

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
    except Exception:
        return None
    return sum(p.numel() for p in model.parameters())


def smallest_per_family() -> dict[str, dict]:
    """``{family: {"model": name, "parameters": n}}``: the smallest architecture of each family."""
    import timm
    from tqdm import tqdm

    cache = RESULTS / "convert_timm_models.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("timm") == timm.__version__:
            return saved["families"]
    families = {}
    for family in tqdm(timm.list_modules(), desc="choosing the smallest model per timm family", unit="family"):
        counted = [(parameter_count(n), n) for n in timm.list_models(module=family) if not n.startswith("test_")]
        fitting = sorted((n, name) for n, name in counted if n is not None and n <= MAX_PARAMETERS)
        if fitting:
            families[family] = {"model": fitting[0][1], "parameters": fitting[0][0]}
    RESULTS.mkdir(exist_ok=True)
    cache.write_text(json.dumps({"timm": timm.__version__, "families": families}, indent=2) + "\n")
    return families


def run_one(name: str) -> dict:
    import timm
    import torch

    import wgraph
    from wgraph.convert.check import calibrated, symmetric_outputs

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    wgraph.to_graph(torch.nn.Linear(2, 2), torch.randn(1, 2))  # warm imports before timing
    model = timm.create_model(name, pretrained=False).double()
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    x = torch.randn(2, *size, dtype=torch.float64)
    model = calibrated(model, x)
    res = {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "input_size": list(size)}
    t = time.perf_counter()
    try:
        g = wgraph.to_graph(model, x[:1])
    except wgraph.WgraphError as e:
        res.update(status="refused", error=f"{type(e).__name__}: {str(e).splitlines()[0]}")
        return res
    res["seconds"] = time.perf_counter() - t
    lay = g.layout
    res.update(nodes=lay.num_nodes, edges=lay.num_edges, tracer=lay.meta.get("tracer"))
    sd = g.to_state_dict()
    res["exact"] = all(torch.equal(sd[k], v) and sd[k].dtype == v.dtype for k, v in model.state_dict().items())
    hidden = [s for s in lay.spaces if all(lay.layers[li].kind == "hidden" for li in s.layers)]
    res["permutable_neurons"] = sum(s.size for s in hidden if s.permutable)
    res["hidden_neurons"] = sum(s.size for s in hidden)
    reasons = sorted({s.note.split(" at ")[0] for s in hidden if not s.permutable and s.note})
    res["fixed_spaces"] = sum(1 for s in hidden if not s.permutable)
    res["fixed_because"] = reasons
    a, b = symmetric_outputs(model, g, x)
    res["rel_error"] = ((a - b).abs().max() / a.abs().max()).item()
    res["informative"] = bool((a[0] - a[1]).abs().max() > 1e-3 * a.abs().max())
    res["function_preserved"] = res["rel_error"] <= RTOL and res["informative"]
    res["gnn"] = gnn_check(g, torch.float64)
    res["status"] = "ok" if res["exact"] and res["function_preserved"] else "wrong"
    return res


def render(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    gnn = [r for r in ok if r.get("gnn") == "ok"]
    count = {k: sum(r.get("status") == k for r in rows) for k in ("wrong", "refused", "crashed", "timeout", "not run")}
    others = ", ".join(f"{n} {k}" for k, n in count.items() if n)
    lines = [
        f"{len(ok)} of {len(rows)} timm families (smallest variant of each, up to 60M parameters) convert with an "
        f"exact round trip and a function-preserving random symmetry in float64 "
        f"({100 * len(ok) / max(1, len(rows)):.0f}%); a graph NFN runs forward and backward on {len(gnn)} of them. "
        f"The others: {others or 'none'}.",
        "",
        "| family | model | parameters | seconds | exact | symmetry (rel. error) | permutable neurons | fixed spaces "
        "| graph NFN | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['family']} | {r['model']} | {r.get('parameters', 0):,} |"
        if r.get("status") in ("ok", "wrong"):
            sym = f"{'yes' if r['function_preserved'] else 'NO'} ({r['rel_error']:.0e})"
            fixed = f"{r['fixed_spaces']} ({'; '.join(r['fixed_because'])[:80]})" if r["fixed_spaces"] else "0"
            gnn_cell = "yes" if r["gnn"] == "ok" else r["gnn"][:60].replace("|", "\\|")
            lines.append(
                f"{head} {r['seconds']:.2f} | {'yes' if r['exact'] else 'NO'} | {sym} | "
                f"{r['permutable_neurons']:,} / {r['hidden_neurons']:,} | {fixed} | {gnn_cell} | {r['status']} |"
            )
        else:
            reason = re.sub(r'File "[^"]*site-packages/', 'File "', r.get("error", "")).replace("|", "\\|")[:240]
            lines.append(f"{head} | | | | | | {r.get('status')}: {reason} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="timm model names (default: the smallest of every family)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model (default 300)")
    ap.add_argument("--resume", action="store_true", help="keep the rows of the previous results file")
    ap.add_argument("--redo", nargs="*", default=[], help="with --resume: statuses or model names to convert again")
    ap.add_argument("--workers", type=int, default=1, help="models converted at once, each in its own process")
    ap.add_argument("--render", action="store_true", help="only write the table of the saved results")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    from tqdm import tqdm

    if args.models:
        import timm

        family = {n: m for m in timm.list_modules() for n in timm.list_models(module=m)}
        chosen = [(family.get(n, "?"), {"model": n}) for n in args.models]
    else:
        chosen = list(smallest_per_family().items())
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"convert_timm{'' if not args.models else '_subset'}.json"
    done = {}
    if args.resume and out.exists():
        redo = set(args.redo)
        done = {r["model"]: r for r in json.loads(out.read_text()) if not redo & {r.get("status"), r["model"]}}
    todo = [] if args.render else [(family, pick) for family, pick in chosen if pick["model"] not in done]
    found = dict(done)

    def convert(item: tuple[str, dict]) -> dict:
        family, pick = item
        return {"family": family, **pick, **run_case(__file__, pick["model"], args.timeout)}

    with ThreadPoolExecutor(args.workers) as pool, tqdm(total=len(todo), desc="converting timm models") as bar:
        for future in as_completed([pool.submit(convert, item) for item in todo]):
            row = future.result()
            found[row["model"]] = row
            bar.update()
            tqdm.write(f"{row['family']} ({row['model']}): {row.get('status')} {row.get('error', '')[:120]}")
            out.write_text(json.dumps(list(found.values()), indent=2) + "\n")
    if args.render:
        found = {r["model"]: r for r in json.loads(out.read_text())} if out.exists() else {}
    missing = {"status": "not run", "error": "(the run was stopped before this model)"}
    rows = [found.get(pick["model"], {"family": family, **pick, **missing}) for family, pick in chosen]
    out.write_text(json.dumps([r for r in rows if r["status"] != "not run"], indent=2) + "\n")
    table = render(rows)
    (out.with_suffix(".md")).write_text("# timm conversion, one model per family\n\n" + table + "\n")
    if not args.models:
        replace_block(DOC, START, END, table)
    print(table)


if __name__ == "__main__":
    main()
