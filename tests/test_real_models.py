"""Real architectures: a diverse torchvision subset and `transformers` GPT-2 / BERT / ViT built
from small configs (nothing downloaded). Each converts with a bit-exact round trip, and a random
symmetry preserves the function in float64 (the full torchvision corpus runs as
benchmarks/convert_corpus.py)."""

import copy
import warnings

import pytest
import torch
from conftest import assert_state_dict_exact

import wgraph
from wgraph.convert.check import calibrated, symmetric_outputs


def _check(model, x, min_permutable=1, dtype=torch.float64):
    torch.manual_seed(0)
    rtol = 1e-6 if dtype == torch.float64 else 1e-4
    model = model.to(dtype)
    if x.is_floating_point():
        x = x.to(dtype)
        calibrated(model, x)
    model.eval()
    g = wgraph.to_graph(model, x[:1])
    assert_state_dict_exact(g.to_state_dict(), model.state_dict())
    assert sum(s.size for s in g.layout.spaces if s.permutable) >= min_permutable
    a, b = symmetric_outputs(model, g, x)
    assert (a[0] - a[1]).abs().max() > 1e-6 * a.abs().max(), "outputs do not depend on the input: vacuous check"
    torch.testing.assert_close(b, a, rtol=rtol, atol=rtol * a.abs().max().item())
    return g


# input size; models built on depthwise convolutions are checked in float32 (rtol 1e-4), because
# PyTorch's float64 depthwise convolution on CPU is two orders of magnitude slower. A wrong
# permutation changes outputs at order 1, far above either tolerance.
TORCHVISION = {
    "resnet18": 64, "densenet121": 64, "vit_b_16": 64, "swin_t": 64, "regnet_y_400mf": 64, "squeezenet1_0": 64,
    "mobilenet_v3_small": 32, "efficientnet_b0": 32, "convnext_tiny": 32, "shufflenet_v2_x0_5": 32,
}
DEPTHWISE = {"mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "shufflenet_v2_x0_5", "regnet_y_400mf"}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_models(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    s = TORCHVISION[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {"image_size": s} if name.startswith("vit") else {}  # the same architecture on fewer tokens
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    dtype = torch.float32 if name in DEPTHWISE else torch.float64
    _check(model, torch.randn(2, 3, s, s), min_permutable=100, dtype=dtype)


# timm (issue 16): one model per kind of op the converter learned for it, shrunk where timm allows;
# the full set of families runs as benchmarks/convert_timm.py.
TIMM = {
    "deit_tiny_patch16_224": {"img_size": 32, "depth": 2},  # packed qkv attention, heads kept
    "convnextv2_atto": {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)},  # GRN: norm, channel statistic, addcmul
    "metaformer": {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)},  # F.group_norm, scale (C,) used as (C, 1, 1)
    "resnet10t": {},  # timm's ResNet stem and BatchNorm
}


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_models(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "metaformer":  # PoolFormer-V2's blocks (timm's registered variants fix the depths)
            from timm.models.metaformer import GroupNorm1NoBias, MetaFormer

            model = MetaFormer(norm_layers=GroupNorm1NoBias, layer_scale_init_values=1e-5, **TIMM[name])
        else:
            model = timm.create_model(name, pretrained=False, **TIMM[name])
    g = _check(model, torch.randn(2, 3, 32, 32), min_permutable=64)
    # a graph NFN reads the converted graph, invariant to the graph's own symmetries
    from wgraph.nn import GraphNFN
    from wgraph.testing import assert_invariant

    torch.manual_seed(0)
    assert_invariant(GraphNFN([g.layout], hidden=8, layers=2).double().eval(), g.to(torch.float64), atol=1e-8)


def test_timm_batch_norm_act():
    """timm's BatchNormAct2d calls F.batch_norm: converted as BatchNorm node features."""
    timm = pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8), nn.Conv2d(8, 8, 3, groups=8), BatchNormAct2d(8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    g = _check(model, torch.randn(2, 3, 12, 12), min_permutable=8)
    assert {"bn_mean", "bn_var"} <= set(g.layout.node_features) and timm


def _hf(name):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name in ("gpt2", "gpt2-lm"):
        cfg = transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16, use_cache=False,
            attn_implementation="sdpa", bos_token_id=0, eos_token_id=0,
        )
        kind = transformers.GPT2Model if name == "gpt2" else transformers.GPT2LMHeadModel  # LM head: tied
        return kind(cfg), torch.randint(0, 50, (2, 8))
    if name == "bert":
        cfg = transformers.BertConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            vocab_size=50, max_position_embeddings=16, attn_implementation="sdpa",
        )
        return transformers.BertModel(cfg), torch.randint(0, 50, (2, 8))
    cfg = transformers.ViTConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=3, attn_implementation="sdpa",
    )
    return transformers.ViTForImageClassification(cfg), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit"])
def test_transformers_models(name):
    model, x = _hf(name)
    g = _check(model.eval(), x, min_permutable=64)
    assert g.layout.meta["tracer"] == "export"  # their forward cannot be traced by torch.fx
    embeddings = [l for l in g.layout.layers if l.kind == "input"]
    if name != "vit":
        assert embeddings[0].size == 50  # one input node per vocabulary token


def _decoder(name):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=50, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
                  max_position_embeddings=16)
    if name == "llama":
        return transformers.LlamaModel(transformers.LlamaConfig(**common, num_key_value_heads=4))
    if name == "mistral":
        return transformers.MistralModel(transformers.MistralConfig(**common, num_key_value_heads=4))
    return transformers.GPTNeoXModel(transformers.GPTNeoXConfig(**common))


@pytest.mark.parametrize("name", ["llama", "mistral", "neox"])
def test_decoders_with_rotary_embeddings(name):
    """Llama, Mistral (hand-written RMSNorm, rotary embeddings) and GPT-NeoX (partial rotary) with
    their default configuration. Rotary embeddings rotate fixed pairs of each head's query and key
    dimensions by position-dependent angles: no permutation of those dimensions commutes with it,
    so the query/key spaces are fixed (and say why); values and feed-forward neurons stay
    permutable, and the random symmetry preserves the function."""
    model = _decoder(name)
    g = _check(model.eval(), torch.randint(0, 50, (2, 8)), min_permutable=64)
    notes = " ".join(s.note for s in g.layout.spaces if not s.permutable)
    assert "a slice of each head's dimensions" in notes and "a concatenation within attention heads" in notes
    values = [s for s in g.layout.spaces if s.permutable and s.heads == 4]
    # one value space per layer, dimensions permutable within heads; GPT-NeoX interleaves q, k and v
    # per head in one projection (view(B, N, heads, 3 * d).split), which fixes all three
    assert len(values) == (0 if name == "neox" else 2)


def test_decoder_with_its_default_cache_setting():
    """GPT-2 with ``use_cache=True`` (the default) returns a ``DynamicCache``, which no front end
    traces: the cache is off while converting, and back on afterwards."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=8, bos_token_id=0,
                                  eos_token_id=0, attn_implementation="sdpa")
    model = transformers.GPT2Model(cfg).double().eval()
    assert model.config.use_cache
    x = torch.randint(0, 20, (2, 6))
    g = wgraph.to_graph(model, x[:1])
    assert model.config.use_cache
    assert_state_dict_exact(g.to_state_dict(), model.state_dict())
    permuted = wgraph.load_into(copy.deepcopy(model), g.permute(wgraph.random_symmetry(g, seed=0)))
    with torch.no_grad():
        torch.testing.assert_close(permuted(x)[0], model(x)[0], rtol=1e-9, atol=1e-9)


def test_parameter_head_covers_packed_attention_parameters():
    """The per-parameter head writes every parameter, including the q/k/v parts of a packed bias."""
    from torch import nn

    from wgraph.nn import GraphNFN

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(3, 8), nn.Linear(8, 2)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            h = self.inp(x)
            return self.out(h + self.attn(h, h, h, need_weights=False)[0])

    torch.manual_seed(0)
    g = wgraph.to_graph(Block(), torch.randn(1, 5, 3))
    out = GraphNFN([g.layout], head="parameters")(g)
    sd = out.to_state_dict()
    assert sd["attn.in_proj_bias"].shape == (24,)
    assert (sd["attn.in_proj_bias"][8:] != 0).all()  # the k and v parts are written, not left zero


@pytest.mark.parametrize("name", ["gpt2", "bert", "gpt2-lm"])
def test_graph_nfn_symmetries_on_transformers(name):
    """The graph NFN's readout is invariant and its per-parameter head equivariant on GPT-2 and
    BERT graphs (embeddings, attention heads, packed projections, LayerNorms), float64; GPT-2 with
    its LM head (the token embedding tied to the output layer, a shared block) is read too."""
    from wgraph.nn import GraphNFN
    from wgraph.testing import assert_equivariant, assert_invariant

    model, x = _hf(name)
    g = wgraph.to_graph(model.eval(), x[:1]).to(torch.float64)
    torch.manual_seed(0)
    invariant = GraphNFN([g.layout], hidden=8, layers=2).double().eval()
    assert_invariant(invariant, g, atol=1e-8)
    if name == "gpt2-lm":
        assert any(b.kind == "shared" for b in g.layout.blocks)
        wgraph.nn.from_preset("gnn", g.layout).double()(g).sum().backward()
        return
    head = GraphNFN([g.layout], hidden=8, layers=2, head="parameters").double().eval()
    assert_equivariant(head, g, atol=1e-8)


def test_t5_encoder_with_its_relative_position_bias():
    """T5's encoder: hand-written RMSNorm, attention with a relative position bias (an embedding
    of position buckets, one value per head) that pins the heads in place; exact, and a random
    symmetry (dimensions within heads, feed-forward neurons) preserves the function."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    g = _check(transformers.T5EncoderModel(cfg).eval(), torch.randint(0, 50, (2, 8)), min_permutable=64)
    heads = [s for s in g.layout.spaces if s.heads == 4]
    assert heads and all(s.head_group == -1 for s in heads)
