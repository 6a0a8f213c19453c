"""Every CPU message-passing backend against ``reference``: all block kinds, aggregators, gradients,
non-finite inputs (NaN and Inf propagate as in the reference), whole graph NFNs on mixed
architectures; backend objects, their fallback chains and ``explain``, resolution and the
missing-dependency fallback."""

import math
import sys
import warnings
import zlib

import pytest
import torch
from torch import nn

import wgraph
import wgraph.kernels as kernels
import wgraph.kernels.registry as registry
from wgraph.kernels import (
    ACTIVATIONS,
    Backend,
    Support,
    available_backends,
    explain,
    get_backend,
    message_pass,
    register_backend,
    resolve_backend,
)
from wgraph.nn import GraphNFN, from_preset
from wgraph.zoo import mlp, resnet_mlp, small_cnn

BACKENDS = ["fused", "pyg", "scatter"]
AGGRS = [("sum",), ("mean",), ("max",), ("min",), ("std",), ("mean", "max", "std")]
KINDS = [("dense", True), ("grouped", True), ("identity", False), ("identity", True), ("copy", False), ("copy", True)]


def seed(*key) -> int:
    """A seed that depends on ``key`` only (``hash`` of strings changes from process to process)."""
    return zlib.crc32(repr(key).encode())


def rnd(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


def block_case(gen, kind, reverse, edge_state=True):
    """Inputs of one block of each kind: dense (Linear / 3x3 conv kernel), grouped, identity, copy."""
    B, H = 3, 5
    if kind in ("dense", "grouped"):
        out_n, in_n, groups, K = (6, 4, 1, 9) if kind == "dense" else (6, 9, 3, 1)
        n_send, n_recv = (in_n, out_n) if not reverse else (out_n, in_n)
        send, recv = rnd(gen, B, n_send, H), rnd(gen, B, n_recv, H)
        return (send, recv, rnd(gen, B, out_n, in_n // groups, K), rnd(gen, K, H)), groups
    c, inner = 4, (1 if kind == "identity" else 3)
    n_send, n_recv = (c, c * inner) if not reverse else (c * inner, c)
    edge, K = (rnd(gen, B, c * inner, 2), 2) if edge_state else (None, 1)
    return (rnd(gen, B, n_send, H), rnd(gen, B, n_recv, H), edge, rnd(gen, K, H)), 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggr", AGGRS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind,edge_state", KINDS)
def test_block_matches_reference(backend, aggr, reverse, kind, edge_state):
    gen = torch.Generator().manual_seed(seed(kind, reverse, aggr))
    args, groups = block_case(gen, kind, reverse, edge_state)
    assert_agrees(backend, args, kind=kind, reverse=reverse, aggr=aggr, act="tanh", groups=groups)


def assert_agrees(backend, args, **kw):
    """``backend`` computes what ``reference`` computes: values and every gradient, NaN and Inf at the
    same places."""
    inputs = [a for a in args if a is not None]
    results = []
    for b in ("reference", backend):
        out = message_pass(*args, backend=b, **kw)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
        results.append((out, torch.autograd.grad(out, inputs, g)))
    (ref, ref_g), (got, got_g) = results
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10, equal_nan=True)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True)


def non_finite(args):
    """``args`` with NaN and Inf in edge features, sender and receiver states: each receiver gets at
    most one infinite message per channel (ties between senders are subgradients that backends may
    split differently, see wgraph.kernels.fused._DenseStats)."""
    send, recv, edge, weight = (None if a is None else a.detach().clone() for a in args)
    if edge is not None:
        flat = edge.view(edge.shape[0], -1)
        flat[0, 1], flat[1, -1], flat[2, 0] = math.nan, math.inf, -math.inf
    send[0, 1, 2], send[0, -1, 3], send[1, 0, 0] = -math.inf, math.inf, math.nan
    recv[2, 0, 1] = math.nan
    return tuple(None if a is None else a.requires_grad_() for a in (send, recv, edge, weight))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggr", AGGRS)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind,edge_state", KINDS)
def test_non_finite_inputs_match_reference(backend, aggr, act, reverse, kind, edge_state):
    gen = torch.Generator().manual_seed(seed(kind, reverse, aggr, act))
    args, groups = block_case(gen, kind, reverse, edge_state)
    args = non_finite(args)
    kw = dict(kind=kind, reverse=reverse, aggr=aggr, act=act, groups=groups)
    assert message_pass(*args, backend="reference", **kw).isnan().any()
    assert_agrees(backend, args, **kw)


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
    grouped_and_flatten = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )
    archs = [
        (mlp([5, 7, 6, 3]), (1, 5)),  # Linear blocks
        (small_cnn(channels=4, classes=3), (1, 1, 16, 16)),  # 3x3 conv kernels
        (resnet_mlp(6, 4, 2, 3), (1, 6)),  # identity (residual) blocks
        (grouped_and_flatten, (1, 1, 8, 8)),  # grouped conv and a flatten (copy blocks)
    ]
    graphs = [wgraph.to_graph_batch([m.state_dict(), m.state_dict()], m, torch.randn(s)) for m, s in archs]
    return [g.to(torch.float64) for g in graphs]


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


def test_missing_optional_dependency_falls_back_with_a_warning_each_time(monkeypatch):
    """A backend whose package does not import resolves to 'fused', with a warning every time it is
    resolved (resolve once per layer); the registry is not changed, so the name means the real
    backend again once the package imports."""
    monkeypatch.delitem(sys.modules, "wgraph.kernels.scatter", raising=False)
    monkeypatch.setitem(sys.modules, "torch_scatter", None)  # import torch_scatter -> ImportError
    before = dict(registry._BACKENDS)
    gen = torch.Generator().manual_seed(0)
    args, _ = block_case(gen, "dense", False)
    match = "backend 'scatter' is unavailable.*torch_scatter.*using 'fused'"
    with pytest.warns(UserWarning, match=match):
        out = message_pass(*args, backend="scatter")
    torch.testing.assert_close(out, message_pass(*args, backend="reference"))
    with pytest.warns(UserWarning, match=match):  # again: each resolution says what runs instead
        assert get_backend("scatter").name == "fused"
    assert registry._BACKENDS == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # explain names the missing package in its table instead
        table = explain("scatter")
    assert "unavailable" in str(table) and table.runs("dense") == "fused" and table.runs("copy") == "reference"
    assert kernels.missing_package("scatter") == "torch_scatter"
    assert kernels.missing_package("fused") is None and kernels.missing_package("pyg") is None
    monkeypatch.undo()  # the package imports again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_backend("scatter").name == "scatter"


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_weight_gives_a_nan_prediction(backend):
    """Issue 15: with the native kernels a network with a NaN weight got a finite prediction (ReLU as
    ``z > 0 ? z : 0`` dropped the NaN). Every backend predicts NaN for it, as the reference does,
    and the same finite output for the good network beside it."""
    torch.manual_seed(0)
    net, x = mlp([4, 8, 3]), torch.randn(1, 4)
    sd = net.state_dict()
    bad = {k: v.clone() for k, v in sd.items()}
    bad["0.weight"][0, 0] = math.nan
    g = wgraph.to_graph_batch([sd, bad], net, x)
    outs = {}
    for b in ("reference", backend):
        torch.manual_seed(1)
        # eval: the readout normalizes with stored statistics, so the NaN cannot reach the good network
        outs[b] = from_preset("gnn", g.layout, out_dim=1, backend=b).eval()(g).detach()
    ref, got = outs["reference"], outs[backend]
    assert torch.isfinite(ref[0]).all() and ref[1].isnan().all()
    assert got[1].isnan().all()
    torch.testing.assert_close(got[0], ref[0])


def test_backends_declare_what_they_compute():
    fused = get_backend("fused")
    assert isinstance(fused, Backend) and fused.chain() == ("fused", "reference")
    assert fused.supports("dense", ("mean", "max"), "gelu", torch.float16, "cpu")
    answer = fused.supports("copy", "sum", "relu", torch.float32, "cpu")
    assert isinstance(answer, Support) and not answer and "node-sized" in answer.reason
    assert "native" in fused.supports("grouped", "sum", "relu", torch.float64, "cpu").reason
    assert "tiles" in fused.supports("dense", "sum", "relu", torch.bfloat16, "cpu").reason
    reference = get_backend("reference")
    assert reference.chain() == ("reference",) and reference.supports("identity", "std", "tanh", torch.float32, "cpu")
    assert get_backend(fused) is fused and resolve_backend("auto", "cpu") == "fused"


def test_explain_prints_the_fallback_chain():
    table = explain("fused", device="cpu", aggr=("mean", "max"), act="tanh")
    assert [(kind, runs) for kind, runs, _ in table.rows] == [
        ("dense", "fused"), ("grouped", "fused"), ("identity", "reference"), ("copy", "reference")
    ]
    text = str(table)
    assert text.splitlines()[0].startswith("backend 'fused' on cpu, torch.float32, aggr ['mean', 'max'], act 'tanh'")
    assert "statistics sweep" in text and "fused: no" in text and "reference: yes" in text
    assert "('auto' is 'fused' here)" in str(explain("auto", device="cpu"))


@pytest.mark.skipif(kernels.missing_package("triton") is not None, reason="triton is not installed")
def test_triton_chain_without_a_gpu():
    """Resolving and explaining need no GPU: on CPU tensors every block kind goes down the chain."""
    triton = get_backend("triton", "cpu")
    assert triton.chain() == ("triton", "fused", "reference")
    assert get_backend("auto", "cuda").name == "triton"
    assert triton.supports("grouped", ("sum", "mean"), "silu", torch.bfloat16, "cuda")
    no = triton.supports("dense", ("mean", "std"), "relu", torch.float32, "cuda")
    assert not no and "sum and mean only" in no.reason
    on_cuda = explain("auto", device="cuda", aggr=("mean", "max"))
    assert on_cuda.runs("dense") == "fused" and on_cuda.runs("identity") == "reference"
    assert explain("auto", device="cuda").runs("dense") == "triton"


def test_message_pass_takes_a_resolved_backend():
    gen = torch.Generator().manual_seed(0)
    args, groups = block_case(gen, "grouped", True)
    kw = dict(kind="grouped", reverse=True, aggr=("mean", "max"), groups=groups)
    resolved = get_backend("fused", "cpu")
    torch.testing.assert_close(message_pass(*args, backend=resolved, **kw), message_pass(*args, backend="fused", **kw))


def test_registered_backend_declares_what_it_supports(monkeypatch):
    """A backend that computes only dense sums: the rest goes to its fallback, never to it."""
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    calls = []

    def dense_sums(send, recv, edge, edge_weight, *, kind, reverse, aggr, act, groups=1):
        calls.append(kind)
        return message_pass(send, recv, edge, edge_weight, kind=kind, reverse=reverse, aggr=aggr, act=act)

    def supports(case):
        return Support(case.kind == "dense" and case.aggr == ("sum",), "dense sums only")

    mine = register_backend("dense-sums-test", dense_sums, supports=supports, fallback="fused")
    assert mine.chain() == ("dense-sums-test", "fused", "reference") and "dense-sums-test" in available_backends()
    assert explain("dense-sums-test").runs("dense") == "fused"  # aggr mean
    gen = torch.Generator().manual_seed(0)
    for kind, state in (("dense", True), ("copy", True)):
        args, _ = block_case(gen, kind, False, state)
        for aggr in ("sum", "max"):
            got = message_pass(*args, kind=kind, aggr=aggr, backend="dense-sums-test")
            torch.testing.assert_close(got, message_pass(*args, kind=kind, aggr=aggr, backend="reference"))
    assert calls == ["dense"]
