"""Layout geometry: the nodes a neuron space moves and the nodes a block connects, checked against
what the symmetry actually does and against the edge lists."""

import torch
from torch import nn

import wgraph
from wgraph.zoo import small_cnn


class _Concat(nn.Module):
    """Two branches concatenated, then flattened over positions: composite layers with segments."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(5 * 4, 4)

    def forward(self, x):
        h = torch.cat([self.a(x).relu(), self.b(x).relu()], dim=1)
        return self.head(self.pool(h).flatten(1))


def _layouts():
    return [
        wgraph.layout_of(small_cnn(channels=4, classes=3), torch.randn(1, 1, 16, 16)),
        wgraph.layout_of(_Concat(), torch.randn(1, 1, 8, 8)),
        wgraph.layout_of(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), torch.randn(1, 3)),
    ]


def test_fixed_nodes_are_exactly_those_no_symmetry_moves():
    for lay in _layouts():
        moved = torch.zeros(lay.num_nodes, dtype=torch.bool)
        for seed in range(20):
            sym = wgraph.random_symmetry(lay, seed=seed)
            moved |= sym.node_permutation(lay, 1)[0] != torch.arange(lay.num_nodes)
        assert torch.equal(~moved, lay.fixed_nodes)
        assert not lay.fixed_nodes[lay.nodes_of_kind("hidden")].all()
        assert lay.fixed_nodes[lay.nodes_of_kind("input")].all() and lay.fixed_nodes[lay.nodes_of_kind("output")].all()


def test_space_runs_cover_segments_and_spatial_positions():
    lay = _layouts()[1]
    composite = [si for si, sp in enumerate(lay.spaces) if sp.segments]
    assert composite, "the concatenation should mirror its parts' spaces"
    for si in composite:
        runs = lay.space_runs(si)
        assert len(runs) == len(lay.spaces[si].layers) + len(lay.spaces[si].segments)
    flat = lay.node_spatial >= 0
    assert flat.any()
    assert int(lay.node_spatial.max()) == 3  # a 2 x 2 pooled map: positions 0..3


def test_node_scale_repeats_over_runs():
    lay = _layouts()[1]
    si = next(si for si, sp in enumerate(lay.spaces) if sp.segments and sp.permutable)
    size = lay.spaces[si].size
    s = torch.arange(2, size + 2, dtype=torch.float64)[None]
    scale = lay.node_scale({si: s}, 1)[0]
    for base, inner in lay.space_runs(si):
        assert torch.equal(scale[base : base + size * inner], s[0].repeat_interleave(inner))
    assert int((scale != 1).sum()) == sum(size * inner for _, inner in lay.space_runs(si))


def test_block_nodes_agree_with_edge_lists():
    for lay in _layouts():
        for i in range(len(lay.blocks)):
            src, dst = lay.block_nodes(i)
            edges = lay.block_edge_index(i)
            nodes = torch.arange(lay.num_nodes)
            assert set(edges[0].tolist()) == set(nodes[src].tolist())
            assert set(edges[1].tolist()) == set(nodes[dst].tolist())


def test_fingerprint_is_structural():
    a, b, c = _layouts()
    again = wgraph.layout_of(small_cnn(channels=4, classes=3), torch.randn(1, 1, 16, 16))
    assert a.fingerprint == again.fingerprint == wgraph.Layout.from_json(a.to_json()).fingerprint
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    assert 0 <= a.fingerprint < 2**63
