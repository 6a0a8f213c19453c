"""The compiled path of the ``fused`` backend (wgraph.kernels.compiled) against ``reference``.

The rest of the suite runs the eager tiles (tests/conftest.py); here compiling is on. Each variant
(K, activation, direction) compiles once per process, a few seconds each, so the grid is chosen to
reach every code path with few variants.
"""

import pytest
import torch
from test_fused import _cnn_graphs, assert_close_rel, block_inputs, outputs_and_grads

import wgraph.kernels.compiled as compiled
from wgraph.kernels import message_pass
from wgraph.nn import GraphNFN


@pytest.fixture(autouse=True)
def compile_on(monkeypatch):
    monkeypatch.setattr(compiled, "ENABLED", True)
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 0)  # tiny test blocks compile too
    monkeypatch.setattr(compiled, "_failed", [])


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def assert_matches_reference(inputs, **kw):
    ref, ref_g = outputs_and_grads("reference", inputs, **kw)
    out, out_g = outputs_and_grads("fused", inputs, **kw)
    assert out.shape == ref.shape
    assert_close_rel(out, ref)
    for a, b in zip(out_g, ref_g):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close_rel(a, b)


@pytest.mark.parametrize(
    "act,reverse,k",
    [("relu", False, 1), ("relu", True, 9), ("gelu", False, 1), ("silu", True, 2), ("tanh", False, 3), ("identity", True, 1)],
)
def test_dense_matches_reference(gen, act, reverse, k):
    inputs = block_inputs(gen, "dense", reverse, out_n=7, in_n=5, k=k)
    assert compiled.usable(inputs[2], inputs[3].shape[1])
    assert_matches_reference(inputs, kind="dense", reverse=reverse, aggr=("sum", "mean"), act=act)
    assert not compiled._failed


@pytest.mark.parametrize("reverse", [False, True])
def test_grouped_conv_and_size_one_layers(gen, reverse):
    """Grouped blocks fold groups into the batch; a layer of one neuron recompiles (a 0/1 size guard)."""
    inputs = block_inputs(gen, "grouped", reverse, out_n=6, in_n=9, groups=3, k=9)
    assert_matches_reference(inputs, kind="grouped", reverse=reverse, aggr=("mean",), act="relu", groups=3)
    inputs = block_inputs(gen, "dense", reverse, out_n=1, in_n=4, k=9)
    assert_matches_reference(inputs, kind="dense", reverse=reverse, aggr=("mean",), act="relu")
    assert not compiled._failed


@pytest.mark.parametrize("k", [1, 9])
def test_gradcheck_float64(gen, k):
    send, recv, edge, weight = block_inputs(gen, "dense", False, out_n=3, in_n=4, dtype=torch.float64, b=2, h=3, k=k)

    def fn(s, r, e, w):
        return message_pass(s, r, e, w, aggr=("sum", "mean"), act="gelu", backend="fused")

    assert torch.autograd.gradcheck(fn, (send, recv, edge, weight))
    assert not compiled._failed


def test_only_needed_gradients(gen):
    """Raw weights as edge features carry no gradient; a frozen sender gets none either."""
    send, recv, edge, weight = block_inputs(gen, "dense", True, k=9)
    edge, send = edge.detach(), send.detach()
    out = message_pass(send, recv, edge, weight, reverse=True, aggr="sum", act="relu", backend="fused")
    g_recv, g_weight = torch.autograd.grad(out.square().sum(), (recv, weight))
    ref = message_pass(send, recv, edge, weight, reverse=True, aggr="sum", act="relu", backend="reference")
    r_recv, r_weight = torch.autograd.grad(ref.square().sum(), (recv, weight))
    assert_close_rel(g_recv, r_recv)
    assert_close_rel(g_weight, r_weight)


def test_no_edge_sized_allocation():
    """Forward and backward allocate nothing near B x out x in x H (the eager reference would)."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(0)
    B, out_n, in_n, h = 4, 64, 48, 32
    send, recv, edge, weight = block_inputs(gen, "dense", False, out_n=out_n, in_n=in_n, b=B, h=h, k=9)
    edge = edge.detach()
    message_pass(send, recv, edge, weight, aggr="sum", backend="fused").sum().backward()  # compile first
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        message_pass(send, recv, edge, weight, aggr="sum", backend="fused").square().sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    edge_sized = B * out_n * in_n * h * 4
    assert 0 < largest < edge_sized / 4, (largest, edge_sized)


def test_small_blocks_large_kernels_and_other_dtypes_take_the_eager_tiles(gen, monkeypatch):
    assert compiled.usable(torch.zeros(1, 2, 2, 1), 8)
    assert not compiled.usable(torch.zeros(1, 2, 2, compiled.MAX_K + 1), 8)
    assert not compiled.usable(torch.zeros(1, 2, 2, 1, dtype=torch.bfloat16), 8)
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 1000)
    assert not compiled.usable(torch.zeros(2, 5, 10, 9), 8)  # 800 pre-activations
    assert compiled.usable(torch.zeros(2, 5, 10, 9), 10)
    inputs = block_inputs(gen, "dense", False, k=compiled.MAX_K + 1)
    assert_matches_reference(inputs, kind="dense", reverse=False, aggr=("sum",), act="relu")


def test_compile_failure_warns_once_and_falls_back(gen, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(compiled, "_compiled", broken)
    inputs = block_inputs(gen, "dense", False)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found") as caught:
        assert_matches_reference(inputs, kind="dense", reverse=False, aggr=("mean",), act="relu")
        assert_matches_reference(block_inputs(gen, "dense", True), kind="dense", reverse=True, aggr=("sum",), act="tanh")
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert not compiled.usable(inputs[2], inputs[3].shape[1])  # off for the rest of the process (restored by the fixture)


def test_graph_nfn_compiled_equals_reference():
    graph = _cnn_graphs()
    results = {}
    for backend in ("reference", "fused"):
        torch.manual_seed(1)
        model = GraphNFN(graph.layout, hidden=16, layers=2, aggr=("mean", "sum"), backend=backend)
        out = model(graph)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()), allow_unused=True)
        results[backend] = (out.detach(), grads)
    (r_out, r_g), (f_out, f_g) = results["reference"], results["fused"]
    assert_close_rel(f_out, r_out)
    for a, b in zip(f_g, r_g):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close_rel(a, b, rtol=1e-4)
    assert not compiled._failed
