"""Transformer-NFN: the transformer weight space, the attention GL group, the equivariant and invariant
layers, canonicalization, all in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import wgraph
from wgraph.attention_symmetry import (
    AttentionError,
    apply_gl,
    attention_parts,
    canonicalize_attention,
    random_attention_symmetry,
    random_gl,
)
from wgraph.nn import from_preset
from wgraph.nn.transformer_nfn import TransformerNFN
from wgraph.nn.transformer_space import TransformerError, TransformerSpace, TransformerSpec, act, random_action
from wgraph.zoo.transformer import RowTransformer

FACTORS = [("heads",), ("gl",), ("pd",), ("pa",), ("heads", "gl", "pd", "pa")]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _trained_like(residual: bool, seed: int = 0, n: int = 1):
    """Networks with weights of unit scale (far from the identity of an untrained init)."""
    torch.manual_seed(seed)
    models = []
    for _ in range(n):
        m = RowTransformer(dim=8, heads=2, blocks=2, residual=residual).double()
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.6)
        models.append(m)
    return models


def _graph(models):
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    return wgraph.to_graph_batch([m.state_dict() for m in models], models[0], x)


def _x():
    return torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------------- the weight space
@pytest.mark.parametrize("residual", [False, True])
def test_space_reads_every_encoder_part_and_round_trips_exactly(residual):
    m = _trained_like(residual)[0]
    g = _graph([m])
    spec = TransformerSpec.of(g.layout)
    assert len(spec.blocks) == 2 and set(spec.rest) == {"embed.weight", "embed.bias", "pos", "head.weight", "head.bias"}
    space = TransformerSpace.from_graph(g)
    t, sd = space.blocks[1], m.state_dict()
    assert t["q"].shape == (1, 1, 2, 8, 4) and t["o"].shape == (1, 1, 2, 4, 8) and t["b"].shape == (1, 1, 16, 8)
    assert torch.equal(t["q"][0, 0, 1], sd["blocks.1.attn.q.weight"][4:].T)  # W_Q^h, D x d_k
    assert torch.equal(t["o"][0, 0, 0], sd["blocks.1.attn.o.weight"][:, :4].T)  # W_O^h, d_v x D
    assert torch.equal(t["a"][0, 0], sd["blocks.1.fc1.weight"].T)
    assert torch.equal(t["bb"][0, 0], sd["blocks.1.fc2.bias"])
    back = space.to_graph(g).to_state_dict()
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    changed = space.map(lambda n, x: x + 1 if n == "v" else x).to_graph(g).to_state_dict()
    assert [k for k in sd if not torch.equal(changed[k], sd[k])] == ["blocks.0.attn.v.weight", "blocks.1.attn.v.weight"]


class MHABlock(nn.Module):
    def __init__(self, bias=True, ffn=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, bias=bias)
        if ffn:
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.ffn = ffn

    def forward(self, x):
        a = self.attn(x, x, x, need_weights=False)[0]
        return self.fc2(torch.relu(self.fc1(a))) if self.ffn else a


def test_space_names_what_it_cannot_represent():
    x = torch.randn(2, 5, 8)
    with pytest.raises(TransformerError, match=r"bias 'attn.in_proj_bias'"):
        TransformerSpec.of(wgraph.to_graph(MHABlock(), x).layout)
    with pytest.raises(TransformerError, match="feed-forward A must be the one Linear"):
        TransformerSpec.of(wgraph.to_graph(MHABlock(bias=False, ffn=False), x).layout)
    assert not TransformerNFN.supports(wgraph.to_graph(MHABlock(), x).layout)
    assert len(TransformerSpec.of(wgraph.to_graph(MHABlock(bias=False), x).layout).blocks) == 1


# ----------------------------------------------------------------------------- the group on networks
@pytest.mark.parametrize("residual", [False, True])
def test_sampled_group_preserves_the_function(residual):
    m = _trained_like(residual)[0]
    g, x = _graph([m]), _x()
    for seed in range(3):
        sym = random_attention_symmetry(g, seed)
        assert not sym.perm.is_identity() and len(sym.gl) == 2
        M = sym.gl[0][0]
        assert torch.linalg.cond(M).max() < 7.5 and (M - torch.eye(4)).abs().max() > 0.1
        g2 = sym.apply(g)
        assert (g2.edges[attention_parts(g.layout)[0].q] - g.edges[attention_parts(g.layout)[0].q]).abs().max() > 0.1
        m2 = wgraph.load_into(copy.deepcopy(m), g2)
        torch.testing.assert_close(m2(x), m(x), rtol=0, atol=1e-10)


def test_gl_moves_query_key_and_value_biases():
    torch.manual_seed(0)
    m, x = MHABlock(bias=True, ffn=False).double(), torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        m.attn.in_proj_bias.normal_()
    g = wgraph.to_graph(m, x)
    g2 = apply_gl(g, random_gl(g.layout, 0))
    assert not torch.equal(g2.param("attn.in_proj_bias"), g.param("attn.in_proj_bias"))
    torch.testing.assert_close(wgraph.load_into(copy.deepcopy(m), g2)(x), m(x), rtol=0, atol=1e-10)


def _non_symmetries(sd):
    """The issue's three non-symmetries of block 0's attention, as edited state dicts."""
    q, k, v = (f"blocks.0.attn.{n}.weight" for n in "qkv")
    heads = lambda w: torch.cat([w[4:], w[:4]])  # noqa: E731
    out = {}
    out["query-only permutation"] = {**sd, q: sd[q][[1, 0, 2, 3, 4, 5, 6, 7]]}
    out["head permutation of q/k only"] = {**sd, q: heads(sd[q]), k: heads(sd[k])}
    out["uncompensated value scaling"] = {**sd, v: torch.cat([2 * sd[v][:4], sd[v][4:]])}
    return out


@pytest.mark.parametrize("invariant", ["pooled", "entries"])
def test_non_symmetries_change_the_function_and_the_nfn(invariant):
    models = _trained_like(False, n=3)
    g, x = _graph(models), _x()
    nfn = from_preset("transformer-nfn", g, invariant=invariant).double()
    nfn.fit_normalization(g)
    features = lambda g: nfn.features(TransformerSpace.from_graph(g))  # noqa: E731  the invariant layer's output
    y = features(g)
    for name, sd in _non_symmetries(models[0].state_dict()).items():
        m2 = copy.deepcopy(models[0])
        m2.load_state_dict(sd)
        assert _rel(m2(x), models[0](x)) > 1e-3, name
        g2 = _graph([m2] + models[1:])
        assert (features(g2) - y)[0].abs().max() > 1e-3, name


# ----------------------------------------------------------------------------- Transformer-NFN
@pytest.mark.parametrize("invariant", ["pooled", "entries"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("factors", FACTORS, ids="+".join)
def test_layers_equivariant_and_model_invariant(residual, factors, invariant):
    models = _trained_like(residual, n=3)
    g = _graph(models)
    nfn = from_preset("transformer-nfn", g, layers=3, hidden=4, invariant=invariant).double()
    nfn.fit_normalization(g)
    space, rest = nfn._inputs(g)
    actions = random_action(nfn.spec, 7, factors)
    moved = act(space, actions)
    assert all((moved.blocks[0][n] - space.blocks[0][n]).abs().max() > 1e-3 for n in {
        "heads": "qkvo", "gl": "qkvo", "pd": "oa", "pa": ("a", "ba", "b")}[factors[0]])
    layer = nfn.layers[0][1]
    want = act(TransformerSpace(nfn.spec, [space.blocks[0], layer(space.blocks[1])]), actions).blocks[1]
    got = layer(moved.blocks[1])
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-8)
    torch.testing.assert_close(nfn.forward_space(moved, rest), nfn(g), rtol=0, atol=1e-8)


def test_any_number_of_blocks_and_a_layout_without_attention():
    m = RowTransformer(dim=8, blocks=3).double()
    g = _graph([m])
    nfn = from_preset("transformer-nfn", g, out_dim=3, layers=1).double()
    assert len(nfn.layers[0]) == 3 and nfn(g).shape == (1, 3)
    mlp = wgraph.to_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(1, 3))
    assert TransformerNFN.supports(mlp.layout).reason == "0 encoder blocks"


# ----------------------------------------------------------------------------- canonicalization
def test_canonicalization_preserves_the_function_and_makes_the_graph_nfn_gl_invariant():
    models = _trained_like(False, n=2)
    g, x = _graph(models), _x()
    c = canonicalize_attention(g)
    assert (c.edges[2] - g.edges[2]).abs().max() > 1e-2
    torch.testing.assert_close(wgraph.load_into(copy.deepcopy(models[0]), c)(x), models[0](x), rtol=0, atol=1e-10)
    torch.manual_seed(0)
    gnn = from_preset("gnn", g, hidden=16, layers=2).double().eval()  # eval: its readout does not mix the networks
    sym = random_attention_symmetry(g, 3)
    g2 = sym.apply(g)
    assert (gnn(g2) - gnn(g)).abs().max() > 1e-4  # raw weights: not GL-invariant (100x the tolerance below)
    torch.testing.assert_close(gnn(canonicalize_attention(g2)), gnn(c), rtol=0, atol=1e-6)
    with pytest.raises(AttentionError, match="biases"):
        canonicalize_attention(wgraph.to_graph(MHABlock(), torch.randn(2, 5, 8)))


# ----------------------------------------------------------------------------- the zoo
def test_transformer_zoo_generates_resumes_and_feeds_the_nfn(tmp_path):
    from wgraph.zoo.transformer import generate_transformer_zoo

    settings = dict(runs=2, checkpoints=2, epochs=2, shard_size=1, dim=8, residual=True, progress=False)
    zoo = generate_transformer_zoo(tmp_path / "zoo", **settings)
    assert len(zoo) == 4 and set(zoo.table["checkpoint"]) == {0, 1}
    assert ((zoo.table["test_acc"] >= 0) & (zoo.table["test_acc"] <= 1)).all() and zoo.table["test_acc"].max() > 0.2
    again = generate_transformer_zoo(tmp_path / "zoo", **settings)  # complete: nothing retrained
    assert all(torch.equal(again.weights[k], v) for k, v in zoo.weights.items())
    g = zoo.graphs()
    assert all(torch.equal(g.to_state_dict(3)[k], v) for k, v in zoo.network(3).state_dict().items())
    g = g.to(torch.float64)
    nfn = from_preset("transformer-nfn", g, layers=1, hidden=4).double()
    nfn.fit_normalization(g)
    assert nfn(g).shape == (4, 1) and torch.isfinite(nfn(g)).all()


def test_invariant_features_are_standardized_with_the_training_zoo_statistics():
    """``norm = "batch"``: the trainer's ``refresh_statistics`` sets the evaluation statistics to
    those of the training networks' features, so that in eval mode they have mean 0 and variance 1
    over that zoo (raw invariants span orders of magnitude: products of weights); one network alone
    is normalized with the stored statistics, in train mode too."""
    models = _trained_like(False, n=4)
    g = _graph(models)
    nfn = from_preset("transformer-nfn", g).double()
    nfn.fit_normalization(g)
    nfn.refresh_statistics(g, batch_size=3)
    z = nfn.invariant_features(*nfn._inputs(g))
    n = nfn.norm
    zn = (z - n.running_mean) / (n.running_var + n.eps).sqrt()
    torch.testing.assert_close(zn.mean(0), torch.zeros_like(zn[0]), rtol=0, atol=1e-8)
    assert z.std(0).max() / z.std(0).min() > 10  # the raw features need it
    nfn.eval()
    single = nfn(g[1:2])
    nfn.train()
    torch.testing.assert_close(nfn(g[1:2]), single, rtol=0, atol=1e-12)
