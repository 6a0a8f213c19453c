"""Parity with nfn: wgraph's NP/HNP layers with nfn's parameters give nfn's outputs (1e-5)."""

import pytest
import torch

import wgraph
from wgraph.interop import nfn as wnfn
from wgraph.nn.np_layers import HNPLinear, NPLinear
from wgraph.nn.weight_space import WeightSpace, random_graph
from wgraph.zoo import mlp, small_cnn

nfn_layers = pytest.importorskip("nfn.layers")
from nfn.common import network_spec_from_wsfeat  # noqa: E402

CASES = {
    "mlp2": (lambda: mlp((6, 8, 3)), (1, 6)),
    "mlp3": (lambda: mlp((5, 7, 6, 4)), (1, 5)),
    "mlp5": (lambda: mlp((3, 5, 4, 6, 5, 2)), (1, 3)),
    "cnn": (lambda: small_cnn(2, 5, 3), (1, 2, 28, 28)),
    "cnn_k2": (
        lambda: torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2),
        ),
        (1, 3, 9, 9),
    ),
}


@pytest.fixture(params=list(CASES))
def case(request):
    make, shape = CASES[request.param]
    lay = wgraph.to_graph(make(), torch.randn(shape)).layout
    return request.param, random_graph(lay, 3, seed=7)


def _close(a, b, tol=1e-5):
    for x, y in zip(list(a.weights) + list(a.biases), list(b.weights) + list(b.biases)):
        assert x.shape == y.shape
        torch.testing.assert_close(y, x, atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", ["NPLinear", "NPLinear_io", "HNPLinear"])
def test_layer_parity(case, kind):
    name, g = case
    torch.manual_seed(0)
    spec = wnfn.network_spec(g)
    cls = getattr(nfn_layers, kind.replace("_io", ""))
    kw = {"io_embed": True} if kind.endswith("_io") else {}
    ref1, ref2 = cls(spec, 1, 4, **kw), cls(spec, 4, 3, **kw)
    mine1, mine2 = wnfn.from_nfn(ref1, g.layout), wnfn.from_nfn(ref2, g.layout)
    feat = wnfn.to_wsfeat(g)
    with torch.no_grad():
        a1, b1 = ref1(feat), mine1(g)
        _close(a1, b1)
        a2, b2 = ref2(a1.map(torch.relu)), mine2(b1.map(torch.relu))
        _close(a2, b2)
        for pool in ("NPPool", "HNPPool"):
            p_ref = getattr(nfn_layers, pool)(spec)
            torch.testing.assert_close(wnfn.from_nfn(p_ref, g.layout)(b2), p_ref(a2), atol=1e-5, rtol=1e-5)


def test_parity_of_gradients():
    make, shape = CASES["mlp3"]
    g = random_graph(wgraph.to_graph(make(), torch.randn(shape)).layout, 2, seed=2)
    spec = wnfn.network_spec(g)
    for cls in (nfn_layers.NPLinear, nfn_layers.HNPLinear):
        ref = cls(spec, 1, 2)
        mine = wnfn.from_nfn(ref, g.layout)
        sum(w.sum() + (w**2).sum() for w in ref(wnfn.to_wsfeat(g)).weights).backward()
        sum(w.sum() + (w**2).sum() for w in mine(g).weights).backward()
        gr = dict(ref.named_parameters())
        # the self-term of a middle layer is the same matrix in both
        key = "layer_1.weight"
        self_term = mine.w[1]["self"] if cls is nfn_layers.NPLinear else mine.layers[1]["w"]["self"]
        torch.testing.assert_close(self_term.grad, gr[key].grad.reshape(2, 1), atol=1e-5, rtol=1e-5)


def test_encodings_parity(case):
    name, g = case
    spec = wnfn.network_spec(g)
    feat = wnfn.to_wsfeat(g)
    pe = nfn_layers.LearnedPosEmbedding(spec, 1)
    _close(pe(feat), wnfn.from_nfn(pe, g.layout)(g))
    if name.startswith("mlp"):  # nfn's sinusoidal encoding mis-broadcasts conv output layers
        enc = nfn_layers.IOSinusoidalEncoding(spec)
        _close(enc(feat), wnfn.from_nfn(enc, g.layout)(g))


def test_wsfeat_round_trip_and_spec(case):
    _, g = case
    feat = wnfn.to_wsfeat(g)
    back = wnfn.from_wsfeat(feat, g.layout)
    assert torch.equal(back.nodes, g.nodes) and all(torch.equal(a, b) for a, b in zip(back.edges, g.edges))
    assert isinstance(wnfn.from_wsfeat(feat), WeightSpace)
    assert wnfn.network_spec(g) == network_spec_from_wsfeat(feat)


def test_mismatches_raise():
    make, shape = CASES["mlp3"]
    g = random_graph(wgraph.to_graph(make(), torch.randn(shape)).layout, 1)
    spec = wnfn.network_spec(g)
    with pytest.raises(wnfn.InteropError, match="channels"):
        wnfn.load_nfn(NPLinear(g.layout, 1, 3), nfn_layers.NPLinear(spec, 1, 2))
    with pytest.raises(wnfn.InteropError, match="cannot load"):
        wnfn.load_nfn(HNPLinear(g.layout, 1, 2), nfn_layers.NPLinear(spec, 1, 2))
    with pytest.raises(wnfn.InteropError, match="no wgraph equivalent"):
        wnfn.from_nfn(torch.nn.Linear(2, 2), g.layout)
    feat = wnfn.to_wsfeat(WeightSpace.from_graph(g).cat(WeightSpace.from_graph(g)))
    with pytest.raises(wnfn.InteropError, match="one channel"):
        wnfn.from_wsfeat(feat, g.layout)
    assert isinstance(wnfn.InteropError("x"), wgraph.WgraphError)
