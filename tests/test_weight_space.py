"""The weight-space view of chain WeightGraphs (wgraph.nn.weight_space)."""

import pytest
import torch
from torch import nn

import wgraph
from wgraph.nn.weight_space import (
    ChainSpec,
    WeightSpace,
    WeightSpaceError,
    flatten_kernel,
    random_graph,
    unflatten_kernel,
)
from wgraph.zoo import mlp, resnet_mlp, small_cnn


def test_view_of_mlp_is_the_parameters():
    model = mlp((5, 7, 3))
    g = wgraph.to_graph(model, torch.randn(1, 5))
    ws = WeightSpace.from_graph(g)
    sd = model.state_dict()
    assert ws.channels == 1 and ws.batch_size == 1 and ws.num_layers == 2
    assert ws.spec.sizes == (5, 7, 3) and ws.spec.kernels == ((), ())
    for i, key in enumerate(["0", "2"]):
        assert torch.equal(ws.weights[i][0, 0], sd[f"{key}.weight"])
        assert torch.equal(ws.biases[i][0, 0], sd[f"{key}.bias"])
    assert ws.weights[0].data_ptr() == g.edges[0].data_ptr()  # a view, not a copy


def test_view_of_cnn_and_round_trip():
    model = small_cnn(channels=4)
    g = wgraph.to_graph(model, torch.randn(1, 1, 28, 28))
    ws = WeightSpace.from_graph(g)
    assert ws.weights[0].shape == (1, 1, 4, 1, 3, 3) and ws.weights[-1].shape == (1, 1, 10, 4)
    assert ws.spec.kernel_numels == (9, 9, 9, 1)
    assert ws.spec.hidden_scaling == "positive"
    back = ws.to_graph(g.layout).to_state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k


def test_layer_without_bias():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2))
    g = wgraph.to_graph(model, torch.randn(1, 3))
    ws = WeightSpace.from_graph(g)
    assert ws.spec.has_bias == (False, True)
    assert torch.equal(ws.biases[0], torch.zeros(1, 1, 4))
    assert ws.spec.hidden_scaling == "sign"
    sd = ws.to_graph(g.layout).to_state_dict()
    assert set(sd) == set(model.state_dict())


def test_residual_layout_is_rejected_naming_the_block():
    g = wgraph.to_graph(resnet_mlp(d_in=6, width=4, depth=2, d_out=3), torch.randn(1, 6))
    with pytest.raises(WeightSpaceError, match="residual") as e:
        WeightSpace.from_graph(g)
    assert isinstance(e.value, wgraph.WgraphError)
    assert "identity" in str(e.value)


def test_shape_errors():
    w = [torch.randn(2, 1, 4, 3), torch.randn(2, 1, 2, 5)]
    b = [torch.randn(2, 1, 4), torch.randn(2, 1, 2)]
    with pytest.raises(WeightSpaceError, match="reads 5 neurons"):
        WeightSpace(w, b)
    with pytest.raises(WeightSpaceError, match="one of each"):
        WeightSpace(w[:1], b)
    with pytest.raises(WeightSpaceError, match="expected a WeightGraph"):
        from wgraph.nn.weight_space import as_weight_space

        as_weight_space(torch.zeros(3))


def test_arithmetic_and_channels():
    lay = wgraph.to_graph(mlp((3, 4, 2)), torch.randn(1, 3)).layout
    ws = WeightSpace.from_graph(random_graph(lay, 2, seed=1))
    two = ws.cat(ws * 2)
    assert two.channels == 2
    assert torch.equal(two.weights[1][:, 1], 2 * ws.weights[1][:, 0])
    assert torch.equal((ws + ws).biases[0], 2 * ws.biases[0])
    graphs = two.to_graphs(lay)
    assert len(graphs) == 2 and torch.equal(graphs[1].edges[0], 2 * graphs[0].edges[0])


def test_flatten_kernel_round_trip_and_order():
    w = torch.randn(2, 3, 4, 5, 2, 3)
    f = flatten_kernel(w)
    assert f.shape == (2, 18, 4, 5)
    assert torch.equal(f[:, 1 * 6 + 4], w[:, 1, :, :, 1, 1])  # channel-major, then kernel position
    assert torch.equal(unflatten_kernel(f, (2, 3)), w)


def test_spec_is_cached_per_layout():
    lay = wgraph.to_graph(mlp((3, 4, 2)), torch.randn(1, 3)).layout
    assert ChainSpec.from_layout(lay) is ChainSpec.from_layout(lay)


def test_flatten_without_global_pooling_is_rejected():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    try:
        g = wgraph.to_graph(model, torch.randn(1, 1, 6, 6))
    except wgraph.UnsupportedOperation:
        pytest.skip("this converter does not support flatten of feature maps")
    with pytest.raises(WeightSpaceError, match="not a chain"):
        WeightSpace.from_graph(g)
