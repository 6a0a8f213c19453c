"""Every CPU message-passing backend against ``reference``: all block kinds, aggregators, gradients,
whole graph NFNs on mixed architectures; backend resolution and the missing-dependency fallback."""

import sys
import warnings

import pytest
import torch
from torch import nn

import wgraph
import wgraph.kernels as kernels
from wgraph.kernels import available_backends, message_pass, resolve_backend
from wgraph.nn import GraphNFN
from wgraph.zoo import mlp, resnet_mlp, small_cnn

BACKENDS = ["fused", "pyg", "scatter"]
AGGRS = [("sum",), ("mean",), ("max",), ("min",), ("std",), ("mean", "max", "std")]


def rnd(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


def block_case(gen, kind, reverse, edge_state=True):
    """Inputs of one block of each kind: dense (Linear / 3x3 conv kernel), grouped, identity, copy."""
    B, H = 3, 5
    if kind in ("dense", "grouped"):
        out_n, in_n, groups, K = (6, 4, 1, 9) if kind == "dense" else (6, 9, 3, 1)
        n_send, n_recv = (in_n, out_n) if not reverse else (out_n, in_n)
        return (rnd(gen, B, n_send, H), rnd(gen, B, n_recv, H), rnd(gen, B, out_n, in_n // groups, K), rnd(gen, K, H)), groups
    c, inner = 4, (1 if kind == "identity" else 3)
    n_send, n_recv = (c, c * inner) if not reverse else (c * inner, c)
    edge, K = (rnd(gen, B, c * inner, 2), 2) if edge_state else (None, 1)
    return (rnd(gen, B, n_send, H), rnd(gen, B, n_recv, H), edge, rnd(gen, K, H)), 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggr", AGGRS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind,edge_state", [("dense", True), ("grouped", True), ("identity", False), ("identity", True),
                                             ("copy", False), ("copy", True)])  # fmt: skip
def test_block_matches_reference(backend, aggr, reverse, kind, edge_state):
    gen = torch.Generator().manual_seed(hash((kind, reverse, aggr)) % 2**31)
    args, groups = block_case(gen, kind, reverse, edge_state)
    kw = dict(kind=kind, reverse=reverse, aggr=aggr, act="tanh", groups=groups)
    inputs = [a for a in args if a is not None]
    results = []
    for b in ("reference", backend):
        out = message_pass(*args, backend=b, **kw)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
        results.append((out, torch.autograd.grad(out, inputs, g)))
    (ref, ref_g), (got, got_g) = results
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["pyg", "scatter"])
def test_float32_agreement(backend):
    gen = torch.Generator().manual_seed(3)
    send, recv, edge = (torch.randn(s, generator=gen) for s in [(2, 64, 16), (2, 48, 16), (2, 48, 64, 1)])
    weight = torch.randn(1, 16, generator=gen)
    ref = message_pass(send, recv, edge, weight, aggr=("mean", "max"), backend="reference")
    got = message_pass(send, recv, edge, weight, aggr=("mean", "max"), backend=backend)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _mixed_graphs():
    torch.manual_seed(0)
    archs = [
        (mlp([5, 7, 6, 3]), (1, 5)),  # Linear blocks
        (small_cnn(channels=4, classes=3), (1, 1, 16, 16)),  # 3x3 conv kernels
        (resnet_mlp(6, 4, 2, 3), (1, 6)),  # identity (residual) blocks
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Flatten(),
                       nn.Linear(4 * 4 * 4, 3)), (1, 1, 8, 8)),  # grouped conv and a flatten (copy blocks)
    ]  # fmt: skip
    return [wgraph.to_graph_batch([m.state_dict(), m.state_dict()], m, torch.randn(s)).to(torch.float64) for m, s in archs]


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_nfn_on_mixed_architectures_matches_reference(backend):
    graphs = _mixed_graphs()
    kinds = {b.kind for g in graphs for b in g.layout.blocks}
    assert {"dense", "grouped", "identity", "copy"} <= kinds
    results = {}
    for b in ("reference", backend):
        torch.manual_seed(1)
        model = GraphNFN([g.layout for g in graphs], hidden=8, layers=2, aggr=["mean", "max"], backend=b).double()
        out = model(graphs)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum()
        results[b] = (out.detach(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))
    (r_out, r_g), (out, g) = results["reference"], results[backend]
    torch.testing.assert_close(out, r_out, rtol=1e-9, atol=1e-9)
    for a, b in zip(g, r_g):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_every_backend_is_listed_and_auto_picks_fused_on_cpu():
    assert {"reference", "fused", "pyg", "scatter", "triton", "auto"} <= set(available_backends())
    assert resolve_backend("auto", "cpu") == "fused"
    with pytest.raises(kernels.KernelError, match="unknown message-passing backend 'nope'"):
        resolve_backend("nope")


def test_missing_optional_dependency_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(kernels, "_BACKENDS", {k: v for k, v in kernels._BACKENDS.items() if k != "scatter"})
    monkeypatch.delitem(sys.modules, "wgraph.kernels.scatter", raising=False)
    monkeypatch.setitem(sys.modules, "torch_scatter", None)  # import torch_scatter -> ImportError
    gen = torch.Generator().manual_seed(0)
    args, _ = block_case(gen, "dense", False)
    with pytest.warns(UserWarning, match="backend 'scatter' is unavailable.*torch_scatter.*using 'fused'"):
        out = message_pass(*args, backend="scatter")
    torch.testing.assert_close(out, message_pass(*args, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls are quiet
        message_pass(*args, backend="scatter")
    assert kernels.missing_package("scatter") == "torch_scatter"
    assert kernels.missing_package("fused") is None and kernels.missing_package("pyg") is None
