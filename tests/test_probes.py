"""Probe features (wgraph.zoo.probes): each neuron's pre-activation on fixed inputs, as node
features that move with their neurons under every symmetry of the network."""

import pytest
import torch

import wgraph
from wgraph.errors import ZooError
from wgraph.zoo import Zoo, generate_cnn_zoo, generate_inr_zoo
from wgraph.zoo.probes import probe_columns, probe_features, probe_inputs

K = 5


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory):
    return generate_cnn_zoo(tmp_path_factory.mktemp("cnn"), runs=4, checkpoints=1, epochs=1, progress=False)


@pytest.fixture(scope="module")
def relu_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("relu")
    return generate_cnn_zoo(path, runs=3, checkpoints=1, epochs=1, activations=("relu",), progress=False)


def probes_of(g: wgraph.WeightGraph) -> torch.Tensor:
    cols = [g.layout.node_features.index(c) for c in probe_columns(K)]
    return g.nodes[..., cols]


def from_graph(zoo: Zoo, g: wgraph.WeightGraph) -> Zoo:
    """A zoo holding the weights of ``g`` (the same table)."""
    sds = [g.to_state_dict(i) for i in range(g.batch_size)]
    weights = {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}
    return Zoo(zoo.kind, zoo.arch, weights, zoo.table)


def test_output_probes_are_the_networks_outputs(cnn_zoo):
    g = cnn_zoo.graphs(probes=K)
    x = probe_inputs(cnn_zoo, K)
    out = g.layout.nodes_of_kind("output")
    for i in range(len(cnn_zoo)):
        net = cnn_zoo.network(i).double()  # its own activation
        torch.testing.assert_close(probes_of(g)[i, out], net(x).t().to(g.dtype))


@pytest.mark.parametrize("scale", [False, True])
def test_probes_move_with_their_neurons(relu_zoo, scale):
    """Probe features of permuted (and, for ReLU, rescaled) weights are the permuted (rescaled)
    probe features: they are equivariant, as a graph NFN's inputs must be."""
    g = relu_zoo.graphs(probes=K).to(torch.float64)
    sym = wgraph.random_symmetry(g, 3, per_network=True, scale=scale)
    moved = wgraph.permute(g, sym)
    assert not torch.allclose(probes_of(moved), probes_of(g))
    recomputed = probe_features(from_graph(relu_zoo, moved), g.layout, probe_inputs(relu_zoo, K))
    torch.testing.assert_close(probes_of(moved), recomputed, rtol=1e-6, atol=1e-6)  # stored in float32


def test_inr_probes_and_training_option(tmp_path):
    zoo = generate_inr_zoo(tmp_path / "inr", images=4, steps=3, progress=False)
    g = zoo.graphs(probes=K)
    assert g.layout.node_features[-K:] == probe_columns(K)
    inputs = g.layout.nodes_of_kind("input")
    torch.testing.assert_close(probes_of(g)[0, inputs], probe_inputs(zoo, K).t().to(g.dtype))
    for i in range(len(zoo)):  # the weights still round-trip exactly
        sd = g.to_state_dict(i)
        assert all(torch.equal(sd[k], zoo.weights[k][i]) for k in zoo.weights)
    with pytest.raises(ZooError, match="at least 1"):
        probe_inputs(zoo, 0)
