"""Property tests over hypothesis-generated MLPs and CNNs (200 architectures in all).

For each: the round trip is bit-exact, and a random symmetry is non-trivial on every hidden space of
two or more neurons and preserves the function (float64, rtol 1e-9).
"""

import torch
import torch.nn.functional as F
from conftest import assert_state_dict_exact, outputs_match
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import wgraph

ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.LeakyReLU, nn.SiLU, nn.Identity]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FunctionalCNN(nn.Module):
    """The same network with a hand-written forward (functional activation and pooling)."""

    def __init__(self, convs: nn.ModuleList, head: nn.Linear):
        super().__init__()
        self.convs, self.head = convs, head

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        x = x.flatten(2).mean(-1)
        return self.head(x)


@st.composite
def mlps(draw):
    depth = draw(st.integers(1, 6))
    sizes = [draw(st.integers(1, 64)) for _ in range(depth + 1)]
    layers = []
    for i in range(depth):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=draw(st.booleans())))
        if i < depth - 1:
            layers.append(draw(st.sampled_from(ACTIVATIONS))())
    batch = draw(st.integers(1, 3))
    return nn.Sequential(*layers), (batch, sizes[0]), sizes[1:-1]


def _out_len(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def cnns(draw):
    dim = draw(st.sampled_from([1, 2, 3]))
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
    n_conv = draw(st.integers(1, 4))
    n_lin = draw(st.integers(1, 6 - n_conv)) if n_conv < 6 else 0
    max_ch = {1: 64, 2: 32, 3: 12}[dim]
    chans = [draw(st.integers(1, max_ch)) for _ in range(n_conv + 1)]
    size = draw(st.integers(4, {1: 24, 2: 12, 3: 7}[dim]))
    convs, n = [], size
    for i in range(n_conv):
        k = draw(st.integers(1, 3))
        s = draw(st.integers(1, 2))
        p = draw(st.integers(0, 1))
        d = draw(st.integers(1, 2))
        if _out_len(n, k, s, p, d) < 1:
            k, s, p, d = 1, 1, 0, 1
        n = _out_len(n, k, s, p, d)
        convs.append(conv_cls(chans[i], chans[i + 1], k, stride=s, padding=p, dilation=d, bias=draw(st.booleans())))
    widths = [chans[-1]] + [draw(st.integers(1, 64)) for _ in range(n_lin)]
    lins = [nn.Linear(a, b, bias=draw(st.booleans())) for a, b in zip(widths[:-1], widths[1:])]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveMaxPool3d}[dim]
    x_shape = (draw(st.integers(1, 2)), chans[0], *([size] * dim))
    if n_lin == 1 and draw(st.booleans()):
        model = FunctionalCNN(nn.ModuleList(convs), lins[0])
    else:
        act = draw(st.sampled_from(ACTIVATIONS))
        layers = []
        for c in convs:
            layers += [c, act()]
        layers += [pool(1), nn.Flatten()]
        for j, lin in enumerate(lins):
            layers.append(lin)
            if j < len(lins) - 1:
                layers.append(act())
        model = nn.Sequential(*layers)
    return model, x_shape, chans[1:] + widths[1:-1]


def _check(model, x_shape, hidden_sizes, seed):
    torch.manual_seed(seed)
    model = model.double().eval()
    x = torch.randn(x_shape, dtype=torch.float64)
    g = wgraph.to_graph(model, x)
    assert_state_dict_exact(g.to_state_dict(), model.state_dict())
    sym = wgraph.random_symmetry(g, seed=seed)
    spaces = g.layout.spaces
    assert sorted(s.size for s in spaces if s.permutable) == sorted(hidden_sizes)
    for si, space in enumerate(spaces):
        if space.permutable and space.size >= 2:
            assert not torch.equal(sym.perms[si], torch.arange(space.size)), "trivial permutation"
        if not space.permutable:
            assert si not in sym.perms
    g2 = g.permute(sym)
    outputs_match(model, g2, x, rtol=1e-9)
    # the inverse permutation restores the graph exactly
    back = g2.permute(sym.inverse())
    assert torch.equal(back.nodes, g.nodes)
    assert all(torch.equal(a, b) for a, b in zip(back.edges, g.edges))


@SETTINGS
@given(mlps(), st.integers(0, 2**16))
def test_mlp_round_trip_and_symmetry(case, seed):
    _check(*case, seed)


@SETTINGS
@given(cnns(), st.integers(0, 2**16))
def test_cnn_round_trip_and_symmetry(case, seed):
    _check(*case, seed)
