"""Scaling symmetries: random_symmetry(scale=True) and permute with per-neuron factors."""

import pytest
import torch
from conftest import outputs_match
from torch import nn

import wgraph
from wgraph.symmetry import Symmetry
from wgraph.zoo import mlp, small_cnn


def _models():
    torch.manual_seed(0)
    return {
        "relu_mlp": (mlp((5, 7, 6, 3)), (4, 5)),
        "tanh_mlp": (mlp((5, 7, 6, 3), nn.Tanh), (4, 5)),
        "cnn": (small_cnn(2, 4, 3), (4, 2, 20, 20)),
        "linear_hidden": (nn.Sequential(nn.Linear(3, 6), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), (4, 3)),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_scaled_symmetry_preserves_the_function(name):
    model, shape = _models()[name]
    model = model.double()
    x = torch.randn(shape, dtype=torch.float64)
    g = wgraph.to_graph(model, x[:1])
    sym = wgraph.random_symmetry(g, seed=3, scale=True)
    assert sym.scales, "no scaled space"
    g2 = g.permute(sym)
    outputs_match(model, g2, x, rtol=1e-9)
    # the weights really changed by more than a permutation
    plain = g.permute(wgraph.random_symmetry(g, seed=3))
    assert not torch.allclose(plain.edges[0], g2.edges[0])
    back = g2.permute(sym.inverse())
    torch.testing.assert_close(back.nodes, g.nodes)
    for a, b in zip(back.edges, g.edges):
        torch.testing.assert_close(a, b)


def test_factors_follow_the_scaling_group():
    relu = wgraph.to_graph(mlp((3, 5, 4, 2)), torch.randn(1, 3))
    tanh = wgraph.to_graph(mlp((3, 5, 4, 2), nn.Tanh), torch.randn(1, 3))
    lin = wgraph.to_graph(nn.Sequential(nn.Linear(3, 6), nn.Linear(6, 2)), torch.randn(1, 3))
    s = wgraph.random_symmetry(relu, seed=0, scale=True).scales
    assert set(s) == {1, 2} and all((v > 0).all() and (v != 1).all() for v in s.values())
    s = wgraph.random_symmetry(tanh, seed=0, scale=True).scales
    assert all((v.abs() == 1).all() and (v == -1).any() for v in s.values())
    (v,) = wgraph.random_symmetry(lin, seed=0, scale=True).scales.values()
    assert (v != 0).all() and (v.abs() != 1).all() and (v < 0).any()
    # the permutation part does not depend on scale=
    a, b = wgraph.random_symmetry(relu, seed=5), wgraph.random_symmetry(relu, seed=5, scale=True)
    assert all(torch.equal(a.perms[k], b.perms[k]) for k in a.perms) and not a.scales


def test_per_network_scales_and_layout_input():
    models = [mlp((3, 5, 2)).double() for _ in range(3)]
    x = torch.randn(4, 3, dtype=torch.float64)
    g = wgraph.to_graph_batch([m.state_dict() for m in models], models[0], x[:1])
    sym = wgraph.random_symmetry(g, seed=1, per_network=True, scale=True)
    assert sym.scales[1].shape == (3, 5)
    g2 = g.permute(sym)
    for i, m in enumerate(models):
        outputs_match(m, g2, x, index=i)
    assert wgraph.random_symmetry(g.layout, seed=0, scale=True).scales[1].shape == (5,)


def test_rules_for_factors_are_enforced():
    relu = wgraph.to_graph(mlp((3, 5, 2)), torch.randn(1, 3))
    tanh = wgraph.to_graph(mlp((3, 5, 2), nn.Tanh), torch.randn(1, 3))
    neg = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])
    with pytest.raises(wgraph.WgraphError, match="positive"):
        relu.permute(Symmetry({}, {1: neg}))
    with pytest.raises(wgraph.WgraphError, match=r"\+1 or -1"):
        tanh.permute(Symmetry({}, {1: torch.full((5,), 2.0)}))
    with pytest.raises(wgraph.WgraphError, match="not permutable"):
        relu.permute(Symmetry({}, {0: torch.ones(3)}))
    gelu = wgraph.to_graph(mlp((3, 5, 2), nn.GELU), torch.randn(1, 3))
    assert not wgraph.random_symmetry(gelu, seed=0, scale=True).scales
    with pytest.raises(wgraph.WgraphError, match="scaling group 'none'"):
        gelu.permute(Symmetry({}, {1: torch.full((5,), 2.0)}))
    # a sign flip alone is a symmetry of tanh networks: exact function match
    sym = Symmetry({}, {1: neg})
    assert not sym.is_identity()
    m = mlp((3, 5, 2), nn.Tanh).double()
    gt = wgraph.to_graph(m, torch.randn(1, 3, dtype=torch.float64))
    outputs_match(m, gt.permute(sym), torch.randn(6, 3, dtype=torch.float64))


def test_scaling_is_what_the_docs_say():
    """bias'[i] = s_i bias[p[i]], W'[o, i] = s_o W[p[o], p[i]] / s_i (hidden-to-hidden weight)."""
    g = wgraph.to_graph(mlp((3, 5, 4, 2)).double(), torch.randn(1, 3, dtype=torch.float64))
    sym = wgraph.random_symmetry(g, seed=2, scale=True)
    g2 = g.permute(sym)
    p1, p2, s1, s2 = sym.perms[1], sym.perms[2], sym.scales[1], sym.scales[2]
    W = g.edges[1][0]
    torch.testing.assert_close(g2.edges[1][0], s2[:, None] * W[p2][:, p1] / s1[None, :])
    b = g.param("0.bias")[0]
    torch.testing.assert_close(g2.param("0.bias")[0], s1 * b[p1])


class _LayerScale(nn.Module):
    """``x * gamma + beta`` on hidden neurons (a layer scale and a learned shift), then ReLU."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)
        self.gamma = nn.Parameter(torch.rand(6) + 0.5)
        self.beta = nn.Parameter(torch.randn(6))

    def forward(self, x):
        return self.b(torch.relu(self.a(x) * self.gamma + self.beta))


@pytest.mark.parametrize(
    "make, features",
    [
        (lambda: nn.Sequential(nn.Linear(3, 6), nn.PReLU(6), nn.Linear(6, 2)), {"prelu"}),
        (lambda: nn.Sequential(nn.Linear(3, 6), nn.PReLU(), nn.Linear(6, 2)), set()),
        (_LayerScale, {"scale", "shift"}),
    ],
)
def test_node_features_follow_their_scaling_rule(make, features):
    """A space that declares a scaling group is scaled by ``random_symmetry(scale=True)`` and
    ``permute`` applies it to every node feature of its layers (issue: a PReLU space declared
    'positive' but ``permute`` refused its slope)."""
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    g = wgraph.to_graph(model, x[:1])
    assert features <= set(g.layout.node_features)
    sym = wgraph.random_symmetry(g, seed=1, scale=True)
    if not sym.scales:  # then the layout must not promise a scaling either
        assert all(g.layout.space_scaling(si) == "none" for si, sp in enumerate(g.layout.spaces) if sp.permutable)
        return
    outputs_match(model, g.permute(sym), x, rtol=1e-9)


def test_a_feature_without_a_rule_admits_permutations_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    g = wgraph.to_graph(model, torch.randn(2, 3, dtype=torch.float64))
    for si, sp in enumerate(g.layout.spaces):
        if sp.permutable:
            assert g.layout.space_scaling(si) == "none"
    assert not wgraph.random_symmetry(g, seed=0, scale=True).scales


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize(
    "act, odd",
    [(nn.Hardtanh(), True), (nn.Hardtanh(-2.0, 2.0), True), (nn.Hardtanh(0.0, 6.0), False), (nn.ReLU6(), False)],
)
def test_hardtanh_is_odd_only_with_symmetric_bounds(act, odd, tracer):
    """An asymmetric clamp (ReLU6, Hardtanh(0, 6)) commutes with no scaling: declaring it odd gave
    sign flips that changed the function."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64) * 4
    g = wgraph.to_graph(model, x[:1], tracer=tracer)
    (hidden,) = [si for si, sp in enumerate(g.layout.spaces) if sp.permutable]
    assert g.layout.space_scaling(hidden) == ("sign" if odd else "none")
    outputs_match(model, g.permute(wgraph.random_symmetry(g, seed=0, scale=True)), x, rtol=1e-9)
