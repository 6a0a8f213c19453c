"""Conversion of specific MLP/CNN patterns, and the errors for what is not supported."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_dict_exact, outputs_match
from torch import nn

import wgraph
from wgraph.zoo import resnet_mlp, small_cnn


class CustomCNN(nn.Module):
    """Custom forward: functional activations, pooling by mean, flatten by view."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 5, 3, padding=1)
        self.c2 = nn.Conv2d(5, 7, 3, stride=2, bias=False, dilation=2)
        self.fc = nn.Linear(7, 4)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.max_pool2d(x, 2)
        x = torch.tanh(self.c2(x)) * 0.5
        x = x.mean(dim=(2, 3), keepdim=True)
        return self.fc(x.view(x.size(0), -1))


CASES = {
    "linear": (lambda: nn.Linear(6, 3), (2, 6)),
    "mlp-flatten-input": (
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.SiLU(), nn.Dropout(0.1), nn.Linear(5, 2)),
        (2, 3, 4),
    ),
    "conv1d": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=2), nn.ELU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(4, 3)
        ),
        (2, 2, 9),
    ),
    "conv2d": (lambda: small_cnn(in_channels=3, channels=6), (2, 3, 20, 20)),
    "conv3d": (
        lambda: nn.Sequential(
            nn.Conv3d(1, 3, 2, stride=2, bias=False), nn.ReLU(), nn.AvgPool3d(2), nn.Conv3d(3, 4, 1),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2),
        ),
        (2, 1, 8, 8, 8),
    ),
    "custom-forward": (CustomCNN, (2, 3, 16, 16)),
    "residual-mlp": (lambda: resnet_mlp(d_in=10, width=6, depth=2, d_out=3), (2, 10)),
    "sequence-linear": (lambda: nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 2)), (2, 9, 5)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_and_symmetry(name):
    torch.manual_seed(0)
    make, shape = CASES[name]
    model = make().double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    g = wgraph.to_graph(model, x)
    assert_state_dict_exact(g.to_state_dict(), model.state_dict())
    sym = wgraph.random_symmetry(g, seed=3)
    outputs_match(model, g.permute(sym), x)
    # every element of every parameter is stored exactly once
    assert g.layout.num_params == sum(p.numel() for p in model.parameters())
    assert g.nodes.numel() + sum(e.numel() for e in g.edges if e is not None) >= g.layout.num_params


def test_layout_of_small_cnn():
    g = wgraph.to_graph(small_cnn(), torch.randn(1, 1, 28, 28))
    lay = g.layout
    assert [l.kind for l in lay.layers] == ["input", "hidden", "hidden", "hidden", "output"]
    assert [l.size for l in lay.layers] == [1, 16, 16, 16, 10]
    assert [l.depth for l in lay.layers] == [0, 1, 2, 3, 4]
    assert [b.kernel for b in lay.blocks] == [(3, 3), (3, 3), (3, 3), ()]
    assert g.edges[1].shape == (1, 16, 16, 3, 3)
    assert [s.permutable for s in lay.spaces] == [False, True, True, True, False]
    # biases are node features of the layer they add to
    torch.testing.assert_close(g.nodes[0, 1:17, 0], small_cnn().state_dict()["0.bias"] * 0 + g.param("0.bias")[0])
    assert lay.node_kind.tolist() == [0] + [1] * 48 + [2] * 10


def test_residual_ties_spaces():
    g = wgraph.to_graph(resnet_mlp(d_in=8, width=4, depth=3, d_out=2), torch.randn(1, 8))
    lay = g.layout
    hidden = [s for s in lay.spaces if s.permutable]
    assert len(hidden) == 1 and len(hidden[0].layers) == 4
    assert sum(b.kind == "identity" for b in lay.blocks) == 3


def test_residual_from_input_is_not_permutable():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(x + self.a(x))

    g = wgraph.to_graph(M(), torch.randn(1, 4))
    assert not any(s.permutable for s in g.layout.spaces)
    assert wgraph.random_symmetry(g, seed=0).perms == {}


def test_transpose_tracks_neuron_axis():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 5)
            self.c = nn.Conv1d(5, 4, 1)
            self.b = nn.Linear(4, 2)

        def forward(self, x):  # (B, T, 3)
            h = self.a(x).transpose(1, 2)  # (B, 5, T)
            h = torch.relu(self.c(h)).permute(0, 2, 1)  # (B, T, 4)
            return self.b(h)

    torch.manual_seed(0)
    m = M().double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    g = wgraph.to_graph(m, x)
    outputs_match(m, g.permute(wgraph.random_symmetry(g, seed=1)), x)


# ----------------------------------------------------------------- bad input
def test_no_parameters():
    with pytest.raises(wgraph.ConversionError, match="no parameters"):
        wgraph.to_graph(nn.ReLU(), torch.randn(1, 3))


def test_unsupported_module_names_path_and_type():
    m = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.GRUCell(4, 4)), nn.Linear(4, 1))
    with pytest.raises(wgraph.UnsupportedOperation) as e:
        wgraph.to_graph(m, torch.randn(2, 3))
    msg = str(e.value)
    assert "'1.0'" in msg and "GRUCell" in msg and "Supported modules" in msg and "Conv2d" in msg


def test_unsupported_op_names_node_and_location():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 1)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.cumsum(h, dim=1))

    with pytest.raises(wgraph.UnsupportedOperation) as e:
        wgraph.to_graph(M(), torch.randn(2, 3))
    msg = str(e.value)
    assert "cumsum" in msg and "test_convert.py" in msg and "tensor methods" in msg


def test_a_slice_of_hidden_channels_fixes_them_and_other_indexing_is_rejected():
    class M(nn.Module):
        def __init__(self, index):
            super().__init__()
            self.index = index
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(2, 1)

        def forward(self, x):
            return self.b(self.a(x)[:, self.index])

    m = M(slice(2, 4))
    g = wgraph.to_graph(m, torch.randn(2, 3))
    assert not g.layout.spaces[g.layout.layers[1].space].permutable
    assert "split" in g.layout.spaces[g.layout.layers[1].space].note
    assert all(torch.equal(v, g.to_state_dict()[k]) for k, v in m.state_dict().items())
    with pytest.raises(wgraph.UnsupportedOperation, match="individual hidden channels"):
        wgraph.to_graph(M(slice(0, 4, 2)), torch.randn(2, 3))


def test_data_dependent_control_flow():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.a(x)
            return x

    with pytest.raises(wgraph.UnsupportedOperation, match="(?s)cannot trace M .*test_convert.py:.*concrete_args"):
        wgraph.to_graph(M(), torch.randn(2, 3))


def test_front_ends_that_cannot_trace_are_all_named():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > 0:  # torch.export cannot decide this branch either
                return self.a(x)
            return self.a(x) * 2

    with pytest.raises(wgraph.UnsupportedOperation, match="(?s)torch.fx cannot trace M.*torch.export failed too"):
        wgraph.to_graph(M(), torch.randn(2, 3))
    with pytest.raises(wgraph.UnsupportedOperation) as e:
        wgraph.to_graph(M(), torch.randn(2, 3), tracer="fx")
    assert "torch.export" not in str(e.value)


def test_an_op_that_cannot_run_on_meta_tensors_runs_on_the_example_input():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            scale = x.abs().max().item()  # a Python number: a meta tensor has no value to give
            return self.b(torch.relu(self.a(x / scale)))

    m = M().double()
    x = torch.randn(2, 3, dtype=torch.float64)
    g = wgraph.to_graph(m, x)
    assert g.layout.meta["tracer"] == "fx"
    assert_state_dict_exact(g.to_state_dict(), m.state_dict())
    outputs_match(m, g.permute(wgraph.random_symmetry(g, seed=0, scale=True)), x)


def test_example_input_that_does_not_run():
    with pytest.raises(wgraph.ConversionError, match=r"does not run on the example input \(\(2, 5\)\)"):
        wgraph.to_graph(nn.Linear(3, 2), torch.randn(2, 5))


def test_unsupported_functional_parameter():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 3))

        def forward(self, x):
            return torch.einsum("bi,ij->bj", x, self.w)

    with pytest.raises(wgraph.UnsupportedOperation, match="parameter 'w' is used by .*einsum"):
        wgraph.to_graph(Functional(), torch.randn(2, 3))


def test_unused_parameter_is_an_error():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused = nn.Linear(3, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(wgraph.UnsupportedOperation, match="unused.weight"):
        wgraph.to_graph(M(), torch.randn(1, 3))


def test_not_a_module():
    with pytest.raises(wgraph.ConversionError, match="nn.Module"):
        wgraph.to_graph(lambda x: x, torch.randn(1))


def test_layout_is_cached_per_model():
    m = small_cnn()
    a = wgraph.layout_of(m, torch.randn(1, 1, 28, 28))
    assert wgraph.layout_of(m, torch.randn(5, 1, 28, 28)) is not a  # another input shape
    assert wgraph.layout_of(m, torch.randn(1, 1, 28, 28)) is a


def test_elementwise_ops_within_one_layer_are_allowed():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            h = h * torch.sigmoid(h) + 0.5 * torch.tanh(h) - 1.0  # per-neuron function of h
            return self.b(h / 2)

    torch.manual_seed(0)
    m = M().double()
    x = torch.randn(3, 3, dtype=torch.float64)
    g = wgraph.to_graph(m, x)
    outputs_match(m, g.permute(wgraph.random_symmetry(g, seed=0)), x)


def test_a_constant_that_differs_between_neurons_fixes_them():
    class M(nn.Module):
        def __init__(self, mask=False):
            super().__init__()
            self.mask = mask
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            if self.mask:  # the same for every neuron: they stay permutable
                return self.b(self.a(x) * torch.arange(2.0)[:, None, None])
            return self.b(self.a(x) + torch.arange(4.0))  # pins each neuron to a constant

    g = wgraph.to_graph(M(), torch.randn(2, 3))
    space = g.layout.spaces[g.layout.layers[1].space]
    assert not space.permutable and "tensor of shape (4,)" in space.note
    g = wgraph.to_graph(M(mask=True), torch.randn(2, 5, 3))
    assert g.layout.spaces[g.layout.layers[1].space].permutable


def test_scaling_groups_of_hidden_spaces():
    m = nn.Sequential(
        nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.1),  # positive
        nn.Linear(4, 5), nn.Tanh(),                   # sign
        nn.Linear(5, 6),                              # real (no nonlinearity)
        nn.Linear(6, 7), nn.GELU(),                   # none
        nn.Linear(7, 2),
    )
    spaces = wgraph.to_graph(m, torch.randn(1, 3)).layout.spaces
    assert [s.scaling for s in spaces] == ["none", "positive", "sign", "real", "none", "none"]
    cnn = wgraph.to_graph(small_cnn(), torch.randn(1, 1, 28, 28)).layout
    assert [s.scaling for s in cnn.spaces if s.permutable] == ["positive"] * 3
    res = wgraph.to_graph(resnet_mlp(), torch.randn(1, 64)).layout
    assert all(s.scaling == "none" for s in res.spaces)
