"""WeightGraph exports, files, batches and the symmetry helpers."""

import networkx as nx
import pytest
import torch
from conftest import assert_state_dict_exact, outputs_match
from torch import nn

import wgraph
from wgraph.graph import Layout, WeightGraph
from wgraph.testing import assert_equivariant, assert_invariant, equivariance_error
from wgraph.zoo import mlp, resnet_mlp, small_cnn


def _cnn_batch(B=3, seed=0):
    torch.manual_seed(seed)
    models = [small_cnn(channels=4, classes=3) for _ in range(B)]
    g = wgraph.to_graph_batch([m.state_dict() for m in models], models[0], torch.randn(1, 1, 16, 16))
    return models, g


def test_batch_matches_single_conversions():
    models, g = _cnn_batch()
    assert g.batch_size == 3
    for i, m in enumerate(models):
        single = wgraph.to_graph(m, torch.randn(1, 1, 16, 16))
        assert torch.equal(single.nodes[0], g.nodes[i])
        assert_state_dict_exact(g.to_state_dict(i), m.state_dict())


def test_stacked_mapping_input():
    models, g = _cnn_batch()
    stacked = {k: torch.stack([m.state_dict()[k] for m in models]) for k in models[0].state_dict()}
    g2 = wgraph.to_graph_batch(stacked, models[0], torch.randn(1, 1, 16, 16))
    assert torch.equal(g2.nodes, g.nodes)
    assert all(torch.equal(a, b) for a, b in zip(g.edges, g2.edges))


def test_state_dict_errors_name_key_shapes_and_index():
    models, _ = _cnn_batch()
    x = torch.randn(1, 1, 16, 16)
    sds = [m.state_dict() for m in models]
    bad = dict(sds[2])
    del bad["2.bias"]
    with pytest.raises(wgraph.StateDictError, match=r"checkpoint 2: missing '2.bias' \(expected shape \(4,\)\)"):
        wgraph.to_graph_batch([sds[0], sds[1], bad], models[0], x)
    extra = {**sds[1], "head.weight": torch.zeros(1)}
    with pytest.raises(wgraph.StateDictError, match="checkpoint 1: unexpected 'head.weight'"):
        wgraph.to_graph_batch([sds[0], extra], models[0], x)
    shaped = {**sds[1], "8.weight": torch.zeros(3, 5)}
    with pytest.raises(wgraph.StateDictError, match=r"checkpoint 1: '8.weight' has shape \(3, 5\), expected \(3, 4\)"):
        wgraph.to_graph_batch([sds[0], shaped], models[0], x)
    with pytest.raises(wgraph.StateDictError, match=r"checkpoint 0: '8.weight' has shape \(3, 5\)"):
        wgraph.to_graph_batch([shaped], models[0], x)
    with pytest.raises(wgraph.StateDictError, match="no checkpoints"):
        wgraph.to_graph_batch([], models[0], x)


def test_mixed_dtype_and_device_rejected():
    models, _ = _cnn_batch()
    x = torch.randn(1, 1, 16, 16)
    sds = [m.state_dict() for m in models]
    as64 = {k: v.double() for k, v in sds[1].items()}
    mixed = "checkpoint 0 is torch.float32 but checkpoint 1 is torch.float64"
    with pytest.raises(wgraph.IncompatibleBatchError, match=mixed):
        wgraph.to_graph_batch([sds[0], as64], models[0], x)
    half = {**sds[0], "0.bias": sds[0]["0.bias"].double()}
    with pytest.raises(wgraph.IncompatibleBatchError, match="mix dtypes"):
        wgraph.to_graph_batch([half], models[0], x)
    meta = {k: v.to("meta") for k, v in sds[1].items()}
    with pytest.raises(wgraph.IncompatibleBatchError, match="different devices"):
        wgraph.to_graph_batch([sds[0], meta], models[0], x)


def test_nonfinite_weights_are_converted_and_reported():
    models, _ = _cnn_batch()
    sds = [dict(m.state_dict()) for m in models]
    sds[1]["2.weight"] = sds[1]["2.weight"].clone()
    sds[1]["2.weight"][0, 0, 0, 0] = float("nan")
    sds[2]["8.bias"] = torch.full_like(sds[2]["8.bias"], float("inf"))
    g = wgraph.to_graph_batch(sds, models[0], torch.randn(1, 1, 16, 16))
    assert g.has_nonfinite == {"2.weight": [1], "8.bias": [2]}
    assert torch.equal(g.to_state_dict(2)["8.bias"], sds[2]["8.bias"])
    assert not _cnn_batch()[1].has_nonfinite


def test_pyg_export_and_write_back():
    models, g = _cnn_batch(B=2)
    data = g[0].to_pyg()
    lay = g.layout
    assert data.x.shape == (lay.num_nodes, 1)
    assert data.edge_index.shape == (2, lay.num_edges)
    assert data.edge_attr.shape == (lay.num_edges, 9)
    # every edge points back to its parameter values
    sd = models[0].state_dict()
    for e in torch.randint(lay.num_edges, (50,)).tolist():
        name = data.param_names[data.edge_param[e]]
        k = lay.blocks[data.edge_block[e]].kernel_numel
        flat = sd[name].flatten()[data.edge_flat[e] : data.edge_flat[e] + k]
        assert torch.equal(data.edge_attr[e, :k], flat)
        o, i = divmod(int(data.edge_flat[e]) // k, sd[name].shape[1])
        blk = lay.blocks[data.edge_block[e]]
        assert data.edge_index[0, e] == lay.layers[blk.src].start + i
        assert data.edge_index[1, e] == lay.layers[blk.dst].start + o
    batch = g.to_pyg()
    assert batch.num_graphs == 2 and batch.x.shape[0] == 2 * lay.num_nodes
    back = WeightGraph.from_pyg(batch, lay)
    for i in range(2):
        assert_state_dict_exact(back.to_state_dict(i), models[i].state_dict())
    with pytest.raises(wgraph.IncompatibleBatchError):
        WeightGraph.from_pyg(data, wgraph.layout_of(mlp((3, 2)), torch.randn(1, 3)))


def test_pyg_identity_edges():
    g = wgraph.to_graph(resnet_mlp(d_in=4, width=3, depth=1, d_out=2), torch.randn(1, 4))
    data = g.to_pyg()
    ident = data.edge_param == -1
    assert int(ident.sum()) == 3
    assert torch.equal(data.edge_attr[ident, 0], torch.ones(3))


def test_networkx_export():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    g = wgraph.to_graph(m, torch.randn(1, 2)).to_networkx()
    assert isinstance(g, nx.MultiDiGraph)
    assert g.number_of_nodes() == 6 and g.number_of_edges() == 9
    assert g.nodes[0]["kind"] == "input" and g.nodes[5]["kind"] == "output"
    assert g.nodes[3]["bias"] == pytest.approx(m[0].bias[1].item())
    (_, _, attrs), = [e for e in g.edges(data=True) if e[0] == 1 and e[1] == 4]
    assert attrs["param"] == "0.weight" and attrs["value"] == pytest.approx(m[0].weight[2, 1].item())
    assert sorted(g.predecessors(4)) == [0, 1] and g.in_degree(4) == 2 and list(g.successors(4)) == [5]
    assert g.number_of_edges(1, 4) == 1 and g.edges[1, 4, 0] is attrs  # one key dict for both directions
    cnn = small_cnn(channels=2, classes=2)
    conv = wgraph.to_graph(cnn, torch.randn(1, 1, 16, 16)).to_networkx()
    kernels = {(u, v): d for u, v, d in conv.edges(data=True) if d["param"] == "0.weight"}
    assert len(kernels) == 2
    (u, v), d = sorted(kernels.items())[1]  # input 0 -> channel 1
    assert d["kernel"] == "3x3" and "value" not in d
    assert [d[f"w{k}"] for k in range(9)] == pytest.approx(cnn[0].weight[1, 0].flatten().tolist())


def test_networkx_export_writes_graphml(tmp_path):
    g = wgraph.to_graph(resnet_mlp(d_in=3, width=2, depth=1, d_out=2), torch.randn(1, 3))
    conv = wgraph.to_graph(small_cnn(channels=2, classes=2), torch.randn(1, 1, 16, 16))
    for graph in (g, conv):
        nxg = graph.to_networkx()
        nx.write_graphml(nxg, tmp_path / "g.graphml")
        back = nx.read_graphml(tmp_path / "g.graphml")
        assert back.number_of_edges() == nxg.number_of_edges() == graph.num_edges


def test_pyg_index_and_hetero_round_trip():
    models, g = _cnn_batch(B=3)
    lay = g.layout
    one = g.to_pyg(index=2)
    assert torch.equal(one.x, g.nodes[2]) and one.edge_attr.shape == (lay.num_edges, 9)
    het = g.to_pyg(index=1, hetero=True)
    types = {t for _, t, _ in het.edge_types}
    assert types == {"k3x3", "linear"}
    assert het["neuron", "linear", "neuron"].edge_attr.shape[1] == 1
    assert het["neuron", "k3x3", "neuron"].edge_attr.shape[1] == 9
    total = sum(het[t].edge_attr.numel() for t in het.edge_types)
    assert total == sum(p.numel for p in lay.params if p.where == "edges")  # no padding: one value per weight
    sd = models[1].state_dict()
    store = het["neuron", "k3x3", "neuron"]
    for e in torch.randint(store.edge_attr.shape[0], (30,)).tolist():
        name = het.param_names[store.edge_param[e]]
        flat = sd[name].flatten()[store.edge_flat[e] : store.edge_flat[e] + 9]
        assert torch.equal(store.edge_attr[e], flat)
    back = WeightGraph.from_pyg(het, lay)
    assert_state_dict_exact(back.to_state_dict(), sd)
    batch = g.to_pyg(hetero=True)
    back = WeightGraph.from_pyg(batch, lay)
    for i in range(3):
        assert_state_dict_exact(back.to_state_dict(i), models[i].state_dict())
    with pytest.raises(IndexError):
        g.to_pyg(index=3)


def test_save_load_round_trip(tmp_path):
    models, g = _cnn_batch()
    g.save(tmp_path / "g.safetensors")
    g2 = WeightGraph.load(tmp_path / "g.safetensors")
    assert g2.layout == g.layout
    for i in range(3):
        assert_state_dict_exact(g2.to_state_dict(i), models[i].state_dict())
    with pytest.raises(wgraph.FileFormatError, match="does not exist"):
        g.save(tmp_path / "missing" / "g.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(wgraph.FileFormatError, match="junk.safetensors"):
        WeightGraph.load(tmp_path / "junk.safetensors")


def test_layout_json_round_trip():
    lay = wgraph.to_graph(resnet_mlp(), torch.randn(1, 64)).layout
    assert Layout.from_json(lay.to_json()) == lay


def test_select_cat_and_to():
    models, g = _cnn_batch()
    parts = WeightGraph.cat([g[0], g[1:]])
    assert torch.equal(parts.nodes, g.nodes)
    g64 = g.to(torch.float64)
    assert g64.dtype == torch.float64 and g64.edges[0].dtype == torch.float64
    with pytest.raises(wgraph.IncompatibleBatchError):
        WeightGraph.cat([g, wgraph.to_graph(mlp((3, 2)), torch.randn(1, 3))])


def test_per_network_symmetry():
    models, g = _cnn_batch(B=3)
    g = g.to(torch.float64)
    sym = wgraph.random_symmetry(g, seed=0, per_network=True)
    assert all(p.shape == (3, 4) for p in sym.perms.values())
    g2 = g.permute(sym)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    for i, m in enumerate(models):
        outputs_match(m.double(), g2, x, index=i)


def test_permute_rejects_fixed_space():
    _, g = _cnn_batch()
    with pytest.raises(wgraph.WgraphError, match="not permutable"):
        g.permute(wgraph.Symmetry({0: torch.tensor([0])}))


# ------------------------------------------------------------ wgraph.testing
def test_assert_invariant_passes_and_fails():
    _, g = _cnn_batch()
    g = g.to(torch.float64)

    def invariant(gr):  # sums over neurons do not see their order
        return torch.stack([e.flatten(1).pow(2).sum(1) for e in gr.edges] + [gr.nodes.sum((1, 2))], 1)

    def not_invariant(gr):  # the first hidden neuron's bias
        return gr.nodes[:, 1, 0]

    assert_invariant(invariant, g)
    assert equivariance_error(not_invariant, g, invariant=True) > 0
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(not_invariant, g)


def test_assert_equivariant_passes_and_fails():
    _, g = _cnn_batch()
    g = g.to(torch.float64)
    assert_equivariant(lambda gr: torch.tanh(gr.nodes) * 2, g)  # per-node map
    assert_equivariant(
        lambda gr: WeightGraph(gr.layout, gr.nodes * 3, [None if e is None else e.sin() for e in gr.edges]), g
    )
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(lambda gr: gr.nodes.cumsum(1), g)


def test_assert_invariant_warns_when_vacuous():
    g = wgraph.to_graph(nn.Linear(3, 2), torch.randn(1, 3))
    with pytest.warns(UserWarning, match="vacuous"):
        assert_invariant(lambda gr: gr.nodes.sum(), g)


def test_assert_invariant_with_scalings_on_the_network_function():
    """The network's own outputs are invariant under function-preserving permutations and scalings;
    the sum of squared weights is invariant under permutations only."""
    import copy

    torch.manual_seed(0)
    model = mlp((3, 6, 5, 2)).double()  # ReLU: positive scalings
    g = wgraph.to_graph(model, torch.randn(1, 3, dtype=torch.float64))
    x = torch.randn(4, 3, dtype=torch.float64)

    def outputs(gr):
        return wgraph.load_into(copy.deepcopy(model), gr)(x)

    assert_invariant(outputs, g, scale=True)
    norm = lambda gr: sum(e.pow(2).sum() for e in gr.edges if e is not None)  # noqa: E731
    assert_invariant(norm, g)
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(norm, g, scale=True)
