"""wgraph.kernels.message_pass: the reference backend against a per-edge loop, symmetry, errors."""

import pytest
import torch

from wgraph.kernels import (
    ACTIVATION_TABLE,
    ACTIVATIONS,
    KernelError,
    available_backends,
    message_pass,
    register_backend,
)
from wgraph.kernels.spec import act_code, act_grad, apply_act_, std_eps

B, H, K = 2, 5, 3


def brute_force(send, recv, edges, feats, weight, aggr, act):
    """Messages edge by edge: ``edges`` is a list of (sender, receiver), ``feats[e]`` a (B, K') feature."""
    phi = ACTIVATIONS[act]
    n_recv = recv.shape[1]
    inbox = [[] for _ in range(n_recv)]
    for e, (s, r) in enumerate(edges):
        inbox[r].append(phi(send[:, s] + recv[:, r] + feats[e] @ weight))
    out = []
    for r in range(n_recv):
        m = torch.stack(inbox[r], dim=1)  # (B, deg, H)
        parts = {
            "sum": m.sum(1),
            "mean": m.mean(1),
            "max": m.max(1).values,
            "min": m.min(1).values,
            "std": torch.sqrt(m.var(1, unbiased=False) + std_eps),
        }
        out.append(torch.cat([parts[a] for a in aggr], dim=-1))
    return torch.stack(out, dim=1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def rnd(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("aggr", [("sum",), ("mean",), ("max",), ("min",), ("std",), ("mean", "max", "std")])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_dense_matches_per_edge_loop(gen, aggr, reverse, act):
    out_n, in_n = 4, 3
    x = rnd(gen, B, out_n, in_n, K)
    w = rnd(gen, K, H)
    n_send, n_recv = (in_n, out_n) if not reverse else (out_n, in_n)
    send, recv = rnd(gen, B, n_send, H), rnd(gen, B, n_recv, H)
    edges, feats = [], []
    for o in range(out_n):
        for i in range(in_n):
            edges.append((i, o) if not reverse else (o, i))
            feats.append(x[:, o, i])
    got = message_pass(send, recv, x, w, kind="dense", reverse=reverse, aggr=aggr, act=act)
    want = brute_force(send, recv, edges, feats, w, aggr, act)
    assert got.shape == (B, n_recv, H * len(aggr))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_grouped_matches_per_edge_loop(gen, groups, reverse):
    out_n, in_n = 2 * groups, 3 * groups
    in_g, out_g = in_n // groups, out_n // groups
    x, w = rnd(gen, B, out_n, in_g, K), rnd(gen, K, H)
    n_send, n_recv = (in_n, out_n) if not reverse else (out_n, in_n)
    send, recv = rnd(gen, B, n_send, H), rnd(gen, B, n_recv, H)
    edges, feats = [], []
    for o in range(out_n):
        for j in range(in_g):
            i = (o // out_g) * in_g + j  # the group's j-th input
            edges.append((i, o) if not reverse else (o, i))
            feats.append(x[:, o, j])
    aggr = ("sum", "max", "std")
    got = message_pass(send, recv, x, w, kind="grouped", groups=groups, reverse=reverse, aggr=aggr)
    torch.testing.assert_close(got, brute_force(send, recv, edges, feats, w, aggr, "relu"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,count,inner", [("identity", 4, 1), ("copy", 3, 1), ("copy", 3, 4)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_fanout_blocks_match_per_edge_loop(gen, kind, count, inner, reverse, with_state):
    aggr = ("sum", "mean", "max", "std")
    n_tgt = count * inner
    send = rnd(gen, B, count if not reverse else n_tgt, H)
    recv = rnd(gen, B, n_tgt if not reverse else count, H)
    if with_state:
        edge, w = rnd(gen, B, n_tgt, K), rnd(gen, K, H)
        feats = [edge[:, t] for t in range(n_tgt)]
    else:
        edge, w = None, rnd(gen, 1, H)
        feats = [torch.ones(B, 1, dtype=torch.float64)] * n_tgt
    edges = [(t // inner, t) if not reverse else (t, t // inner) for t in range(n_tgt)]
    got = message_pass(send, recv, edge, w, kind=kind, reverse=reverse, aggr=aggr)
    torch.testing.assert_close(got, brute_force(send, recv, edges, feats, w, aggr, "relu"), rtol=1e-12, atol=1e-12)


def test_dense_permutation_equivariance(gen):
    """Permuting senders (with the edge columns) changes nothing; permuting receivers permutes rows."""
    x, w = rnd(gen, B, 4, 6, K), rnd(gen, K, H)
    send, recv = rnd(gen, B, 6, H), rnd(gen, B, 4, H)
    ps, pr = torch.randperm(6, generator=gen), torch.randperm(4, generator=gen)
    aggr = ("sum", "mean", "max", "std")
    out = message_pass(send, recv, x, w, aggr=aggr)
    out2 = message_pass(send[:, ps], recv[:, pr], x[:, pr][:, :, ps], w, aggr=aggr)
    torch.testing.assert_close(out2, out[:, pr], rtol=1e-12, atol=1e-12)
    back = message_pass(recv, send, x, w, aggr=aggr, reverse=True)
    back2 = message_pass(recv[:, pr], send[:, ps], x[:, pr][:, :, ps], w, aggr=aggr, reverse=True)
    torch.testing.assert_close(back2, back[:, ps], rtol=1e-12, atol=1e-12)


def test_gradcheck_reference(gen):
    x = rnd(gen, 1, 3, 2, 2).requires_grad_()
    w = rnd(gen, 2, 3).requires_grad_()
    send, recv = rnd(gen, 1, 2, 3).requires_grad_(), rnd(gen, 1, 3, 3).requires_grad_()
    fn = lambda s, r, e, ww: message_pass(s, r, e, ww, aggr=("sum", "mean", "std"), act="tanh")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (send, recv, x, w))


def test_registered_backend_is_used(gen, monkeypatch):
    import wgraph.kernels.registry

    monkeypatch.setattr(wgraph.kernels.registry, "_BACKENDS", dict(wgraph.kernels.registry._BACKENDS))
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return torch.zeros(B, 4, H, dtype=torch.float64)

    register_backend("spy-test", spy)
    assert "spy-test" in available_backends() and "reference" in available_backends()
    out = message_pass(rnd(gen, B, 3, H), rnd(gen, B, 4, H), rnd(gen, B, 4, 3, K), rnd(gen, K, H), backend="spy-test")
    assert calls == [{"kind": "dense", "reverse": False, "aggr": ("sum",), "act": "relu"}]
    assert torch.equal(out, torch.zeros(B, 4, H, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"backend": "nope"}, "unknown message-passing backend 'nope'.*reference"),
        ({"aggr": "median"}, "median"),
        ({"act": "swish"}, "unknown activation 'swish'"),
        ({"kind": "diagonal"}, "unknown block kind 'diagonal'"),
    ],
)
def test_bad_arguments_name_the_value(gen, kwargs, match):
    with pytest.raises(KernelError, match=match):
        message_pass(rnd(gen, B, 3, H), rnd(gen, B, 4, H), rnd(gen, B, 4, 3, K), rnd(gen, K, H), **kwargs)


def test_bad_shapes(gen):
    send, recv, w = rnd(gen, B, 3, H), rnd(gen, B, 4, H), rnd(gen, K, H)
    with pytest.raises(KernelError, match=r"\(B, out, in // groups, K\)"):
        message_pass(send, recv, rnd(gen, B, 3, 4, K), w)  # transposed edge tensor
    with pytest.raises(KernelError, match="edge_weight"):
        message_pass(send, recv, rnd(gen, B, 4, 3, K), rnd(gen, K, H + 1))
    with pytest.raises(KernelError, match="only valid"):
        message_pass(send, recv, rnd(gen, B, 4, 3, K), w, groups=2)
    with pytest.raises(KernelError, match="do not split into 2 groups"):
        message_pass(send, recv, rnd(gen, B, 4, 1, K), w, kind="grouped", groups=2)
    with pytest.raises(KernelError, match="multiple of sources"):
        message_pass(send, recv, None, rnd(gen, 1, H), kind="identity")


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_activation_table_matches_autograd(act):
    """One table: ``ACTIVATIONS``, the in-place form and ``g * phi'(z)`` of every entry agree with torch's
    autograd, NaN and Inf included; an entry's code is its position."""
    assert list(ACTIVATIONS) == [a.name for a in ACTIVATION_TABLE] and act_code(act) == list(ACTIVATIONS).index(act)
    z = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.5, -2.0], dtype=torch.float64)
    z = z.requires_grad_()
    out = ACTIVATIONS[act](z)
    g = torch.tensor([0.5, -1.0, 2.0, 1.0, 3.0, -0.25, 4.0], dtype=torch.float64)
    (want,) = torch.autograd.grad(out, z, g)
    torch.testing.assert_close(act_grad(z.detach(), g, act), want, equal_nan=True)
    torch.testing.assert_close(apply_act_(z.detach().clone(), act), out.detach(), equal_nan=True)
    with pytest.raises(ValueError, match="no derivative"):
        act_grad(z.detach(), g, "swish")
