"""The native CPU kernels of the ``fused`` backend (wgraph.kernels.native) against ``reference``.

Forward and every gradient, every activation, both directions, Linear and conv kernels, float32 and
float64, one and several threads, strided node states, grouped blocks; gradcheck in float64; no
edge-sized allocation; the build cache and the fallback to the eager tiles when no compiler works.
"""

import os
import subprocess
import sys

import pytest
import torch
from test_backends import non_finite
from test_fused import _cnn_graphs, assert_close_rel, assert_like_reference_non_finite, block_inputs, outputs_and_grads

import wgraph.kernels.native as native
from wgraph.kernels import ACTIVATION_TABLE, message_pass
from wgraph.kernels.spec import act_code
from wgraph.nn import GraphNFN

ACTS = ["relu", "tanh", "gelu", "silu", "identity"]


@pytest.fixture(autouse=True)
def native_on(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", True)
    assert native.usable(torch.zeros(1, 1, 1, 1)), native._failed


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def assert_matches_reference(inputs, rtol=1e-5, **kw):
    ref, ref_g = outputs_and_grads("reference", inputs, **kw)
    out, out_g = outputs_and_grads("fused", inputs, **kw)
    assert out.shape == ref.shape
    assert_close_rel(out, ref, rtol)
    for a, b in zip(out_g, ref_g):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close_rel(a, b, rtol)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("k", [1, 9])
@pytest.mark.parametrize("h", [16, 20, 37])  # whole vector chunks, one partial chunk, both
def test_dense_matches_reference(gen, act, reverse, k, h):
    inputs = block_inputs(gen, "dense", reverse, out_n=7, in_n=5, k=k, h=h)
    assert_matches_reference(inputs, kind="dense", reverse=reverse, aggr=("sum", "mean"), act=act)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("k", [1, 9])
@pytest.mark.parametrize("h", [16, 20])  # 20: a partial chunk, whose padding channels must not reach dL/dx
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aggr", [("sum",), ("mean",), ("sum", "mean")])  # a lone mean is scaled in the kernel
def test_non_finite_inputs_match_reference(gen, act, reverse, k, h, dtype, aggr):
    """Issue 15: NaN and Inf propagate as in the reference, forward and every gradient (ReLU keeps a
    NaN and passes its gradient on; an infinite edge feature spoils no other edge's gradient)."""
    inputs = list(non_finite(block_inputs(gen, "dense", reverse, out_n=7, in_n=5, k=k, h=h, dtype=dtype)))
    assert native.usable(inputs[2], act)
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    assert_like_reference_non_finite(inputs, rtol, kind="dense", reverse=reverse, aggr=aggr, act=act)


def test_activation_codes_come_from_the_table():
    """native.c is built with one -DWG_ACT_<NAME>=<code> per activation of the table, and says which
    codes it implements (all of today's; no code beyond the table)."""
    defines = [f for f in native._COMMON if f.startswith("-DWG_ACT_")]
    assert defines == [f"-DWG_ACT_{a.name.upper()}={i}" for i, a in enumerate(ACTIVATION_TABLE)]
    assert all(native._lib.wg_act_known(act_code(a)) for a in ACTS)
    assert not native._lib.wg_act_known(len(ACTIVATION_TABLE))
    assert native.unusable(torch.float32, torch.device("cpu"), "relu") is None
    assert "float32 / float64" in native.unusable(torch.bfloat16, torch.device("cpu"), "relu")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("reverse", [False, True])
def test_float64_to_rounding(gen, act, reverse):
    inputs = block_inputs(gen, "dense", reverse, out_n=6, in_n=9, k=3, h=24, dtype=torch.float64)
    assert_matches_reference(inputs, rtol=1e-12, kind="dense", reverse=reverse, aggr=("sum",), act=act)


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("reverse", [False, True])
def test_threads_split_networks_and_rows(gen, reverse, threads):
    """Threads take ranges of (network, row) pairs that cut networks in the middle (partial column
    sums); the result equals one thread's to rounding and does not change from run to run."""
    inputs = block_inputs(gen, "dense", reverse, out_n=7, in_n=6, b=2, k=2, h=32)
    kw = dict(kind="dense", reverse=reverse, aggr=("sum",), act="tanh")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, one_g = outputs_and_grads("fused", inputs, **kw)
        torch.set_num_threads(threads)
        many, many_g = outputs_and_grads("fused", inputs, **kw)
        again, again_g = outputs_and_grads("fused", inputs, **kw)
    finally:
        torch.set_num_threads(before)
    assert_close_rel(many, one)
    for a, b, c in zip(many_g, one_g, again_g):
        assert_close_rel(a, b)
        assert torch.equal(a, c)
    assert_matches_reference(inputs, **kw)


@pytest.mark.parametrize("reverse", [False, True])
def test_grouped_and_size_one_layers(gen, reverse):
    inputs = block_inputs(gen, "grouped", reverse, out_n=6, in_n=9, groups=3, k=9)
    assert_matches_reference(inputs, kind="grouped", reverse=reverse, aggr=("mean",), act="relu", groups=3)
    inputs = block_inputs(gen, "dense", reverse, out_n=1, in_n=4, k=9)
    assert_matches_reference(inputs, kind="dense", reverse=reverse, aggr=("mean",), act="relu")


def test_strided_and_broadcast_node_states(gen):
    """Node states are read through their network and row strides: a slice of a larger layer, a
    transposed tensor (channels not contiguous: copied) and a row broadcast (stride 0) all work."""
    send, recv, edge, weight = block_inputs(gen, "dense", False, out_n=5, in_n=4, h=16, k=2)
    big = torch.randn(3, 11, 16, generator=gen, requires_grad=True)
    sliced = big[:, 2:6]
    transposed = torch.randn(3, 16, 5, generator=gen).transpose(1, 2).requires_grad_()
    row = torch.randn(3, 1, 16, generator=gen, requires_grad=True)
    for s, r in ((sliced, recv), (send, transposed), (send, row.expand(3, 5, 16))):
        inputs = [s, r, edge, weight]
        ref, ref_g = outputs_and_grads("reference", inputs, aggr=("sum",))
        out, out_g = outputs_and_grads("fused", inputs, aggr=("sum",))
        assert_close_rel(out, ref)
        for a, b in zip(out_g, ref_g):
            assert_close_rel(a, b)


@pytest.mark.parametrize("reverse", [False, True])
def test_strided_incoming_gradient(gen, reverse):
    """The receivers' gradient arrives as a slice of a larger layer's gradient (a concatenation's
    backward) and is read through its strides, with a lone mean folded into the kernel."""
    inputs = block_inputs(gen, "dense", reverse, out_n=5, in_n=4, h=16, k=3)
    results = []
    for backend in ("reference", "fused"):
        out = message_pass(*inputs, reverse=reverse, aggr="mean", act="silu", backend=backend)
        whole = torch.cat([torch.ones(3, 2, 16), out, torch.ones(3, 1, 16)], dim=1)
        results.append((out, torch.autograd.grad((whole * torch.linspace(-1, 1, 16)).square().sum(), inputs)))
    (ref, ref_g), (out, out_g) = results
    assert_close_rel(out, ref)
    for a, b in zip(out_g, ref_g):
        assert_close_rel(a, b)


@pytest.mark.parametrize("k", [1, 9])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(gen, k, reverse):
    send, recv, edge, weight = block_inputs(gen, "dense", reverse, out_n=3, in_n=4, dtype=torch.float64, b=2, h=3, k=k)

    def fn(s, r, e, w):
        return message_pass(s, r, e, w, reverse=reverse, aggr=("sum", "mean"), act="gelu", backend="fused")

    assert torch.autograd.gradcheck(fn, (send, recv, edge, weight))


def test_only_needed_gradients(gen):
    """Raw weights as edge features carry no gradient; a frozen sender gets none either."""
    send, recv, edge, weight = block_inputs(gen, "dense", True, k=9)
    edge, send = edge.detach(), send.detach()
    out = message_pass(send, recv, edge, weight, reverse=True, aggr="sum", act="relu", backend="fused")
    assert out.grad_fn.next_functions  # it is differentiable in recv and weight
    g_recv, g_weight = torch.autograd.grad(out.square().sum(), (recv, weight))
    ref = message_pass(send, recv, edge, weight, reverse=True, aggr="sum", act="relu", backend="reference")
    r_recv, r_weight = torch.autograd.grad(ref.square().sum(), (recv, weight))
    assert_close_rel(g_recv, r_recv)
    assert_close_rel(g_weight, r_weight)


def test_no_edge_sized_allocation():
    """Forward and backward allocate nothing near B x out x in x H (the reference would)."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(0)
    B, out_n, in_n, h = 4, 64, 48, 32
    send, recv, edge, weight = block_inputs(gen, "dense", False, out_n=out_n, in_n=in_n, b=B, h=h, k=9)
    edge = edge.detach()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        message_pass(send, recv, edge, weight, aggr="sum", backend="fused").square().sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    edge_sized = B * out_n * in_n * h * 4
    assert 0 < largest < edge_sized / 4, (largest, edge_sized)


def test_other_dtypes_take_the_eager_tiles(gen):
    assert not native.usable(torch.zeros(1, 2, 2, 1, dtype=torch.bfloat16))
    inputs = [t.detach().to(torch.bfloat16).requires_grad_() for t in block_inputs(gen, "dense", False, k=2)]
    ref = message_pass(*inputs, aggr="sum", backend="reference")
    out = message_pass(*inputs, aggr="sum", backend="fused")
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_build_is_cached_and_keyed(tmp_path, monkeypatch):
    """A second build finds the first's library; another CPU or other flags get a file of their own."""
    first = native.build(tmp_path)
    assert first.parent == tmp_path and first.suffix == ".so"
    mtime = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    monkeypatch.setattr(native, "_cpu_id", lambda: "another cpu")
    assert native.build(tmp_path) != first
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".so") == sorted(
        {first.name, native.build(tmp_path).name}
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]  # no half-written files
    built = {p.name for p in tmp_path.glob("*.so")}
    monkeypatch.setattr(native, "_COMMON", (*native._COMMON, "-DWG_UNUSED_MACRO"))
    assert native.build(tmp_path).name not in built


def test_missing_compiler_is_a_clear_build_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(native.BuildError, match="no-such-cc"):
        native.build(tmp_path)


def test_build_failure_warns_once_and_falls_back(gen, tmp_path, monkeypatch):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("WGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failed", [])
    inputs = block_inputs(gen, "dense", False)
    with pytest.warns(RuntimeWarning, match="could not build native.c: cc: fatal error: broken on purpose") as caught:
        assert not native.usable(inputs[2])
        assert_matches_reference(inputs, kind="dense", reverse=False, aggr=("mean",), act="relu")
        reverse = block_inputs(gen, "dense", True)
        assert_matches_reference(reverse, kind="dense", reverse=True, aggr=("sum",), act="tanh")
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def test_switched_off_by_environment():
    code = "import torch, wgraph.kernels.native as n; print(n.ENABLED, n.usable(torch.zeros(1, 1, 1, 1)))"
    env = {**os.environ, "WGRAPH_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_graph_nfn_native_equals_reference():
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
