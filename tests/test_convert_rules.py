"""One test per conversion rule of the arbitrary-model converter: normalization, grouped and
depthwise convolution, gating, concatenation, split, flatten of feature maps, functional
parameters. Each checks the structure the rule builds, the exact round trip, and that a random
symmetry preserves the function (float64)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_dict_exact, outputs_match
from torch import nn

import wgraph
from wgraph.convert.batch import gather


def _check(model, x, seed=0, tracer="auto"):
    """Round trip exact, symmetry function-preserving; returns the graph."""
    torch.manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():  # make normalization statistics matter
        for k, buf in model.named_buffers():
            if k.endswith("running_mean"):
                buf.normal_(0, 0.5)
            elif k.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    x = x.double()
    g = wgraph.to_graph(model, x, tracer=tracer)
    assert_state_dict_exact(g.to_state_dict(), model.state_dict())
    sym = wgraph.random_symmetry(g, seed=seed)
    outputs_match(model, g.permute(sym), x)
    back = g.permute(sym).permute(sym.inverse())
    assert torch.equal(back.nodes, g.nodes)
    return g


def test_batchnorm_statistics_are_node_features():
    m = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)
    )
    g = _check(m, torch.randn(2, 3, 8, 8))
    feats = g.layout.node_features
    assert {"bn_weight", "bn_bias", "bn_mean", "bn_var"} <= set(feats)
    conv = g.layout.layers[1]
    torch.testing.assert_close(g.nodes[0, conv.start : conv.stop, feats.index("bn_var")], m[1].running_var.double())
    assert [p.name for p in g.layout.extra_params] == ["1.num_batches_tracked"]
    assert g.extras["1.num_batches_tracked"].dtype == torch.int64
    assert [s.permutable for s in g.layout.spaces] == [False, True, False]


class BatchNormAct(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d``: a BatchNorm subclass whose forward calls ``F.batch_norm``."""

    def forward(self, x):
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)
        return F.relu(y)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_functional_batch_norm(tracer):
    """``F.batch_norm`` (fx) and ``aten.batch_norm`` (export, also what ``nn.BatchNorm2d`` becomes):
    the statistics are node features as for the module, ``num_batches_tracked`` an extra."""
    m = nn.Sequential(nn.Conv2d(3, 6, 3), BatchNormAct(6), nn.Conv2d(6, 5, 1), nn.BatchNorm2d(5), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    g = _check(m, torch.randn(2, 3, 8, 8), tracer=tracer)
    feats = g.layout.node_features
    assert {"bn_weight", "bn_bias", "bn_mean", "bn_var"} <= set(feats)
    conv = g.layout.layers[1]
    torch.testing.assert_close(g.nodes[0, conv.start : conv.stop, feats.index("bn_var")], m[1].running_var.double())
    assert sorted(p.name for p in g.layout.extra_params) == ["1.num_batches_tracked", "3.num_batches_tracked"]
    assert [s.scaling for s in g.layout.spaces if s.permutable] == ["none", "none"]


class ScaleView(nn.Module):
    """ConvFormer's layer scale: a ``(C,)`` parameter applied as ``(C, 1, 1)``."""

    def __init__(self, c=6):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, c, 1), nn.Linear(c, 2)
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return self.head((self.conv(x) * self.scale.view(-1, 1, 1)).relu().mean((2, 3)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_layer_scale_viewed_as_channels(tracer):
    g = _check(ScaleView(), torch.randn(2, 3, 4, 4), tracer=tracer)
    slot = g.layout.params[g.layout.param_index["scale"]]
    assert slot.shape == (6,) and slot.where == "nodes" and "scale" in g.layout.node_features


def test_batchnorm_on_the_input_and_batchnorm1d():
    m = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))
    g = _check(m, torch.randn(3, 4))
    assert g.layout.layers[0].kind == "input"


def test_layernorm_keeps_one_permutable_space():
    m = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 6), nn.RMSNorm(6), nn.Linear(6, 2))
    g = _check(m, torch.randn(3, 5, 4))
    assert [s.permutable for s in g.layout.spaces] == [False, True, True, False]


class HandNorms(nn.Module):
    """A pre-norm residual stream through hand-written normalizations: Llama's RMSNorm
    ``w * (x * rsqrt(mean(x^2) + eps))`` twice on the stream, and a channels-first LayerNorm
    ``(x - mean) / sqrt(var + eps) * w[:, None, None] + b[:, None, None]``."""

    def __init__(self, d=6):
        super().__init__()
        self.inp, self.mlp, self.out = nn.Linear(3, d), nn.Linear(d, d), nn.Linear(d, 2)
        self.w1, self.w2 = nn.Parameter(torch.rand(d) + 0.5), nn.Parameter(torch.rand(d) + 0.5)
        self.conv = nn.Conv2d(3, d, 1)
        self.ln_w, self.ln_b = nn.Parameter(torch.rand(d) + 0.5), nn.Parameter(torch.randn(d))

    @staticmethod
    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def forward(self, x):
        h = self.inp(x.mean((2, 3)))
        h = self.rms(h, self.w2) + self.mlp(self.rms(h, self.w1))  # two weights on the neurons of h
        c = self.conv(x)
        u = c.mean(1, keepdim=True)
        c = (c - u) / torch.sqrt((c - u).pow(2).mean(1, keepdim=True) + 1e-6)
        c = self.ln_w[:, None, None] * c + self.ln_b[:, None, None]
        return self.out(h + c.mean((2, 3)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_hand_written_rms_and_layer_norm(tracer):
    """A statistic over all neurons (mean over the neuron axis) is permutation invariant: it may be
    broadcast back onto them. The stream's second RMSNorm weight gets a tied copy of the layer."""
    g = _check(HandNorms(), torch.randn(2, 3, 4, 4), tracer=tracer)
    lay = g.layout
    assert {"scale", "shift"} <= set(lay.node_features)
    assert sum(s.permutable for s in lay.spaces) == 1  # the stream, tied to the conv channels by the sum
    stream = next(s for s in lay.spaces if s.permutable)
    assert stream.scaling == "none" and {lay.layers[li].name for li in stream.layers} & {"w1", "w2"}


class PadResampleGRN(nn.Module):
    """``F.pad``, ``F.interpolate`` and timm's global response normalization (ConvNeXt-V2)
    ``x + addcmul(beta, gamma, x * (||x||_spatial / mean_channels ||x||_spatial))`` in channels-last,
    and a ``var`` statistic."""

    def __init__(self, c=6):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, c, 3), nn.Conv2d(c, c, 3), nn.Linear(c, 2)
        self.gamma, self.beta = nn.Parameter(torch.randn(c)), nn.Parameter(torch.randn(c))

    def forward(self, x):
        h = F.interpolate(F.pad(self.a(x), (1, 1, 1, 1), mode="reflect"), scale_factor=2, mode="bilinear")
        h = F.pad(self.b(h), (1, 1, 1, 1)).relu().permute(0, 2, 3, 1)
        gx = torch.norm(h, p=2, dim=(1, 2), keepdim=True)
        h = h + torch.addcmul(self.beta, self.gamma, h * (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)))
        h = h / torch.sqrt(h.var(-1, keepdim=True) + 1e-5)
        return self.head(h.mean((1, 2)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_pad_interpolate_and_global_response_norm(tracer):
    g = _check(PadResampleGRN(), torch.randn(2, 3, 6, 6), tracer=tracer)
    assert [s.permutable for s in g.layout.spaces] == [False, True, True, False]
    assert {"scale", "shift"} <= set(g.layout.node_features)


def test_padding_the_neuron_axis_is_refused():
    class PadChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(F.pad(self.a(x), (1, 1)))

    with pytest.raises(wgraph.UnsupportedOperation, match="pads the neuron axis"):
        wgraph.to_graph(PadChannels(), torch.randn(2, 3))


class FunctionalGroupNorm(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups, self.conv, self.head = groups, nn.Conv2d(3, 4, 1), nn.Linear(4, 2)
        self.w, self.b = nn.Parameter(torch.rand(4) + 0.5), nn.Parameter(torch.randn(4))

    def forward(self, x):
        return self.head(F.group_norm(self.conv(x), self.groups, self.w, self.b).mean((2, 3)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_functional_group_norm(tracer):
    one, two = (_check(FunctionalGroupNorm(g), torch.randn(2, 3, 4, 4), tracer=tracer) for g in (1, 2))
    assert [s.permutable for s in one.layout.spaces] == [False, True, False]
    assert [s.permutable for s in two.layout.spaces] == [False, False, False]
    assert {"gn_weight", "gn_bias"} <= set(one.layout.node_features)


def test_groupnorm_with_groups_fixes_the_space():
    m = nn.Sequential(
        nn.Conv1d(2, 8, 3), nn.GroupNorm(4, 8), nn.ReLU(), nn.Conv1d(8, 4, 1), nn.GroupNorm(1, 4),
        nn.Conv1d(4, 6, 1), nn.InstanceNorm1d(6, affine=True), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 2),
    )
    g = _check(m, torch.randn(2, 2, 10))
    spaces = g.layout.spaces
    assert not spaces[1].permutable and "GroupNorm with 4 groups" in spaces[1].note
    assert spaces[2].permutable and spaces[3].permutable


def test_depthwise_convolution_ties_its_channels():
    m = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU6(), nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.ReLU6(),
        nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )
    g = _check(m, torch.randn(2, 3, 6, 6))
    dw = [b for b in g.layout.blocks if b.kind == "grouped"]
    assert len(dw) == 1 and dw[0].groups == 8
    assert g.edges[g.layout.blocks.index(dw[0])].shape == (1, 8, 1, 3, 3)
    hidden = [s for s in g.layout.spaces if s.permutable]
    assert [len(s.layers) for s in hidden] == [2, 1]  # the depthwise input and output share one space


def test_grouped_convolution_is_exact_but_fixed():
    m = nn.Sequential(
        nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 6, 3, groups=2), nn.ReLU(), nn.Conv2d(6, 5, 1),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(5, 2),
    )
    g = _check(m, torch.randn(2, 4, 7, 7))
    spaces = g.layout.spaces
    assert not spaces[1].permutable and not spaces[2].permutable and spaces[3].permutable
    data = g.to_pyg()  # block-diagonal edges: output channel o reads only its group's inputs
    blk = g.layout.blocks.index(next(b for b in g.layout.blocks if b.kind == "grouped"))
    src, dst = data.edge_index[:, data.edge_block == blk]
    l8, l6 = g.layout.layers[1], g.layout.layers[2]
    assert torch.equal((src - l8.start) // 4, (dst - l6.start) // 3)


class SqueezeExcite(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3)
        self.fc1, self.fc2 = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        h = F.silu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        h = h * s
        return self.head(h.mean((2, 3)))


def test_gating_ties_the_gate_to_the_features():
    g = _check(SqueezeExcite(), torch.randn(2, 3, 6, 6))
    gate = [b for b in g.layout.blocks if b.name.startswith("gate:")]
    assert len(gate) == 1
    tied = [s for s in g.layout.spaces if len(s.layers) == 2]
    assert len(tied) == 1 and tied[0].permutable


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(9, 6, 1)
        self.fc = nn.Linear(6 * 4, 3)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        h = F.adaptive_avg_pool2d(self.c(h), 2)
        return self.fc(torch.flatten(h, 1))


def test_concat_and_flatten_are_composite_layers():
    g = _check(Inception(), torch.randn(2, 3, 6, 6))
    lay = g.layout
    composite = [l for l in lay.layers if l.space == -1]
    assert [l.size for l in composite] == [9, 24]  # the concatenation, the flattened 6 x 2 x 2 map
    assert sum(b.kind == "copy" for b in lay.blocks) == 3
    c = next(s for s in lay.spaces if lay.layers[s.layers[0]].name == "c")
    assert c.permutable and c.segments == ((lay.layers.index(composite[1]), 0, 4),)


def test_split_fixes_the_source():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(2, 4), nn.Linear(4, 2)

        def forward(self, x):
            u, v = self.a(x).split([2, 4], dim=-1)
            return self.c(torch.relu(self.b(u)) + v)

    g = _check(Split(), torch.randn(2, 3))
    names = {g.layout.layers[li].name: s for s in g.layout.spaces for li in s.layers}
    assert not names["a"].permutable and "split" in names["a"].note
    assert not names["b"].permutable  # tied (by the residual) to a piece of the split


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_chunk_of_a_packed_projection_keeps_its_parts_permutable(tracer):
    class Chunked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 12), nn.Linear(4, 2)

        def forward(self, x):
            u, v, w = self.a(x).chunk(3, dim=-1)
            return self.b(torch.tanh(u) * v + w)

    g = _check(Chunked(), torch.randn(2, 3), tracer=tracer)
    a = next(s for s in g.layout.spaces if s.name == "a[0]")
    assert a.permutable and [g.layout.layers[li].name for li in a.layers] == ["a[0]", "a[1]", "a[2]"]


class ECA(nn.Module):
    """ECA attention: a one-channel Conv1d slides along the pooled channels, gating them."""

    def __init__(self, c=6):
        super().__init__()
        self.a, self.eca, self.head = nn.Conv2d(3, c, 3), nn.Conv1d(1, 1, 3, padding=1), nn.Linear(c, 2)

    def forward(self, x):
        h = self.a(x)
        y = self.eca(h.mean((2, 3)).view(h.shape[0], 1, -1)).sigmoid().view(h.shape[0], -1, 1, 1)
        return self.head((h * y.expand_as(h)).mean((2, 3)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_convolution_across_channels_fixes_them(tracer):
    """Neighbouring channels are mixed: converted with their space fixed and the reason recorded."""
    g = _check(ECA(), torch.randn(2, 3, 6, 6), tracer=tracer)
    a = next(s for s in g.layout.spaces if s.name == "a")
    assert not a.permutable and "ECA" in a.note
    assert sorted(p.name for p in g.layout.extra_params) == ["eca.bias", "eca.weight"]
    # a cast casts the float extras with the rest (the layout was built in float64), exactly back
    g32 = g.to(torch.float32)
    assert g32.extras["eca.weight"].dtype == torch.float32
    torch.testing.assert_close(g32.to(torch.float64).extras["eca.weight"], g.extras["eca.weight"].float().double())
    sd32 = {k: v.float() for k, v in g.to_state_dict().items()}
    assert_state_dict_exact(gather(g.layout, [sd32]).to_state_dict(), sd32)


class GhostCrop(nn.Module):
    """GhostNet's crop of concatenated channels ``cat([a, b], 1)[:, :C']``, Swin's channels-last
    ``F.pad(x, (0, 0, 1, 1, 1, 1))`` and an in-place activation (``aten.silu_`` under export)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(6, 2)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        a = self.a(x)
        h = torch.cat([a, self.act(self.b(a))], 1)[:, :6]
        h = F.pad(h.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
        return self.head(h.mean((1, 2)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_crop_of_channels_and_channels_last_padding(tracer):
    g = _check(GhostCrop(), torch.randn(2, 3, 5, 5), tracer=tracer)
    assert all("split at" in s.note for s in g.layout.spaces if s.name in ("a", "b"))


class ConstantPositions(nn.Module):
    """EdgeNeXt's positional encoding: a convolution of a constant grid built in forward."""

    def __init__(self):
        super().__init__()
        self.a, self.pos, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")).to(x.dtype)
        return self.head((h + self.pos(grid[None])).mean((2, 3)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_weight_applied_to_a_constant(tracer):
    g = _check(ConstantPositions(), torch.randn(2, 3, 5, 5), tracer=tracer)
    assert [l.kind for l in g.layout.layers].count("input") == 2


def test_crop_of_spatial_axes_keeps_neurons():
    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))[:, :, 1:-1, ::2].amax(dim=(2, 3)))

    _check(Crop(), torch.randn(2, 2, 6, 6))


class LayerScaleBlock(nn.Module):
    """ConvNeXt-style: permutes to channels-last, functional layer norm, per-channel layer scale."""

    def __init__(self, c=6):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.ln_w, self.ln_b = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c))
        self.w1, self.b1 = nn.Parameter(torch.randn(8, c)), nn.Parameter(torch.randn(8))
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.w2 = nn.Parameter(torch.randn(c, 8))
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        h = self.stem(x)
        y = F.layer_norm(h.permute(0, 2, 3, 1), (h.shape[1],), self.ln_w, self.ln_b)
        y = F.linear(F.gelu(F.linear(y, self.w1, self.b1)), self.w2).permute(0, 3, 1, 2)
        h = h + self.gamma * y
        return self.head(h.mean((2, 3)))


def test_functional_linear_layer_norm_and_layer_scale():
    g = _check(LayerScaleBlock(), torch.randn(2, 3, 5, 5))
    feats = g.layout.node_features
    assert {"ln_weight", "ln_bias", "scale"} <= set(feats)
    assert "w1" in [b.param for b in g.layout.blocks]


def test_scalar_parameter_is_kept_as_extra():
    class Temp(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.t = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return self.b(torch.tanh(self.a(x) * self.t))

    g = _check(Temp(), torch.randn(2, 3))
    assert [p.name for p in g.layout.extra_params] == ["t"]


def test_auxiliary_heads_are_traced_in_training_mode():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.aux = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return (self.b(h), self.aux(h)) if self.training else self.b(h)

    g = _check(Aux(), torch.randn(1, 3))
    assert g.layout.meta["traced_in"] == "train"
    assert sum(l.kind == "output" for l in g.layout.layers) == 2


def test_stochastic_depth_and_module_versions():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.ops import StochasticDepth

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.sd = StochasticDepth(0.2, "row")

        def forward(self, x):
            h = self.a(x)
            return self.c(h + self.sd(torch.relu(self.b(h))))

    _check(Block(), torch.randn(2, 3))
    mnas = torchvision.models.mnasnet0_5()  # checks the state-dict version metadata on load
    g = wgraph.to_graph(mnas, torch.randn(1, 3, 32, 32))
    wgraph.load_into(copy.deepcopy(mnas), g)


def test_transposed_convolution_and_prelu():
    m = nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.PReLU(6), nn.ConvTranspose2d(6, 4, 3, stride=2), nn.PReLU(),
        nn.Conv2d(4, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2),
    )
    with torch.no_grad():
        m[1].weight.uniform_(-0.5, 0.5)
    g = _check(m, torch.randn(2, 2, 6, 6))
    lay = g.layout
    ct = next(p for p in lay.params if p.name == "2.weight")
    assert ct.transposed and g.edges[ct.index].shape == (1, 4, 6, 3, 3)
    assert "prelu" in lay.node_features and [p.name for p in lay.extra_params] == ["3.weight"]
    assert [s.scaling for s in lay.spaces if s.permutable] == ["positive", "positive", "real"]


class AttentionBlock(nn.Module):
    def __init__(self, d=8, heads=2):
        super().__init__()
        self.inp = nn.Linear(3, d)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        h = self.inp(x)
        y = self.ln(h)
        h = h + self.attn(y, y, y, need_weights=False)[0]
        h = h + self.mlp(h)
        return self.out(h.mean(1))


def test_attention_heads_move_as_blocks():
    g = _check(AttentionBlock(), torch.randn(2, 5, 3))
    lay = g.layout
    q = next(s for s in lay.spaces if s.name == "attn.q")
    v = next(s for s in lay.spaces if s.name == "attn.v")
    assert q.permutable and v.permutable and q.heads == v.heads == 2 and q.head_group == v.head_group >= 0
    assert [lay.layers[li].name for li in q.layers] == ["attn.q", "attn.k"]
    # over many draws whole heads do get swapped, and always consistently in q/k and v
    swapped = 0
    for seed in range(20):
        sym = wgraph.random_symmetry(g, seed=seed)
        pq, pv = sym.perms[lay.spaces.index(q)], sym.perms[lay.spaces.index(v)]
        hq, hv = pq.view(2, 4) // 4, pv.view(2, 4) // 4
        assert (hq == hq[:, :1]).all() and torch.equal(hq[:, 0], hv[:, 0])
        swapped += int(hq[0, 0] == 1)
    assert 0 < swapped < 20


def test_a_permutation_that_ignores_heads_changes_the_function():
    """Negative control: mixing dimensions of different heads is not a symmetry."""
    torch.manual_seed(0)
    model = AttentionBlock().double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    g = wgraph.to_graph(model, x)
    si = next(i for i, s in enumerate(g.layout.spaces) if s.name == "attn.q")
    bad = wgraph.Symmetry({si: torch.tensor([0, 1, 2, 4, 3, 5, 6, 7])})  # swaps a dim of head 0 with head 1
    other = wgraph.load_into(copy.deepcopy(model), g.permute(bad))
    with torch.no_grad():
        assert (other(x) - model(x)).abs().max() > 1e-6


class SDPABlock(nn.Module):
    """Separate q/k/v/o projections, heads split by a view, ``F.scaled_dot_product_attention``."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(3, d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        h = self.inp(x)
        B, N, D = h.shape
        q, k, v = (m(h).view(B, N, self.heads, D // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        return self.out((h + self.o(a)).mean(1))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_sdpa_pairs_query_and_key_dimensions(tracer):
    """Issue 17's defect: the graph must pair query dimension i with key dimension i of a head. A
    permutation of the query dimensions alone changes the function, so it must change a graph NFN's
    output; the same permutation of queries and keys together is a symmetry and must not."""
    import wgraph.nn

    torch.manual_seed(0)
    model = SDPABlock().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    g = wgraph.to_graph(model, x, tracer=tracer)
    assert_state_dict_exact(g.to_state_dict(), model.state_dict())
    assert any(b.kind == "identity" and b.name.startswith("attn:") for b in g.layout.blocks)
    gnn = wgraph.nn.from_preset("gnn", g.layout, out_dim=1).double()
    perm = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])  # two query dimensions of head 0
    query_only = copy.deepcopy(model)
    with torch.no_grad():
        query_only.q.weight.copy_(model.q.weight[perm])
        query_only.q.bias.copy_(model.q.bias[perm])
        assert (query_only(x) - model(x)).abs().max() > 1e-3
        moved = (gnn(wgraph.to_graph(query_only, x, tracer=tracer)) - gnn(g)).abs().max()
        assert moved > 1e-9, "the graph NFN cannot tell which key dimension a query dimension meets"
        qk = next(i for i, s in enumerate(g.layout.spaces) if s.name == "q")
        joint = g.permute(wgraph.Symmetry({qk: perm}))
        outputs_match(model, joint, x)
        assert (gnn(joint) - gnn(g)).abs().max() < 1e-12
    outputs_match(model, g.permute(wgraph.random_symmetry(g, seed=0)), x)


class PackedAttention(nn.Module):
    """timm's ``Attention``: one ``qkv`` projection reshaped to (B, N, 3, heads, head_dim), permuted,
    its parts taken by ``unbind`` or by indexing."""

    def __init__(self, d=8, heads=2, index=False, scaled=False):
        super().__init__()
        self.heads, self.index = heads, index
        self.inp, self.qkv, self.proj, self.out = nn.Linear(3, d), nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, 2)
        self.scale = nn.Parameter(torch.rand(3 * d) + 0.5) if scaled else None

    def forward(self, x):
        h = self.inp(x)
        B, N, D = h.shape
        qkv = self.qkv(h) if self.scale is None else self.qkv(h) * self.scale
        qkv = qkv.reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[0], qkv[1], qkv[2]) if self.index else qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        return self.out((h + self.proj(a)).mean(1))


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("index", [False, True])
def test_packed_qkv_keeps_head_structure(tracer, index):
    """The packed projection becomes three layers (row blocks of one weight, one bias over them):
    q and k paired and tied, heads movable as blocks in q/k and v alike."""
    g = _check(PackedAttention(index=index), torch.randn(2, 5, 3), tracer=tracer)
    lay = g.layout
    names = [lay.layers[li].name for li in range(len(lay.layers))]
    assert {"qkv[0]", "qkv[1]", "qkv[2]"} <= set(names)
    q = next(s for s in lay.spaces if s.name == "qkv[0]")
    v = next(s for s in lay.spaces if s.name == "qkv[2]")
    assert q.permutable and v.permutable and q.heads == v.heads == 2 and q.head_group == v.head_group >= 0
    assert [lay.layers[li].name for li in q.layers] == ["qkv[0]", "qkv[1]"]
    slots = [lay.params[lay.param_index[f"qkv.{p}"]] for p in ("weight", "bias")]
    assert [len(slot.targets) for slot in slots] == [3, 3]
    assert any(b.kind == "identity" and b.name.startswith("attn:") for b in lay.blocks)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_packed_qkv_read_elsewhere_too_is_split_and_fixed(tracer):
    """The packed output is also read by another layer after the parts are taken: unpacking would
    change what that reader sees, so the parts are fixed slices."""

    class Also(PackedAttention):
        def __init__(self):
            super().__init__()
            self.side = nn.Linear(24, 2)

        def forward(self, x):
            h = self.inp(x)
            B, N, D = h.shape
            t = self.qkv(h)
            q, k, v = t.reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
            return self.out((h + self.proj(a)).mean(1)) + self.side(t).mean(1)

    g = _check(Also(), torch.randn(2, 5, 3), tracer=tracer)
    assert not next(s for s in g.layout.spaces if s.name == "qkv").permutable


def test_packed_qkv_with_more_than_its_weight_is_split_and_fixed():
    """A packed layer that also holds other state (here a per-neuron scale) cannot be unpacked:
    its parts are slices, exact but with the spaces fixed, and the reason recorded."""
    g = _check(PackedAttention(scaled=True), torch.randn(2, 5, 3))
    qkv = next(s for s in g.layout.spaces if s.name == "qkv")
    assert not qkv.permutable and qkv.note.startswith("split at")


def test_shared_module_ties_its_layers():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.mid, self.out = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = torch.tanh(self.inp(x))
            h = torch.tanh(self.mid(h))
            return self.out(torch.tanh(self.mid(h)))  # the same module twice

    g = _check(Shared(), torch.randn(2, 3))
    lay = g.layout
    shared = [b for b in lay.blocks if b.kind == "shared"]
    assert len(shared) == 1 and shared[0].param == "mid.weight"
    assert len([s for s in lay.spaces if s.permutable]) == 1  # inp, mid (twice): one tied space
    data = g.to_pyg()  # the shared block's edges carry the weight's values
    blk = lay.blocks.index(shared[0])
    torch.testing.assert_close(data.edge_attr[data.edge_block == blk, 0], g.param("mid.weight")[0].flatten())


def test_tied_embedding_and_output_layer():
    class TiedLM(nn.Module):
        def __init__(self, vocab=11, d=6):
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            self.mlp = nn.Sequential(nn.Linear(d, 8), nn.GELU(), nn.Linear(8, d))
            self.head = nn.Linear(d, vocab, bias=False)
            self.head.weight = self.emb.weight  # tied

        def forward(self, ids):
            h = self.emb(ids)
            return self.head(h + self.mlp(h))

    torch.manual_seed(0)
    model = TiedLM().double().eval()
    ids = torch.randint(0, 11, (2, 5))
    g = wgraph.to_graph(model, ids)
    assert list(g.to_state_dict()) == list(model.state_dict())
    assert_state_dict_exact(g.to_state_dict(), model.state_dict())
    assert [b.kind for b in g.layout.blocks].count("shared") == 1
    permuted = wgraph.load_into(copy.deepcopy(model), g.permute(wgraph.random_symmetry(g, seed=0)))
    torch.testing.assert_close(permuted(ids), model(ids))
    stream = [s for s in g.layout.spaces if s.permutable and s.size == 6]
    assert len(stream) == 1  # embedding output and residual stream: one space, tied to the head's input


def test_registry_one_rule_per_op_and_declared_scalings():
    from wgraph.convert.rules import REGISTRY, SCALINGS, Registry
    from wgraph.convert.rules.pointwise import pointwise

    registry = Registry()
    registry.register(functions=(torch.atan,), scaling="sign")(pointwise)
    registry.register(functions=(torch.atan,), scaling="sign")(pointwise)  # the same declaration again: fine
    with pytest.raises(ValueError, match="two conversion rules"):
        registry.register(functions=(torch.atan,), scaling="none")(pointwise)
    with pytest.raises(ValueError, match="scaling must be one of"):
        registry.register(functions=(torch.asin,), scaling="odd")
    loaded = []
    registry.lazy("torch", loaded.append)  # registers once its package is imported
    registry.load_lazy()
    registry.load_lazy()
    assert loaded == [registry]
    assert all(d.scaling in SCALINGS for _, _, d in REGISTRY.entries())
    # An ATen alias declared by a rule converts like its fx-level op, with the same declaration.
    aten = REGISTRY.find("call_function", torch.ops.aten.relu.default)
    fx_level = REGISTRY.find("call_module", nn.ReLU())
    assert aten.rule is fx_level.rule and aten.scaling == fx_level.scaling == "positive"
    assert REGISTRY.find("call_method", "no_such_method") is None


def test_a_registered_rule_converts_its_op():
    """What docs/contributing.md asks of a new rule: a small model using the op round-trips exactly,
    and a random symmetry (scalings included) preserves its function."""
    from wgraph.convert.rules import register
    from wgraph.convert.rules.pointwise import pointwise

    register(functions=(torch.atan,), methods=("atan",), aten=("atan.default",), scaling="sign")(pointwise)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(torch.atan(self.a(x)))

    for tracer in ("fx", "export"):
        m = M().double()
        x = torch.randn(4, 3, dtype=torch.float64)
        g = wgraph.to_graph(m, x, tracer=tracer)
        assert_state_dict_exact(g.to_state_dict(), m.state_dict())
        assert [s.scaling for s in g.layout.spaces if s.permutable] == ["sign"]
        outputs_match(m, g.permute(wgraph.random_symmetry(g, seed=0, scale=True)), x)


class ExplicitAttention(nn.Module):
    """timm's ``Attention`` with ``fused_attn`` off: ``softmax(q @ k^T * scale + bias) @ v``, with an
    optional per-head relative position bias table, a learned per-head temperature or talking heads
    (a Linear across heads, CaiT)."""

    def __init__(self, d=8, heads=2, tokens=5, extra=None):
        super().__init__()
        self.heads, self.extra = heads, extra
        self.inp, self.qkv, self.proj, self.out = nn.Linear(3, d), nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, 2)
        if extra == "bias":
            self.table = nn.Parameter(torch.randn(heads, 2 * tokens - 1))
            idx = torch.arange(tokens)
            self.register_buffer("index", (idx[:, None] - idx[None, :] + tokens - 1), persistent=False)
        elif extra == "temperature":
            self.logit_scale = nn.Parameter(torch.randn(heads, 1, 1))
        elif extra == "talking":
            self.talk = nn.Linear(heads, heads)

    def forward(self, x):
        h = self.inp(x)
        B, N, D = h.shape
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * 0.5) @ k.transpose(-2, -1)
        if self.extra == "bias":
            attn = attn + self.table[:, self.index].unsqueeze(0)
        elif self.extra == "temperature":
            attn = attn * self.logit_scale.clamp(max=2.0).exp()
        elif self.extra == "talking":
            attn = self.talk(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        a = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, D)
        return self.out((h + self.proj(a)).mean(1))


@pytest.mark.parametrize("extra", [None, "bias", "temperature", "talking"])
def test_explicit_attention_pairs_query_and_key_and_keeps_heads(extra):
    """Written-out attention gets the head structure of ``nn.MultiheadAttention``: q and k tied and
    paired, dimensions permutable within a head; whole heads move only where nothing per head
    (a bias table, a temperature, a Linear across heads) pins them, and those parameters are extras."""
    g = _check(ExplicitAttention(extra=extra), torch.randn(2, 5, 3))
    lay = g.layout
    q = next(s for s in lay.spaces if s.name == "qkv[0]")
    v = next(s for s in lay.spaces if s.name == "qkv[2]")
    assert q.permutable and v.permutable and q.heads == v.heads == 2
    assert [lay.layers[li].name for li in q.layers] == ["qkv[0]", "qkv[1]"]
    assert any(b.kind == "identity" and b.name.startswith("attn:") for b in lay.blocks)
    if extra is None:
        assert q.head_group == v.head_group >= 0
    else:
        assert q.head_group == v.head_group == -1
        assert {"bias": ["table"], "temperature": ["logit_scale"], "talking": ["talk.weight", "talk.bias"]}[extra] == [
            p.name for p in lay.extra_params
        ]


def test_heads_of_explicit_attention_are_not_free_dimensions():
    """Moving one query/key dimension into another head changes the function: the converter must
    not offer it (a random symmetry keeps dimensions inside their heads)."""
    model = ExplicitAttention(heads=2).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    g = wgraph.to_graph(model, x)
    qk = next(i for i, s in enumerate(g.layout.spaces) if s.name == "qkv[0]")
    across = g.permute(wgraph.Symmetry({qk: torch.tensor([4, 1, 2, 3, 0, 5, 6, 7])}))
    with torch.no_grad():
        assert (wgraph.load_into(copy.deepcopy(model), across)(x) - model(x)).abs().max() > 1e-6
    for seed in range(5):
        perm = wgraph.random_symmetry(g, seed=seed).perms[qk]
        assert set(perm[:4].tolist()) in ({0, 1, 2, 3}, {4, 5, 6, 7})


class ClassTokens(nn.Module):
    """CaiT: a class token joined to the patch tokens, and also the start of the class stream."""

    def __init__(self, d=6):
        super().__init__()
        self.inp, self.mix, self.out = nn.Linear(3, d), nn.Linear(d, d), nn.Linear(d, 2)
        self.cls = nn.Parameter(torch.randn(1, 1, d))

    def forward(self, x):
        h = self.inp(x)
        c = self.cls.expand(h.shape[0], -1, -1)
        u = torch.cat((c, h), dim=1)
        c = c + self.mix(u).mean(1, keepdim=True)
        return self.out(torch.cat((c, h), dim=1)[:, 0])


def test_tokens_of_two_layers_joined_share_a_permutation():
    g = _check(ClassTokens(), torch.randn(1, 4, 3))
    assert any(b.kind == "identity" and b.name.startswith("tokens:") for b in g.layout.blocks)
    assert sum(1 for s in g.layout.spaces if s.permutable) >= 1


class PatchMerging(nn.Module):
    """Swin's patch merging written as a reshape: (B, H/2, 2, W/2, 2, C) -> (B, H/2, W/2, 4C)."""

    def __init__(self, c=4):
        super().__init__()
        self.inp, self.norm, self.red = nn.Linear(3, c), nn.LayerNorm(4 * c), nn.Linear(4 * c, 2)

    def forward(self, x):
        h = self.inp(x)
        B, H, W, C = h.shape
        h = h.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.red(self.norm(h)).mean((1, 2))


def test_merging_positions_into_channels_is_a_concatenation_of_copies():
    g = _check(PatchMerging(), torch.randn(2, 4, 4, 3))
    merged = next(layer for layer in g.layout.layers if layer.name.endswith(":merge"))
    assert merged.size == 16 and g.layout.spaces[g.layout.layers[1].space].permutable


class TokenMixing(nn.Module):
    """MLP-Mixer's token mixing: a Linear over the token axis of (B, tokens, C)."""

    def __init__(self, c=6, tokens=5):
        super().__init__()
        self.inp, self.tok, self.out = nn.Linear(3, c), nn.Linear(tokens, tokens), nn.Linear(c, 2)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.tok(h.transpose(1, 2)).transpose(1, 2)
        return self.out(h.mean(1))


def test_a_weight_along_the_tokens_is_an_extra_and_keeps_the_neurons_permutable():
    g = _check(TokenMixing(), torch.randn(2, 5, 3))
    assert [p.name for p in g.layout.extra_params] == ["tok.weight", "tok.bias"]
    assert g.layout.spaces[g.layout.layers[1].space].permutable


class ChannelAttention(nn.Module):
    """XCA (XCiT, EdgeNeXt): q, k normalized along the tokens, ``softmax(q k^T * t) v`` over channels
    within each head (a Gram matrix of channels), with a per-head temperature or none (DaViT's
    ``(k^T v) q^T`` is the same product read from the other side)."""

    def __init__(self, d=8, heads=2, temperature=True, davit=False):
        super().__init__()
        self.heads, self.davit = heads, davit
        self.inp, self.qkv, self.proj, self.out = nn.Linear(3, d), nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, 2)
        self.temperature = nn.Parameter(torch.rand(heads, 1, 1) + 0.5) if temperature else None

    def forward(self, x):
        h = self.inp(x)
        B, N, D = h.shape
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.davit:
            a = ((k.transpose(-1, -2) @ v).softmax(-1) @ q.transpose(-1, -2)).transpose(-1, -2).transpose(1, 2)
        else:
            q, k, v = (F.normalize(t.transpose(-2, -1), dim=-1) for t in (q, k, v))
            attn = q @ k.transpose(-2, -1)
            attn = attn if self.temperature is None else attn * self.temperature
            a = (attn.softmax(dim=-1) @ v).permute(0, 3, 1, 2)
        return self.out((h + self.proj(a.reshape(B, N, D))).mean(1))


@pytest.mark.parametrize("kind", ["temperature", "free", "davit"])
def test_channel_attention_pairs_the_contracted_channels(kind):
    g = _check(ChannelAttention(temperature=kind == "temperature", davit=kind == "davit"), torch.randn(2, 5, 3))
    spaces = [s for s in g.layout.spaces if s.name.startswith("qkv")]
    assert len(spaces) == 2 and all(s.permutable and s.heads == 2 for s in spaces)
    assert all((s.head_group == -1) == (kind == "temperature") for s in spaces)
    assert any(b.kind == "identity" and b.name.startswith("attn:") for b in g.layout.blocks)


class InterleavedHeads(nn.Module):
    """LeViT: ``qkv(x).view(B, N, heads, -1).split([kd, kd, vd], dim=3)`` (q, k, v interleaved per
    head), a per-head gate ``gates[:, l:l+1]`` broadcast over channels (FocalNet) and values on the
    left of the scores ``v @ attn^T`` (EfficientViT-MSRA)."""

    def __init__(self, heads=2, kd=2, vd=3):
        super().__init__()
        self.heads, self.kd, self.vd = heads, kd, vd
        self.inp, self.qkv = nn.Linear(3, 6), nn.Linear(6, heads * (2 * kd + vd))
        self.gate, self.proj, self.out = nn.Linear(6, 2), nn.Linear(heads * vd, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.inp(x)
        B, N, _ = h.shape
        q, k, v = self.qkv(h).view(B, N, self.heads, -1).split([self.kd, self.kd, self.vd], dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.permute(0, 2, 3, 1)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        a = (v @ attn.transpose(-2, -1)).permute(0, 3, 1, 2).reshape(B, N, -1)
        y = h + self.proj(a)
        return self.out(y * self.gate(y)[:, :, 1:2])


def test_interleaved_heads_gates_and_values_on_the_left():
    g = _check(InterleavedHeads(), torch.randn(2, 5, 3))
    notes = [s.note for s in g.layout.spaces if not s.permutable]
    assert any("split of a head-split axis" in n for n in notes)
    assert g.layout.spaces[g.layout.layers[1].space].permutable  # the stream itself stays permutable


def test_weight_standardized_convolution_keeps_its_gain_with_its_channels():
    """timm's ScaledStdConv2d (NFNet): the stored weight is the block, the gain a node feature;
    permutations commute with the per-row standardization, scalings do not (none allowed)."""
    std_conv = pytest.importorskip("timm.layers.std_conv")
    m = nn.Sequential(
        std_conv.ScaledStdConv2d(3, 6, 3), nn.ReLU(), std_conv.ScaledStdConv2d(6, 5, 3), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(5, 2),
    )
    with torch.no_grad():
        for conv in (m[0], m[2]):
            conv.gain.uniform_(0.5, 2.0)
    g = _check(m, torch.randn(2, 3, 9, 9))
    assert "ws_gain" in g.layout.node_features
    hidden = [g.layout.spaces[g.layout.layers[li].space] for li in (1, 2)]
    assert all(s.permutable and s.scaling == "none" for s in hidden)


class CosineWindowAttention(nn.Module):
    """Swin V2: q/k/v bias concatenated from parameters (k's a zero buffer), cosine attention with a
    learned per-head logit scale, a relative bias from a small MLP gathered by an index table, and
    shifted windows (``torch.roll`` along the tokens)."""

    def __init__(self, d=8, heads=2, tokens=4):
        super().__init__()
        self.heads = heads
        self.inp, self.qkv = nn.Linear(3, d), nn.Linear(d, 3 * d, bias=False)
        self.proj, self.out = nn.Linear(d, d), nn.Linear(d, 2)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(d)), nn.Parameter(torch.randn(d))
        self.register_buffer("k_bias", torch.zeros(d), persistent=False)
        self.logit_scale = nn.Parameter(torch.randn(heads, 1, 1))
        self.cpb = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, heads))
        self.register_buffer("coords", torch.randn(2 * tokens - 1, 2), persistent=False)
        idx = torch.arange(tokens)
        self.register_buffer("index", (idx[:, None] - idx[None, :] + tokens - 1).reshape(-1), persistent=False)

    def forward(self, x):
        h = torch.roll(self.inp(x), shifts=1, dims=1)
        B, N, D = h.shape
        qkv = F.linear(h, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * self.logit_scale.clamp(max=4.0).exp()
        bias = self.cpb(self.coords)[self.index].view(N, N, -1).permute(2, 0, 1)
        attn = attn + 16 * torch.sigmoid(bias).unsqueeze(0)
        a = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)
        return self.out((h + self.proj(a)).mean(1))


def test_cosine_attention_with_a_computed_bias_and_bias_parameters_is_exact_with_fixed_parts():
    g = _check(CosineWindowAttention(), torch.randn(2, 4, 3))
    notes = " ".join(s.note for s in g.layout.spaces if not s.permutable)
    assert "bias made of parameters (q_bias, v_bias)" in notes and "added to attention scores" in notes
    assert {"q_bias", "v_bias", "logit_scale"} <= {p.name for p in g.layout.extra_params}
    assert g.layout.spaces[g.layout.layers[1].space].permutable  # the token stream


class SplitAttentionAndFriends(nn.Module):
    """ResNeSt's split attention (a radix split, a softmax across the splits, a sum over them), a
    shared depthwise convolution called twice (CoaT), a blur filter held as a constant buffer
    (TResNet), ``nn.Unfold`` (TNT) and ``torch.stack`` of two branches (SKNet)."""

    def __init__(self, c=4, radix=2):
        super().__init__()
        self.radix = radix
        self.stem, self.conv = nn.Conv2d(3, c, 1), nn.Conv2d(c, c * radix, 3, padding=1)
        self.fc, self.dw = nn.Conv2d(c, c * radix, 1), nn.Conv2d(c, c, 3, padding=1, groups=c)
        tap = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("blur", tap.outer(tap).expand(c, 1, 3, 3) / 16, persistent=False)
        self.unfold, self.head = nn.Unfold(2, stride=2), nn.Linear(c * 4, 2)

    def forward(self, x):
        h = self.stem(x)
        B, C, H, W = h.shape
        s = self.conv(h).reshape(B, self.radix, C, H, W)
        gate = self.fc(s.sum(1).mean((2, 3), keepdim=True)).view(B, self.radix, C, 1, 1).softmax(1)
        h = (s * gate).sum(1)
        h = torch.stack([self.dw(h), self.dw(F.relu(h))], dim=1).sum(1)
        h = F.conv2d(h, self.blur, padding=1, groups=C)
        return self.head(self.unfold(h).mean(-1))


def test_split_attention_shared_depthwise_blur_and_unfold_are_exact():
    g = _check(SplitAttentionAndFriends(), torch.randn(2, 3, 6, 6))
    notes = " ".join(s.note for s in g.layout.spaces if not s.permutable)
    assert "reduction over parts of the neurons" in notes  # (the blur's layer lies in the same fixed space)
    assert [b.kind for b in g.layout.blocks].count("grouped") == 1  # the shared depthwise weight, held once
    assert any(layer.name.endswith(":unfold") for layer in g.layout.layers)


class HalfFixedAttention(ExplicitAttention):
    """Explicit attention whose query/key layer is pinned by a constant that differs per neuron."""

    def forward(self, x):
        h = self.inp(x)
        B, N, D = h.shape
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * torch.arange(1.0, 1.0 + D // self.heads)  # pins q (and the tied k)
        a = ((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, D)
        return self.out((h + self.proj(a)).mean(1))


def test_heads_do_not_move_when_one_space_of_their_group_is_fixed():
    """Heads move as blocks in q/k and v together; with q/k fixed, v's heads must stay too (a
    wrong symmetry otherwise), while v's dimensions may still move within each head."""
    g = _check(HalfFixedAttention(), torch.randn(2, 5, 3))
    q = next(s for s in g.layout.spaces if s.name == "qkv[0]")
    v = next(s for s in g.layout.spaces if s.name == "qkv[2]")
    assert not q.permutable and v.permutable and v.heads == 2 and v.head_group == -1


class PixelEmbed(nn.Module):
    """TNT's pixel embedding: a convolution, nn.Unfold into patches of pixels, the flattened
    (channel, pixel) axis reshaped back to (channel, h, w) and a pixel position embedding added."""

    def __init__(self, c=4):
        super().__init__()
        self.proj, self.unfold = nn.Conv2d(3, c, 3, padding=1), nn.Unfold(2, stride=2)
        self.pos = nn.Parameter(torch.randn(1, c, 2, 2))
        self.norm, self.head = nn.LayerNorm(c), nn.Linear(c, 2)

    def forward(self, x):
        B = x.shape[0]
        h = self.unfold(self.proj(x)).transpose(1, 2)  # (B, patches, C * 4)
        h = h.reshape(-1, self.proj.out_channels, 2, 2) + self.pos
        h = self.norm(h.reshape(h.shape[0], h.shape[1], -1).transpose(1, 2))
        return self.head(h.reshape(B, -1, h.shape[-1]).mean(1))


def test_unflattening_a_flattened_layer_gives_its_channels_back():
    g = _check(PixelEmbed(), torch.randn(2, 3, 4, 4))
    proj = g.layout.layers[1]
    assert proj.name == "proj" and g.layout.spaces[proj.space].permutable


class FoldedChannels(nn.Module):
    """MobileViT's unfolding: channels folded into the batch axis by a reshape, patches moved, and
    the channels brought back onto one axis by later reshapes (a transformer runs in between)."""

    def __init__(self, c=4, p=2):
        super().__init__()
        self.p = p
        self.inp, self.mix, self.out = nn.Conv2d(3, c, 1), nn.Linear(c, c), nn.Linear(c, 2)

    def forward(self, x):
        h = self.inp(x)
        B, C, H, W = h.shape
        p, nh, nw = self.p, H // self.p, W // self.p
        t = h.reshape(B * C * nh, p, nw, p).transpose(1, 2)
        t = t.reshape(B, C, nh * nw, p * p).transpose(1, 3).reshape(B * p * p, nh * nw, C)
        t = t + self.mix(t)
        back = t.contiguous().view(B, p * p, nh * nw, C).transpose(1, 3).reshape(B * C * nh, nw, p, p)
        back = back.transpose(1, 2).reshape(B, C, H, W)
        return self.out((h + back).mean((2, 3)))


def test_channels_folded_into_other_axes_are_followed_until_they_come_back():
    g = _check(FoldedChannels(), torch.randn(2, 3, 4, 4))
    assert g.layout.spaces[g.layout.layers[1].space].permutable


def test_an_op_on_folded_channels_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Conv2d(3, 4, 1), nn.Linear(8, 2)

        def forward(self, x):
            h = self.inp(x).reshape(-1, 2, 2).mean(-1)  # mixes neurons folded into the batch axis
            return self.out(h.reshape(x.shape[0], -1))

    with pytest.raises(wgraph.UnsupportedOperation, match="folded into other axes"):
        wgraph.to_graph(Bad(), torch.randn(2, 3, 2, 2))
