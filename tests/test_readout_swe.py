"""The sliced-Wasserstein embedding readout (``readout.pool = ["swe"]``) of the graph NFN: what it
computes, its invariance on converted models, empty groups, gradients, bad keys, and training."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_tasks import cnn_zoo, write_zoo

import wgraph
from wgraph.cli import main
from wgraph.errors import ConfigError
from wgraph.graph import NODE_KINDS
from wgraph.nn import GNNConfig, GraphNFN, ReadoutConfig, from_preset
from wgraph.nn.readout import READOUT_NORMS, InvariantReadout, ReadoutError
from wgraph.testing import assert_invariant
from wgraph.zoo import mlp
from wgraph.zoo.archs import digits_cnn


def cnn_graphs(batch: int = 3) -> wgraph.WeightGraph:
    """``batch`` independently initialized digits CNNs, converted, in float64."""
    torch.manual_seed(0)
    model = digits_cnn(channels=4)
    sds = [digits_cnn(channels=4).state_dict() for _ in range(batch)]
    return wgraph.to_graph_batch(sds, model, torch.randn(1, 1, 8, 8)).to(torch.float64)


def build(g, pool=("swe",), norm="none", **readout) -> GraphNFN:
    torch.manual_seed(0)
    cfg = GNNConfig(readout=ReadoutConfig(pool=pool, hidden=16, norm=norm, swe_slices=6, swe_references=5, **readout))
    model = GraphNFN(g.layout, cfg, hidden=8, layers=2, out_dim=2).double()
    model.fit_normalization(g)
    model.refresh_statistics(g)
    return model.eval()


@pytest.mark.parametrize("norm", READOUT_NORMS)
@pytest.mark.parametrize("pool", [("swe",), ("mean", "swe")])
def test_swe_readout_is_invariant_on_a_converted_cnn(pool, norm):
    g = cnn_graphs()
    model = build(g, pool, norm, per_layer=True)
    assert_invariant(model, g, trials=3, atol=1e-8, rtol=0)


def test_swe_features_are_the_embedding_of_each_group():
    """The pooled features are, group by group (node kinds, then layers), that group's embedding of
    its node states, of width H; reordering the nodes inside a group changes nothing, moving one
    node's state does change its group's feature."""
    g = cnn_graphs(2)
    model = build(g, per_layer=True)
    h, _ = model.node_states(g)
    lay = g.layout
    sets = [h[:, lay.nodes_of_kind(k)] for k in NODE_KINDS] + [h[:, l.start : l.stop] for l in lay.layers]
    outputs = h[:, lay.nodes_of_kind("output")].flatten(1)
    want = torch.cat([emb(s) for emb, s in zip(model.head.swe, sets)] + [outputs], 1)
    assert len(model.head.swe) == len(sets) and want.shape[1] == 8 * len(sets) + 8 * 10
    torch.testing.assert_close(model.head.features(lay, h), want, atol=1e-12, rtol=0)
    layer = next(l for l in lay.layers if l.kind == "hidden")
    nodes = torch.arange(layer.start, layer.stop)
    shuffled = h.clone()
    shuffled[:, nodes] = h[:, nodes[torch.randperm(len(nodes))]]
    torch.testing.assert_close(model.head.features(lay, shuffled), want, atol=1e-12, rtol=0)
    moved = h.clone()
    moved[:, nodes[0]] += 3.0
    diff = (model.head.features(lay, moved) - want).abs()
    assert diff[:, 8:16].amax() > 1e-3  # the hidden kind's embedding saw it
    assert diff[:, 8 * (3 + lay.layers.index(layer)) :][:, :8].amax() > 1e-3  # and its layer's


def test_empty_group_pools_to_zeros():
    torch.manual_seed(0)
    g = wgraph.to_graph(mlp([4, 3]), torch.randn(1, 4)).to(torch.float64)  # no hidden neurons
    model = build(g, pool=("mean", "swe"))
    h, _ = model.node_states(g)
    z = model.head.features(g.layout, h)
    hidden_part = z[:, 2 * 8 : 4 * 8]  # (mean, swe) of the second kind, "hidden"
    assert NODE_KINDS[1] == "hidden" and torch.all(hidden_part == 0)
    assert torch.isfinite(model(g)).all()


def test_gradients_reach_the_references():
    g = cnn_graphs()
    model = build(g, pool=("mean", "swe")).train()
    model(g).square().sum().backward()
    for emb in model.head.swe:
        assert emb.reference.grad is not None and emb.reference.grad.abs().amax() > 0
        assert emb.head.weight.grad.abs().amax() > 0


def test_bad_pool_and_swe_sizes_are_clear_errors():
    g = cnn_graphs(1)
    with pytest.raises(ConfigError, match=r"pool = 'median' is not one of \['mean', 'max', 'sum', 'swe'\]"):
        from_preset("gnn", g, readout={"pool": ["swe", "median"]})
    with pytest.raises(ConfigError, match="'readout.swe_references' must be a positive integer, got 0"):
        from_preset("gnn", g, readout={"pool": ["swe"], "swe_references": 0})
    with pytest.raises(ConfigError, match="unknown key 'readout.swe_slice'.*'readout.swe_slices'"):
        from_preset("gnn", g, readout={"swe_slice": 3})
    with pytest.raises(ReadoutError, match="readout pool must be a non-empty list"):
        InvariantReadout([g.layout], 8, 1, pool=("sw",))


def test_gnn_swe_preset_trains_through_the_cli(tmp_path):
    zoo = write_zoo(cnn_zoo(runs=8, checkpoints=2), tmp_path / "cnn")
    preset = tmp_path / "tiny-swe.toml"
    text = (wgraph.nn.presets.MODELS_DIR / "gnn-swe.toml").read_text()
    preset.write_text(text.replace("hidden = 64", "hidden = 16").replace("layers = 4", "layers = 1"))
    out = tmp_path / "out"
    argv = ["train", "--task", "generalization", "--model", str(preset), "--zoo", str(zoo), "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--seed", "0", "--no-progress"]
    assert main(argv) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["history"][-1]["grad_norm"] > 0 and r["history"][-1]["epoch"] == 1.0
    assert all(torch.isfinite(torch.tensor(v)) for v in r["metrics"]["test"].values())
    saved = load_file(out / "model.safetensors")  # the trained model has one embedding per node kind
    assert [tuple(saved[f"head.swe.{i}.reference"].shape) for i in range(3)] == [(8, 16)] * 3
