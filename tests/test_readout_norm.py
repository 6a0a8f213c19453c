"""What lets graph NFNs learn on zoos of near-identical networks: readout normalization across
networks (statistics of the training zoo), the dead-unit check, small embedding initializations,
and per-network settings (the activation) carried in the graph."""

import pytest
import torch

import wgraph
from wgraph.nn import GNNConfig, GraphNFN, ReadoutConfig
from wgraph.nn.readout import ReadoutError
from wgraph.testing import assert_invariant
from wgraph.zoo import generate_cnn_zoo, mlp


def zoo_graph(batch: int = 12, seed: int = 0) -> wgraph.WeightGraph:
    """MLPs that differ little from network to network (like a zoo from one initialization)."""
    torch.manual_seed(seed)
    base = mlp([4, 6, 5, 3])
    sds = [{k: v + 0.02 * torch.randn_like(v) for k, v in base.state_dict().items()} for _ in range(batch)]
    return wgraph.to_graph_batch(sds, base, torch.randn(1, 4)).to(torch.float64)


def build(g, norm: str, **kw) -> GraphNFN:
    torch.manual_seed(0)
    cfg = GNNConfig(readout=ReadoutConfig(pool=("mean", "max"), hidden=16, norm=norm))
    model = GraphNFN(g.layout, cfg, **{"hidden": 8, "layers": 2, "out_dim": 3, **kw}).double()
    model.fit_normalization(g)
    return model


@pytest.mark.parametrize("norm", ["batch", "zoo", "center"])
def test_refreshed_statistics_are_the_zoos(norm):
    g = zoo_graph()
    model = build(g, norm)
    model.refresh_statistics(g, batch_size=5)  # in chunks: the statistics of all 12 networks
    model.eval()
    z = model.pooled(g)
    normalized = model.head.normalize(z)
    if norm != "center":  # each feature standardized over the zoo (affine starts at identity)
        torch.testing.assert_close(normalized.mean(0), torch.zeros_like(normalized[0]), atol=1e-10, rtol=0)
        var = z.var(0, unbiased=False)
        torch.testing.assert_close(normalized.var(0, unbiased=False), var / (var + model.head.norm.eps))
    else:  # centered, one scale for every feature: relative scales are kept
        torch.testing.assert_close(normalized.mean(0), torch.zeros_like(normalized[0]), atol=1e-10, rtol=0)
        scale = (z.var(0, unbiased=False).mean() + model.head.norm.eps).sqrt()
        torch.testing.assert_close(normalized * scale, z - z.mean(0))
    torch.testing.assert_close(model(g), model.head.mlp(normalized))
    state = model.state_dict()  # saved with the model
    torch.testing.assert_close(state["head.norm.running_mean"], z.mean(0))


def test_raw_pooled_features_barely_differ_between_networks():
    """Why the normalization is needed: without it the MLP sees nearly one point."""
    g = zoo_graph()
    model = build(g, "none").eval()
    z = model.pooled(g)
    assert (z.std(0) / z.abs().mean(0).clamp_min(1e-12)).median() < 0.2
    model_bn = build(g, "batch")
    model_bn.refresh_statistics(g)
    model_bn.eval()
    spread = lambda out: float(out.std(0).mean())  # noqa: E731
    assert spread(model_bn(g)) > 2 * spread(model(g))


@pytest.mark.parametrize("norm", ["none", "batch", "zoo", "center"])
def test_normalized_readout_is_invariant(norm):
    g = zoo_graph(batch=4)
    model = build(g, norm)
    model.refresh_statistics(g)
    assert_invariant(model.eval(), g, scale=False)


def test_a_list_is_normalized_together():
    """Graphs given as a list: one normalization over all of them, in training mode too."""
    g = zoo_graph(batch=6)
    model = build(g, "batch").train()
    torch.testing.assert_close(model([g[0:2], g[2:6]]), model(g))


def test_dead_units_are_counted():
    g = zoo_graph()
    model = build(g, "none")
    first = model.head.mlp[0]
    assert model.dead_units(g)["total"] == first.out_features
    with torch.no_grad():
        first.bias.fill_(-1e6)  # every unit off for every network
    assert model.dead_units(g) == {"dead": first.out_features, "total": first.out_features}
    with torch.no_grad():
        first.bias.fill_(1e6)
    assert model.dead_units(g)["dead"] == 0


def test_unknown_norm_is_an_error():
    with pytest.raises(wgraph.WgraphError, match="norm"):
        build(zoo_graph(batch=2), "layer")
    assert issubclass(ReadoutError, wgraph.WgraphError)


def test_embeddings_start_at_the_scale_of_the_features():
    g = zoo_graph(batch=2)
    H = 64
    model = build(g, "none", hidden=H)
    for emb in model.node_encoder.embeddings():
        assert abs(float(emb.weight.std()) - H**-0.5) < 0.3 * H**-0.5


def test_per_network_activation_is_in_the_graph(tmp_path):
    """A CNN zoo samples each run's activation; the graph carries it as one-hot node features on
    hidden neurons, the weights round-trip exactly, and a graph NFN sees the difference."""
    zoo = generate_cnn_zoo(tmp_path / "zoo", runs=6, checkpoints=1, epochs=1, progress=False)
    g = zoo.graphs()
    acts = sorted(set(zoo.table["activation"].tolist()))
    assert len(acts) > 1
    names = [f"activation={a}" for a in acts]
    assert g.layout.node_features[-len(names) :] == tuple(names)
    hidden = g.layout.node_kind == wgraph.layout.NODE_KINDS.index("hidden")
    for i, a in enumerate(zoo.table["activation"]):
        onehot = g.nodes[i][:, -len(names) :]
        assert torch.equal(onehot[hidden], torch.tensor([[float(n == f"activation={a}") for n in names]]).expand(
            int(hidden.sum()), -1).to(onehot))
        assert not onehot[~hidden].any()
        sd = g.to_state_dict(i)
        assert all(torch.equal(sd[k], zoo.weights[k][i]) for k in zoo.weights)
    assert zoo.subset([0]).graphs().layout == g.layout  # the columns do not depend on the selection
    s = wgraph.random_symmetry(g, 0, per_network=True)
    assert torch.equal(wgraph.permute(g, s).nodes[..., -len(names) :], g.nodes[..., -len(names) :])
    model = GraphNFN(g.layout, hidden=8, layers=1).double().eval()
    g = g.to(torch.float64)
    flipped = wgraph.WeightGraph(g.layout, g.nodes.clone(), list(g.edges))
    flipped.nodes[..., -len(names) :] = flipped.nodes[..., -len(names) :].flip(-1)
    assert not torch.allclose(model(g), model(flipped))


@pytest.mark.parametrize("norm", ["batch", "center"])
def test_one_network_in_training_mode_uses_the_stored_statistics(norm):
    g = zoo_graph(batch=4)
    model = build(g, norm)
    model.refresh_statistics(g)
    expected = model.eval()(g[1])
    torch.testing.assert_close(model.train()(g[1]), expected)


def test_zoo_statistics_are_used_while_training_too():
    """norm = "zoo": a network's output does not depend on the other networks of its batch."""
    g = zoo_graph(batch=6)
    model = build(g, "zoo")
    model.refresh_statistics(g)
    torch.testing.assert_close(model.train()(g)[:2], model(g[0:2]))
    torch.testing.assert_close(model.train()(g), model.eval()(g))
