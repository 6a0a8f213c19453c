"""The ``fused`` backend's eager tiles against ``reference``: values, gradients, tiling, whole model.

The native CPU kernels (tests/test_native.py) are switched off here, so the tiles that run on other
devices and dtypes, and where no C compiler is found, are tested on the CPU.
"""

import pytest
import torch
from test_backends import non_finite

import wgraph.kernels.fused as fused
import wgraph.kernels.native as native
from wgraph.kernels import available_backends, message_pass
from wgraph.nn import GraphNFN

B, H, K = 3, 6, 4


@pytest.fixture(autouse=True)
def eager_tiles(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", False)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def rnd(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def block_inputs(gen, kind, reverse, out_n=5, in_n=4, groups=1, dtype=torch.float32, b=B, h=H, k=K):
    n_send, n_recv = (in_n, out_n) if not reverse else (out_n, in_n)
    send, recv = rnd(gen, b, n_send, h, dtype=dtype), rnd(gen, b, n_recv, h, dtype=dtype)
    edge = rnd(gen, b, out_n, in_n // groups, k, dtype=dtype)
    weight = rnd(gen, k, h, dtype=dtype)
    return [t.requires_grad_() for t in (send, recv, edge, weight)]


def outputs_and_grads(backend, inputs, gen_seed=1, **kwargs):
    out = message_pass(*inputs, backend=backend, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(gen_seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, g)
    return out.detach(), grads


def assert_close_rel(a, b, rtol=1e-5):
    """Relative agreement: max abs difference at most rtol times the largest magnitude (plus a floor)."""
    scale = max(b.abs().max().item(), 1.0)
    assert (a - b).abs().max().item() <= rtol * scale, (a - b).abs().max().item()


def assert_like_reference(inputs, rtol=1e-5, **kw):
    """``fused`` agrees with ``reference`` (values and gradients) to ``rtol``. With ``std`` in float32,
    ``sqrt(E[m^2] - E[m]^2 + eps)`` amplifies the rounding of the sums (taken in another order than
    the reference's) by about ``1 / std``: there both are compared with the float64 reference, and
    ``fused`` may be off by at most 4x the float32 reference's own error (or ``rtol``)."""
    ref, ref_g = outputs_and_grads("reference", inputs, **kw)
    out, out_g = outputs_and_grads("fused", inputs, **kw)
    assert out.shape == ref.shape
    if "std" not in kw["aggr"] or inputs[0].dtype == torch.float64:
        for a, b in zip((out, *out_g), (ref, *ref_g)):
            assert_close_rel(a, b, rtol)
        return
    exact = [t.detach().double().requires_grad_() for t in inputs]
    ref64, ref64_g = outputs_and_grads("reference", exact, **kw)
    for a, b, t in zip((out, *out_g), (ref, *ref_g), (ref64, *ref64_g)):
        own = (b.double() - t).abs().max().item()
        assert (a.double() - t).abs().max().item() <= max(4 * own, rtol * max(t.abs().max().item(), 1.0))


def test_fused_is_registered():
    assert "fused" in available_backends()


# sum / mean: one accumulator (_DenseSum); max, min, std: the statistics sweep (_DenseStats)
STATS_AGGRS = [("max",), ("min",), ("std",), ("mean", "max", "std")]


@pytest.mark.parametrize("aggr", [("sum",), ("mean",), ("sum", "mean"), *STATS_AGGRS])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu", "silu", "identity"])
@pytest.mark.parametrize("tile_bytes", [None, 1])  # default budget: one tile; 1 byte: one row per tile
@pytest.mark.parametrize("k", [1, 4])  # K = 1 (a Linear weight) takes the outer-product path
def test_dense_matches_reference(gen, monkeypatch, aggr, reverse, act, tile_bytes, k):
    if tile_bytes is not None:
        monkeypatch.setattr(fused, "tile_budget", lambda: tile_bytes)
    inputs = block_inputs(gen, "dense", reverse, k=k)
    kw = dict(kind="dense", reverse=reverse, aggr=aggr, act=act)
    assert message_pass(*inputs, backend="fused", **kw).shape == (B, 4 if reverse else 5, H * len(aggr))
    assert_like_reference(inputs, **kw)


@pytest.mark.parametrize("aggr", STATS_AGGRS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_stats_match_reference_float64(gen, monkeypatch, aggr, reverse, act):
    monkeypatch.setattr(fused, "tile_budget", lambda: 1)  # one row per tile: merged over tiles
    inputs = block_inputs(gen, "dense", reverse, k=4, dtype=torch.float64)
    kw = dict(kind="dense", reverse=reverse, aggr=aggr, act=act)
    assert_like_reference(inputs, 1e-12, **kw)


@pytest.mark.parametrize("aggr", [("sum",), ("mean",), ("max", "std")])
@pytest.mark.parametrize("reverse", [False, True])
def test_grouped_conv_matches_reference(gen, monkeypatch, aggr, reverse):
    # two rows per tile: several tiles per group
    monkeypatch.setattr(fused, "tile_budget", lambda: 2 * 3 * H * 4)
    inputs = block_inputs(gen, "grouped", reverse, out_n=6, in_n=9, groups=3)
    kw = dict(kind="grouped", reverse=reverse, aggr=aggr, act="relu", groups=3)
    assert_like_reference(inputs, **kw)


def test_default_budget_follows_tile_bytes(monkeypatch):
    monkeypatch.setattr(fused, "TILE_BYTES", 1000)
    assert fused.tile_budget() == 1000 * torch.get_num_threads()


def test_tiles_cover_the_block_once():
    cases = [(3, 5, 100, 1), (3, 5, 100, 250), (3, 5, 100, 1000), (3, 5, 100, 10**9), (1, 7, 8, 24)]
    for B_, out, row_bytes, budget in cases:
        seen = torch.zeros(B_, out, dtype=torch.long)
        n = 0
        for bs, rs in fused._tiles(B_, out, row_bytes, budget):
            seen[bs, rs] += 1
            n += 1
            rows = (bs.stop - bs.start) * (rs.stop - rs.start)
            assert rows == 1 or rows * row_bytes <= budget
        assert torch.equal(seen, torch.ones_like(seen))
        if budget < row_bytes:
            assert n == B_ * out  # one row of one network per tile


@pytest.mark.parametrize("aggr", [("mean", "sum"), ("max", "min", "std")])
def test_many_tiles_large_block(gen, monkeypatch, aggr):
    """A block split into many tiles (tiles of several rows, rows not dividing evenly), both directions;
    in reverse, a receiver's max / min / sums are merged over the tiles of its network."""
    monkeypatch.setattr(fused, "tile_budget", lambda: 3 * 17 * 8 * 4)  # 3 rows of one network
    for reverse in (False, True):
        inputs = block_inputs(gen, "dense", reverse, out_n=20, in_n=17, b=2, h=8, k=9)
        kw = dict(kind="dense", reverse=reverse, aggr=aggr, act="relu")
        assert len(list(fused._tiles(2, 20, 17 * 8 * 4, fused.tile_budget()))) == 14
        assert_like_reference(inputs, **kw)


@pytest.mark.parametrize("kind,groups", [("dense", 1), ("grouped", 2)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("aggr", [("sum", "mean"), ("max", "std", "min")])
def test_gradcheck_fused(gen, monkeypatch, kind, groups, reverse, aggr):
    monkeypatch.setattr(fused, "tile_budget", lambda: 1)  # every row its own tile
    send, recv, edge, weight = block_inputs(
        gen, kind, reverse, out_n=4, in_n=2, groups=groups, dtype=torch.float64, b=2, h=3, k=2
    )
    kw = dict(kind=kind, reverse=reverse, aggr=aggr, act="tanh", groups=groups, backend="fused")

    def fn(s, r, e, w):
        return message_pass(s, r, e, w, **kw)

    assert torch.autograd.gradcheck(fn, (send, recv, edge, weight))


@pytest.mark.parametrize("k", [1, 2])
def test_gradcheck_fused_relu_and_partial_requires_grad(gen, k):
    """Edge features without gradient (raw weights): only send, recv and the edge map get gradients."""
    send, recv, edge, weight = block_inputs(gen, "dense", False, out_n=3, in_n=2, dtype=torch.float64, b=1, h=3, k=k)
    edge = edge.detach()

    def fn(s, r, w):
        return message_pass(s, r, edge, w, aggr="mean", act="relu", backend="fused")

    assert torch.autograd.gradcheck(fn, (send, recv, weight))


def test_forward_saves_no_message_tensor(gen):
    """The autograd graph holds only the inputs: nothing of size B x out x in x H is saved."""
    send, recv, edge, weight = block_inputs(gen, "dense", False, out_n=30, in_n=20, b=2, h=16, k=1)
    out = message_pass(send, recv, edge, weight, aggr="sum", backend="fused")
    saved = out.grad_fn.saved_tensors
    assert len(saved) == 4
    assert max(t.numel() for t in saved) == edge.numel() < 2 * 30 * 20 * 16


@pytest.mark.parametrize("reverse", [False, True])
def test_stats_save_no_message_tensor(gen, reverse):
    """max / min / std keep the inputs and node-sized sender indices: nothing of size B x out x in x H."""
    send, recv, edge, weight = block_inputs(gen, "dense", reverse, out_n=30, in_n=20, b=2, h=16, k=1)
    which = ("sum", "sq", "max", "min")
    stats = fused._DenseStats.apply(send, recv, edge, weight, reverse, "relu", fused.tile_budget(), which)
    assert len(stats) == 4
    saved = stats[0].grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved[4:]] == [(2, 20 if reverse else 30, 16)] * 2  # argmax, argmin
    assert max(t.numel() for t in saved) == edge.numel() < 2 * 30 * 20 * 16


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="identity", aggr=("sum",)),
        dict(kind="identity", aggr=("max", "std")),
    ],
)
def test_fallbacks_match_reference(gen, kwargs):
    if kwargs["kind"] == "identity":
        send, recv, weight = rnd(gen, B, 4, H), rnd(gen, B, 4, H), rnd(gen, 1, H)
        inputs = [t.requires_grad_() for t in (send, recv, weight)]
        args = (inputs[0], inputs[1], None, inputs[2])
    else:
        inputs = block_inputs(gen, "dense", False)
        args = tuple(inputs)
    ref = message_pass(*args, backend="reference", **kwargs)
    out = message_pass(*args, backend="fused", **kwargs)
    assert torch.equal(out, ref)


def _cnn_graphs(n=3):
    import wgraph.zoo

    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    return wgraph.WeightGraph.cat([wgraph.to_graph(wgraph.zoo.small_cnn(), x) for _ in range(n)])


@pytest.mark.parametrize("aggr", [("mean",), ("sum", "mean")])
def test_graph_nfn_fused_equals_reference(monkeypatch, aggr):
    # two rows of a 16 x 16 conv block per tile
    monkeypatch.setattr(fused, "tile_budget", lambda: 2 * 16 * 16 * 4)
    graph = _cnn_graphs()
    assert graph.batch_size == 3
    kinds = [(b.kind, tuple(b.kernel)) for b in graph.layout.blocks]
    assert ("dense", (3, 3)) in kinds and ("dense", ()) in kinds  # conv and linear blocks both go through fused
    results = {}
    for backend in ("reference", "fused"):
        torch.manual_seed(1)
        model = GraphNFN(graph.layout, hidden=16, layers=2, aggr=aggr, backend=backend)
        out = model(graph)
        loss = (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        results[backend] = (out.detach(), grads, [n for n, _ in model.named_parameters()])
    (r_out, r_g, names), (f_out, f_g, _) = results["reference"], results["fused"]
    assert_close_rel(f_out, r_out)
    assert [g is None for g in f_g] == [g is None for g in r_g]
    used = [(n, a, b) for n, a, b in zip(names, f_g, r_g) if b is not None]
    for name, a, b in used:
        assert_close_rel(a, b, rtol=1e-5)
    # gradients reach the message maps (A, B, C) of every layer and direction through the fused kernel
    flowing = {n for n, _, b in used if b.abs().max() > 0}
    for i in range(2):
        for d in ("fwd", "bwd"):
            for m in ("send", "recv", "edge"):
                assert f"layers.{i}.{d}.{m}.weight" in flowing, (i, d, m)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("tile_bytes", [None, 1])
def test_stats_propagate_nan(gen, monkeypatch, reverse, tile_bytes):
    """A NaN message makes its receiver's max, min and std NaN, as in the reference (also when the
    receiver's senders come in several tiles)."""
    if tile_bytes is not None:
        monkeypatch.setattr(fused, "tile_budget", lambda: tile_bytes)
    send, recv, edge, weight = (t.detach() for t in block_inputs(gen, "dense", reverse))
    edge[0, 2, 1, 0] = float("nan")
    kw = dict(kind="dense", reverse=reverse, aggr=("max", "min", "std"), act="relu")
    ref = message_pass(send, recv, edge, weight, backend="reference", **kw)
    out = message_pass(send, recv, edge, weight, backend="fused", **kw)
    assert ref.isnan().any()
    torch.testing.assert_close(out, ref, equal_nan=True)


def assert_like_reference_non_finite(inputs, rtol, **kw):
    """``fused`` and ``reference`` agree on values and gradients, NaN and Inf at the same places and
    the finite rest to ``rtol`` of its largest magnitude."""
    ref, ref_g = outputs_and_grads("reference", inputs, **kw)
    out, out_g = outputs_and_grads("fused", inputs, **kw)
    assert ref.isnan().any()
    for a, b in zip((out, *out_g), (ref, *ref_g)):
        finite = b[torch.isfinite(b)]
        atol = rtol * max(finite.abs().max().item() if finite.numel() else 0.0, 1.0)
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("aggr", [("sum",), ("mean",), ("sum", "mean"), *STATS_AGGRS])
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu", "silu", "identity"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("tile_bytes", [None, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_inputs_match_reference(gen, monkeypatch, aggr, act, reverse, tile_bytes, dtype):
    """NaN and Inf in edges and node states propagate as in the reference, forward and backward, also
    when a receiver's senders come in several tiles."""
    if tile_bytes is not None:
        monkeypatch.setattr(fused, "tile_budget", lambda: tile_bytes)
    inputs = list(non_finite(block_inputs(gen, "dense", reverse, dtype=dtype)))
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    assert_like_reference_non_finite(inputs, rtol, kind="dense", reverse=reverse, aggr=aggr, act=act)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_stats_half_precision_accumulate_in_float32(gen, dtype, reverse):
    """5000 senders of messages near 4: their sum of squares (80,000) overflows float16, and sums
    carried in bfloat16 drift; accumulated in float32, the result is as close to the float64 truth as
    the reference's, and the backward pass runs in the input's dtype."""
    out_n, in_n = (1, 5000) if not reverse else (5000, 1)
    wide = block_inputs(gen, "dense", reverse, out_n=out_n, in_n=in_n, dtype=torch.float64, b=1, k=1)
    send, recv, edge, weight = (t.detach() for t in wide)
    send = send.abs() + 4
    kw = dict(kind="dense", reverse=reverse, aggr=("sum", "std", "max"), act="relu")
    exact = message_pass(send, recv, edge * 0.01, weight, backend="reference", **kw)
    half = [t.to(dtype).requires_grad_() for t in (send, recv, edge * 0.01, weight)]
    out = message_pass(*half, backend="fused", **kw)
    ref = message_pass(*half, backend="reference", **kw)
    assert out.dtype == dtype and torch.isfinite(out).all()
    for h in range(3):  # sum, std, max: each relative to its own size
        part = slice(h * H, (h + 1) * H)
        scale = exact[..., part].abs().max().item()
        err_ref = (ref[..., part].double() - exact[..., part]).abs().max().item() / scale
        err_out = (out[..., part].double() - exact[..., part]).abs().max().item() / scale
        assert err_out <= max(2 * err_ref, 1e-2), (h, err_out, err_ref)
    grads = torch.autograd.grad(out.float().sum(), half)
    assert [g.dtype for g in grads] == [dtype] * 4 and all(torch.isfinite(g).all() for g in grads)
