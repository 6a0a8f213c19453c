"""``wgraph demo``: convert a CNN and a residual MLP, prove the round trip and a symmetry."""

from __future__ import annotations

import copy

import torch

from . import load_into, random_symmetry, to_graph
from .zoo import resnet_mlp, small_cnn


def _check(name: str, model: torch.nn.Module, x: torch.Tensor) -> bool:
    model = model.double().eval()
    x = x.double()
    g = to_graph(model, x)
    print(f"\n== {name} ==")
    print(g.summary())
    sd, orig = g.to_state_dict(), model.state_dict()
    exact = all(torch.equal(sd[k], v) and sd[k].dtype == v.dtype for k, v in orig.items())
    print(f"round trip: {'bit-exact' if exact else 'MISMATCH'} ({len(sd)} tensors, {g.layout.num_params} values)")
    sym = random_symmetry(g, seed=0)
    g2 = g.permute(sym)
    moved = sum(int((p != torch.arange(p.shape[-1])).sum()) for p in sym.perms.values())
    permuted = load_into(copy.deepcopy(model), g2)
    with torch.no_grad():
        err = (model(x) - permuted(x)).abs().max().item()
    changed = any(not torch.equal(a, b) for a, b in zip(g.edges, g2.edges) if a is not None)
    ok = err <= 1e-9 * max(1.0, model(x).abs().max().item())
    print(
        f"symmetry: {moved} neurons moved in {len(sym.perms)} spaces, weights changed: {changed}, "
        f"max output difference {err:.2e} ({'function preserved' if ok else 'FUNCTION CHANGED'})"
    )
    data = g.to_pyg()
    print(f"to_pyg: x {tuple(data.x.shape)}, edge_index {tuple(data.edge_index.shape)}, edge_attr {tuple(data.edge_attr.shape)}")
    return exact and ok and changed


def run() -> int:
    torch.manual_seed(0)
    results = [
        _check("Small CNN (3 conv + global pool + linear)", small_cnn(), torch.randn(4, 1, 28, 28)),
        _check("Residual MLP (3 residual blocks)", resnet_mlp(), torch.randn(4, 64)),
    ]
    print("\ndemo:", "all checks passed" if all(results) else "SOME CHECKS FAILED")
    return 0 if all(results) else 1
