"""NP / HNP layers, pools and encodings: permutation equivariance (float64) and behaviour."""

import pytest
import torch

import wgraph
from wgraph.nn.np_layers import (
    HNPLinear,
    HNPPool,
    IOSinusoidalEncoding,
    LearnedPosEmbedding,
    NPLinear,
    NPPool,
    TupleOp,
)
from wgraph.nn.weight_space import WeightSpace, WeightSpaceError, random_graph
from wgraph.testing import assert_equivariant, assert_invariant, equivariance_error
from wgraph.zoo import mlp, small_cnn

LAYOUTS = {
    "mlp3": lambda: wgraph.to_graph(mlp((5, 7, 6, 3)), torch.randn(1, 5)).layout,
    "mlp2": lambda: wgraph.to_graph(mlp((4, 6, 3)), torch.randn(1, 4)).layout,
    "mlp5": lambda: wgraph.to_graph(mlp((3, 5, 4, 6, 5, 2)), torch.randn(1, 3)).layout,
    "cnn": lambda: wgraph.to_graph(small_cnn(2, 4, 3), torch.randn(1, 2, 28, 28)).layout,
}


@pytest.fixture(params=list(LAYOUTS))
def graph(request):
    torch.manual_seed(0)
    return random_graph(LAYOUTS[request.param](), 2, seed=1, dtype=torch.float64)


def _stack(first, second):
    """fn: graph -> per-channel output graphs of second(tanh(first(graph)))."""
    act = TupleOp(torch.nn.Tanh())
    return lambda g: second(act(first(g))).to_graphs(g.layout)


@pytest.mark.parametrize("kind", ["np", "hnp"])
def test_linear_layers_are_equivariant(graph, kind):
    lay = graph.layout
    make = (lambda a, b: NPLinear(lay, a, b)) if kind == "np" else (lambda a, b: HNPLinear(lay, a, b))
    first, second = make(1, 3).double(), make(3, 2).double()
    assert_equivariant(_stack(first, second), graph)
    assert_invariant(lambda g: HNPPool(lay)(second(first(g))), graph)
    assert_invariant(lambda g: NPPool(lay)(second(first(g))), graph)


def test_np_with_io_embedding_and_encodings_is_equivariant(graph):
    lay = graph.layout
    enc = IOSinusoidalEncoding(lay, num_bands=2)
    first = NPLinear(lay, enc.num_out_chan(1), 3, io_embed=True).double()
    pos = LearnedPosEmbedding(lay, 3).double()
    assert_equivariant(lambda g: pos(first(enc(g))).to_graphs(g.layout), graph)


def test_equivariance_check_is_not_vacuous(graph):
    """The check would catch a layer that treats hidden neurons by position."""
    lay = graph.layout
    layer = NPLinear(lay, 1, 2).double()

    def broken(g):
        out = layer(g)
        w = list(out.weights)
        ramp = torch.arange(w[0].shape[2], dtype=w[0].dtype)  # a factor per output neuron of the first layer
        w[0] = w[0] * ramp[(None, None, slice(None), *(None,) * (w[0].dim() - 3))]
        return WeightSpace(w, out.biases, out.spec).to_graphs(g.layout)

    assert equivariance_error(broken, graph) > 1e-3
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(broken, graph)


def test_np_is_also_equivariant_to_input_permutations():
    """NP assumes every neuron space permutable: permuting the input neurons permutes W_0's columns."""
    lay = LAYOUTS["mlp3"]()
    g = random_graph(lay, 2, seed=3, dtype=torch.float64)
    layer = NPLinear(lay, 1, 2).double()
    p = torch.randperm(5)
    g2 = wgraph.WeightGraph(lay, g.nodes, [g.edges[0][:, :, p], *g.edges[1:]])
    a, b = layer(g), layer(g2)
    torch.testing.assert_close(b.weights[0], a.weights[0][..., p])
    torch.testing.assert_close(b.weights[1], a.weights[1])
    # HNP is not: the input neurons have an identity
    h = HNPLinear(lay, 1, 2).double()
    assert (h(g2).weights[1] - h(g).weights[1]).abs().max() > 1e-6


def test_output_shapes_and_gradients():
    lay = LAYOUTS["cnn"]()
    g = random_graph(lay, 3, seed=0)
    for layer in (NPLinear(lay, 1, 4), HNPLinear(lay, 1, 4)):
        out = layer(g)
        assert [tuple(w.shape) for w in out.weights] == [(3, 4, *lay.block_shape(i)) for i in range(4)]
        assert [tuple(b.shape) for b in out.biases] == [(3, 4, 4), (3, 4, 4), (3, 4, 4), (3, 4, 3)]
        loss = sum(w.square().sum() for w in out.weights) + sum(b.square().sum() for b in out.biases)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    assert NPPool(lay)(g).shape == (3, 1, NPPool(lay).out_features) == (3, 1, 9 * 3 + 1 + 4)
    assert HNPPool(lay)(g).shape == (3, 1, 2 * 9 + 1 + 9 + 1 + 9 + 1 + 3 + 3)


def test_errors():
    lay = LAYOUTS["mlp3"]()
    g = random_graph(lay, 1)
    with pytest.raises(WeightSpaceError, match="expects 2 input channels"):
        NPLinear(lay, 2, 2)(g)
    other = random_graph(LAYOUTS["mlp2"](), 1)
    with pytest.raises(WeightSpaceError, match="was built for chain"):
        HNPLinear(lay, 1, 2)(other)
    one = wgraph.to_graph(torch.nn.Sequential(torch.nn.Linear(3, 2)), torch.randn(1, 3)).layout
    with pytest.raises(WeightSpaceError, match="at least 2 layers"):
        HNPLinear(one, 1, 1)


# ------------------------------------------------------------------ models and presets
@pytest.mark.parametrize("kind", ["np", "hnp"])
def test_preset_models_are_invariant(kind):
    from wgraph.nn.presets import from_preset

    g = random_graph(LAYOUTS["cnn"](), 3, seed=2, dtype=torch.float64)
    model = from_preset(kind, g, hidden=4, layers=2, out_dim=2, head_hidden=8).double()
    assert model(g).shape == (3, 2)
    assert_invariant(model, g)
    if kind == "hnp":
        enc = from_preset(kind, g, hidden=3, layers=1, encoding="sinusoidal").double()
        assert_invariant(enc, g)


def test_config_errors_name_the_key():
    from wgraph.nn.ps_models import PSConfigError, from_config

    lay = LAYOUTS["mlp3"]()
    with pytest.raises(PSConfigError, match="'widht'"):
        from_config({"type": "np", "widht": 3}, lay)
    with pytest.raises(PSConfigError, match="'io_mixing'"):
        from_config({"type": "np", "io_mixing": True}, lay)  # a monomial-only key
    with pytest.raises(PSConfigError, match="unknown parameter-sharing model type"):
        from_config({"type": "nope"}, lay)
    with pytest.raises(PSConfigError, match="'hidden' must be a positive integer"):
        from_config({"type": "hnp", "hidden": 0}, lay)
    with pytest.raises(PSConfigError, match="one architecture"):
        from_config({"type": "np"}, [lay, lay])
    assert issubclass(PSConfigError, wgraph.WgraphError)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 64, 65)])  # small and large o*i take different paths
def test_fused_weight_update_gradients(shape):
    from wgraph.nn.np_layers import _row_col_means
    from wgraph.nn.weight_space import ChannelMix

    B, X, o, i = shape
    g = torch.Generator().manual_seed(0)
    M = torch.randn(4, X, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(B, X, o, i, dtype=torch.float64, generator=g, requires_grad=True)
    row = torch.randn(B, 4, i, dtype=torch.float64, generator=g, requires_grad=True)
    col = torch.randn(B, 4, o, dtype=torch.float64, generator=g, requires_grad=True)
    const = torch.randn(B, 4, dtype=torch.float64, generator=g, requires_grad=True)
    ref = torch.einsum("yx,bxjk->byjk", M, W) + row[:, :, None, :] + col[..., None] + const[..., None, None]
    torch.testing.assert_close(ChannelMix.apply(M, W, row, col, const), ref)
    if o * i < 1000:
        assert torch.autograd.gradcheck(lambda *a: ChannelMix.apply(*a), (M, W, row, col, const))
        assert torch.autograd.gradcheck(lambda w: _row_col_means([w])[0][0] * 2 + _row_col_means([w])[1][0].sum(), (W,))
    else:
        dz = torch.randn_like(ref)
        got = torch.autograd.grad(ChannelMix.apply(M, W, row, col, const), (M, W, row, col, const), dz)
        want = torch.autograd.grad(ref, (M, W, row, col, const), dz)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_weight_gradient_accumulates_in_place():
    """W's two gradients (channel mix, row / column means) are summed into the mix's gradient, not
    into a third W-sized tensor: that gradient must own its storage (not be a view)."""
    from wgraph.nn.np_layers import _row_col_means
    from wgraph.nn.weight_space import ChannelMix

    M, W = torch.randn(4, 3), torch.randn(2, 3, 64, 65, requires_grad=True)  # large o*i path
    r, c = _row_col_means([W])
    z = ChannelMix.apply(M, W, None, None, None)
    ptr = []
    z.grad_fn.register_hook(lambda grad_in, grad_out: ptr.append(grad_in[1].data_ptr()))
    (z.sum() + r[0].sum() + c[0].sum()).backward()
    assert W.grad.data_ptr() == ptr[0]
