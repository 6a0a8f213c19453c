"""Monomial and MAGEP layers: equivariance under hidden permutations *and* scalings (float64)."""

import functools

import pytest
import torch
from torch import nn

import wgraph
import wgraph.testing
from wgraph.nn.magep import MAGEP
from wgraph.nn.monomial import MonomialLinear, MonomialPool, activation_for, chain_products
from wgraph.nn.np_layers import NPLinear, TupleOp
from wgraph.nn.weight_space import WeightSpace, random_graph
from wgraph.testing import assert_equivariant, assert_invariant, equivariance_error
from wgraph.zoo import mlp, small_cnn

LAYOUTS = {
    "relu_mlp": lambda: wgraph.to_graph(mlp((4, 6, 5, 3)), torch.randn(1, 4)).layout,
    "tanh_mlp": lambda: wgraph.to_graph(mlp((3, 5, 6, 2), nn.Tanh), torch.randn(1, 3)).layout,
    "relu_cnn": lambda: wgraph.to_graph(small_cnn(2, 4, 3), torch.randn(1, 2, 28, 28)).layout,
    "tanh_2layer": lambda: wgraph.to_graph(mlp((3, 7, 2), nn.Tanh), torch.randn(1, 3)).layout,
}


@pytest.fixture
def scaled(monkeypatch):
    """Make wgraph.testing's helpers draw scaled symmetries (permutation + per-neuron factors),
    as if every call passed ``scale=True``."""
    draw = wgraph.testing._symmetries
    monkeypatch.setattr(
        wgraph.testing, "_symmetries", lambda graph, trials, seed, scale=False: draw(graph, trials, seed, True)
    )
    monkeypatch.setattr(wgraph.testing, "random_symmetry", functools.partial(wgraph.random_symmetry, scale=True))


@pytest.fixture(params=list(LAYOUTS))
def graph(request):
    torch.manual_seed(0)
    return random_graph(LAYOUTS[request.param](), 2, seed=4, dtype=torch.float64, scale=0.5)


def _check_scaled_symmetries_are_drawn(g):
    sym = wgraph.testing.random_symmetry(g, seed=0)
    assert sym.scales and not all(bool((s == 1).all()) for s in sym.scales.values())


@pytest.mark.parametrize("cls", [MonomialLinear, MAGEP])
@pytest.mark.parametrize("io_mixing", [False, True])
def test_equivariant_under_permutations_and_scalings(graph, scaled, cls, io_mixing):
    _check_scaled_symmetries_are_drawn(graph)
    lay = graph.layout
    act = TupleOp(activation_for(lay))
    first, second = cls(lay, 1, 3, io_mixing=io_mixing).double(), cls(lay, 3, 2, io_mixing=io_mixing).double()
    assert_equivariant(lambda g: second(act(first(g))).to_graphs(g.layout), graph)
    assert_invariant(lambda g: MonomialPool(lay)(second(act(first(g)))), graph)


def test_chain_products_transform_as_documented(graph, scaled):
    sym = wgraph.testing.random_symmetry(graph, seed=1)
    F, G = chain_products(WeightSpace.from_graph(graph))
    F2, G2 = chain_products(WeightSpace.from_graph(graph.permute(sym)))
    torch.testing.assert_close(F2[-1], F[-1])  # the full product is invariant
    lay = graph.layout
    # F_0 rows are layer-1 neurons: permuted and scaled like b_0
    li = 1
    space = lay.layers[li].space
    p, s = sym.perms.get(space, torch.arange(lay.layers[li].size)), sym.scales[space]
    torch.testing.assert_close(F2[0][:, :, :, :], s[:, None] * F[0][:, :, p])
    torch.testing.assert_close(G2[1], G[1][..., p] / s)


def test_np_layers_are_not_scale_equivariant(scaled):
    """The scaled check is not vacuous: NP's means mix neurons that scale differently."""
    g = random_graph(LAYOUTS["relu_mlp"](), 2, seed=1, dtype=torch.float64)
    layer = NPLinear(g.layout, 1, 2).double()
    assert equivariance_error(lambda h: layer(h).to_graphs(h.layout), g) > 1e-3
    # and a ReLU between Monomial layers breaks the sign group of a tanh network
    t = random_graph(LAYOUTS["tanh_mlp"](), 2, seed=1, dtype=torch.float64)
    a, b = MonomialLinear(t.layout, 1, 3).double(), MonomialLinear(t.layout, 3, 1).double()
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(lambda h: b(a(h).map(torch.relu)).to_graphs(h.layout), t)


def test_magep_is_a_polynomial_beyond_the_linear_layer():
    g = random_graph(LAYOUTS["relu_mlp"](), 1, seed=2, dtype=torch.float64)
    layer = MAGEP(g.layout, 1, 2, poly_scale=1.0).double()
    lin = WeightSpace(*layer.terms(WeightSpace.from_graph(g)), layer.spec)
    out = layer(g)
    assert max((a - b).abs().max() for a, b in zip(out.weights, lin.weights)) > 1e-3
    # the polynomial part of W'_i has degree L + 1 = 4 in the weights (biases zero)
    ws = WeightSpace.from_graph(g)
    z = WeightSpace(ws.weights, [torch.zeros_like(v) for v in ws.biases], ws.spec)
    poly = lambda x: [a - b for a, b in zip(layer(x).weights, WeightSpace(*layer.terms(x), x.spec).weights)]  # noqa: E731
    p1, p2 = poly(z), poly(z * 2.0)
    torch.testing.assert_close(p2[1], 16 * p1[1])


def test_parameter_counts_and_shapes():
    lay = LAYOUTS["relu_cnn"]()
    g = random_graph(lay, 3, seed=0)
    layer = MonomialLinear(lay, 1, 4)
    K, L, n0, nL = (9, 9, 9, 1), 4, 2, 3
    assert sum(p.numel() for p in layer.parameters()) == 4 * (sum(k * k for k in K) + 2 * K[0] * n0 + L) + 4 * nL
    out = MAGEP(lay, 1, 4)(g)
    assert [tuple(w.shape) for w in out.weights] == [(3, 4, *lay.block_shape(i)) for i in range(4)]
    pool = MonomialPool(lay)
    assert pool(out).shape == (3, 4, pool.out_features) == (3, 4, nL * (n0 + 1))
    assert isinstance(activation_for(lay), nn.ReLU)
    assert isinstance(activation_for(LAYOUTS["tanh_mlp"]()), nn.Tanh)


@pytest.mark.parametrize("kind", ["monomial", "magep"])
@pytest.mark.parametrize("arch", ["tanh_mlp", "relu_cnn"])
def test_preset_models_are_scale_invariant(scaled, kind, arch):
    from wgraph.nn.presets import from_preset

    g = random_graph(LAYOUTS[arch](), 3, seed=5, dtype=torch.float64, scale=0.5)
    model = from_preset(kind, g, hidden=3, layers=2, out_dim=2, head_hidden=8).double()
    assert model(g).shape == (3, 2)
    assert_invariant(model, g)


def test_wrong_activation_for_the_group_is_an_error():
    from wgraph.nn.ps_models import PSConfigError, from_config

    with pytest.raises(PSConfigError, match="does not commute"):
        from_config({"type": "monomial", "act": "relu"}, LAYOUTS["tanh_mlp"]())
