"""``wgraph demo``: the three jobs of wgraph on embedded defaults, end to end.

1. **Convert** a torchvision ResNet-18 (random weights, nothing downloaded): its graph summary, a
   bit-exact round trip, and a random neuron permutation that changes the weights but not the
   function (float64).
2. **Learn on weights**: generate a small zoo of digits CNNs (``wgraph zoo cnn``), train the graph NFN
   (preset ``gnn``) and the NP stack (preset ``np``) to predict each network's test accuracy from
   its weights, and print their Kendall tau on held-out training runs side by side.
3. **Profile**: one graph-NFN layer (``reference`` and ``fused`` message passing) against the NP layer
   on 8 MNIST-sized MLPs, each configuration in its own process; a table and a plot.

``--quick`` runs each step at toy size (the test suite uses it). Everything goes under ``--out``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from . import load_into, random_symmetry, to_graph

FULL = {
    "runs": 150, "checkpoints": 4, "epochs": 8, "train_epochs": 30,
    "profile_arch": "mlp:784,256,256,10", "profile_batch": 8, "profile_widths": (16, 32),
}
#: The training settings of benchmarks/train_zoo.py (docs/results.md): warm-up, cosine decay, clipping.
TRAINING = {"warmup": 0.05, "schedule": "cosine", "clip_grad": 1.0}
QUICK = {
    "runs": 6, "checkpoints": 2, "epochs": 2, "train_epochs": 2,
    "profile_arch": "mlp:12,8,8,3", "profile_batch": 2, "profile_widths": (4, 8),
}


def _banner(i: int, text: str) -> None:
    print(f"\n== {i}. {text} ==", flush=True)


def convert_resnet18() -> bool:
    """Round trip and a function-preserving symmetry of a torchvision ResNet-18."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18().double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    t = time.perf_counter()
    g = to_graph(model, x)
    print(g.summary())
    print(f"converted in {time.perf_counter() - t:.2f} s")
    sd, orig = g.to_state_dict(), model.state_dict()
    exact = all(torch.equal(sd[k], v) and sd[k].dtype == v.dtype for k, v in orig.items())
    print(f"round trip: {'bit-exact' if exact else 'MISMATCH'} ({len(sd)} tensors, {g.layout.num_params:,} values)")
    sym = random_symmetry(g, seed=0)
    g2 = g.permute(sym)
    moved = sum(int((p != torch.arange(p.shape[-1])).sum()) for p in sym.perms.values())
    changed = any(not torch.equal(a, b) for a, b in zip(g.edges, g2.edges) if a is not None)
    permuted = load_into(copy.deepcopy(model), g2)
    with torch.no_grad():
        y = model(x)
        err = (y - permuted(x)).abs().max().item()
    ok = err <= 1e-9 * max(1.0, y.abs().max().item())
    print(
        f"symmetry: {moved:,} neurons moved in {len(sym.perms)} spaces, weights changed: {changed}, "
        f"max output difference {err:.1e} ({'function preserved' if ok else 'FUNCTION CHANGED'})"
    )
    return exact and ok and changed


def learn(out: Path, p: dict) -> dict[str, float]:
    """Generate the digits CNN zoo and train ``gnn`` and ``np`` on it; test Kendall tau per model."""
    from .tasks.trainer import TrainConfig, train
    from .zoo import generate_cnn_zoo

    zoo_dir = out / "zoo-cnn"
    zoo = generate_cnn_zoo(zoo_dir, runs=p["runs"], checkpoints=p["checkpoints"], epochs=p["epochs"], seed=0)
    acc = zoo.table["test_acc"]
    print(f"zoo: {len(zoo)} networks in {zoo_dir} (test accuracy {acc.min():.2f} to {acc.max():.2f})")
    taus = {}
    for preset in ("gnn", "np"):
        run = out / f"train-{preset}"
        resume = (run / "checkpoint.pt").exists()
        cfg = TrainConfig(
            "generalization", preset, zoo=str(zoo_dir), out=str(run), epochs=p["train_epochs"], resume=resume,
            **TRAINING,
        )
        res = train(cfg)
        taus[preset] = res["metrics"]["test"]["kendall_tau"]
    print("\npredicting test accuracy from weights (held-out training runs):")
    print("| model | Kendall tau (test) |\n|---|---|")
    for preset, tau in taus.items():
        print(f"| {preset} | {tau:.3f} |")
    return taus


def profile_case(out: Path, p: dict) -> Path | None:
    """One layer, graph NFN (reference and fused) against NP, each in its own process; table and plot."""
    from . import profile as prof

    methods = ("gnn-reference", "gnn-fused", "np")
    configs = [prof.Config(p["profile_arch"], p["profile_batch"], w, m) for w in p["profile_widths"] for m in methods]
    records = prof.profile(configs)
    print(prof.table(records))
    prof.write_csv(records, out / "profile.csv")
    return prof.plot(records, out / "profile_width.png")


def run(out: str | Path = "wgraph-demo", quick: bool = False) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = QUICK if quick else FULL
    t0 = time.perf_counter()
    _banner(1, "convert a torchvision ResNet-18")
    converted = convert_resnet18()
    _banner(2, "generate a digits CNN zoo, then predict generalization from weights")
    taus = learn(out, p)
    _banner(3, f"profile one layer on {p['profile_batch']} networks {p['profile_arch']}")
    png = profile_case(out, p)
    print(f"\n== summary ({time.perf_counter() - t0:.0f} s) ==")
    print(f"ResNet-18: round trip and symmetry {'passed' if converted else 'FAILED'}")
    print("Kendall tau: " + ", ".join(f"{k} {v:.3f}" for k, v in taus.items()))
    files = "zoo-cnn/ (the zoo), train-gnn/ and train-np/ (results.json, model), profile.csv"
    print(f"files in {out.resolve()}: {files}{', ' + png.name if png else ''}")
    return 0 if converted else 1
