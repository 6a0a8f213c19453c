"""The ``triton`` message-passing backend against ``reference``: values, gradients, tiling, whole model.

Without a GPU the kernels run under the Triton interpreter. Triton decides at decoration time (when
``wgraph.kernels.triton_fused`` is first imported) whether a kernel is compiled or interpreted, and
other test modules may import it first; so :func:`test_interpreter_suite` runs this file again in a
subprocess with ``TRITON_INTERPRET=1`` set from the start, and the tests marked ``interp`` run there
(or here, when this process was itself started with ``TRITON_INTERPRET=1``). Tests marked ``gpu``
need CUDA and check the same agreement at real sizes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the triton backend falls back to fused")

import wgraph.kernels.triton_fused as tf  # noqa: E402
from wgraph.kernels import ACTIVATIONS, explain, get_backend, message_pass, resolve_backend  # noqa: E402
from wgraph.nn import GraphNFN  # noqa: E402

CUDA = torch.cuda.is_available()
interp = pytest.mark.skipif(
    not tf.INTERPRETED, reason="interpreter tests run in a subprocess with TRITON_INTERPRET=1 (test_interpreter_suite)"
)


def rnd(gen, *shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=gen, dtype=dtype).to(device)


def block_inputs(gen, reverse, b=2, out_n=5, in_n=7, h=6, k=3, groups=1, dtype=torch.float32, device="cpu"):
    n_send, n_recv = (in_n, out_n) if not reverse else (out_n, in_n)
    shapes = [(b, n_send, h), (b, n_recv, h), (b, out_n, in_n // groups, k), (k, h)]
    return [rnd(gen, *s, dtype=dtype, device=device).requires_grad_() for s in shapes]


def outputs_and_grads(backend, inputs, args=None, **kwargs):
    out = message_pass(*(inputs if args is None else args), backend=backend, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    wants = [t for t in inputs if t.requires_grad]
    return out.detach(), torch.autograd.grad(out, wants, g)


def assert_close_rel(a, b, rtol=1e-5):
    """Max abs difference at most ``rtol`` times the largest magnitude of ``b`` (at least 1)."""
    scale = max(b.abs().max().item(), 1.0)
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, (err, scale)


def assert_agree(inputs, rtol=1e-5, args=None, **kw):
    ref, ref_g = outputs_and_grads("reference", inputs, args, **kw)
    out, out_g = outputs_and_grads("triton", inputs, args, **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close_rel(out, ref, rtol)
    for a, b in zip(out_g, ref_g):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close_rel(a, b, rtol)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 4 rows x 4 columns x 8 channels: two tiles on both axes of a 5 x 7 block, partial ones at
    the edges."""
    monkeypatch.setattr(tf, "TILE_ELEMS", 128)
    monkeypatch.setattr(tf, "MAX_BI", 4)


# ---------------------------------------------------------------------------------------------------------------------
# Always (no interpreter, no GPU needed)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(tf.INTERPRETED, reason="this process already runs the interpreter tests")
def test_interpreter_suite():
    """Run this file's interpreter tests in a fresh process where ``TRITON_INTERPRET=1`` is set before any import."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not gpu and not slow", __file__]
    cmd += ["-k", "not test_interpreter_suite"]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-3000:]


def test_tiles_are_powers_of_two_within_budget():
    for out, inn, H in [(1, 1, 1), (5, 7, 6), (256, 784, 32), (10, 256, 64), (16, 16, 64), (3, 1000, 200)]:
        BO, BI, BH = tf._tiles(out, inn, H)
        for n in (BO, BI, BH):
            assert n >= 1 and n & (n - 1) == 0
        assert BH >= H and BI <= tf.MAX_BI
        assert BO * BI * BH <= max(tf.TILE_ELEMS, BH)


def test_supports_declares_the_fallbacks():
    """What the kernels compute themselves; the rest goes to ``fused`` (and on to ``reference``)."""
    assert tf.BACKEND.chain() == ("triton", "fused", "reference")
    assert set(tf.ACTS) <= set(ACTIVATIONS)
    assert tf.BACKEND.supports("dense", ("sum", "mean"), "gelu", torch.bfloat16, "cuda")
    for args, why in [
        (("identity", "sum", "relu", torch.float32, "cuda"), "not fused"),
        (("dense", ("mean", "max"), "relu", torch.float32, "cuda"), "sum and mean only"),
        (("dense", "sum", "relu", torch.int64, "cuda"), "float32, float64"),
    ]:
        answer = tf.BACKEND.supports(*args)
        assert not answer and why in answer.reason, (args, answer)
    if not tf.INTERPRETED:
        assert "CUDA tensors" in tf.BACKEND.supports("dense", "sum", "relu", torch.float32, "cpu").reason
        assert explain("triton", device="cpu").runs("dense") == "fused"


def test_cpu_tensors_without_interpreter_go_to_fused(gen):
    """Compiled kernels cannot take CPU tensors: the backend hands them to ``fused`` (same numbers)."""
    if tf.INTERPRETED:
        pytest.skip("the interpreter runs CPU tensors itself")
    inputs = block_inputs(gen, False)
    assert not tf.runs_here(*inputs)
    kw = dict(kind="dense", reverse=False, aggr=("mean",), act="relu")
    assert torch.equal(message_pass(*inputs, backend="triton", **kw), message_pass(*inputs, backend="fused", **kw))


# ---------------------------------------------------------------------------------------------------------------------
# Interpreter (CPU, tiny sizes)
# ---------------------------------------------------------------------------------------------------------------------


@interp
@pytest.mark.parametrize(
    "act,reverse",
    [("relu", False), ("relu", True), ("tanh", False), ("gelu", True), ("silu", False), ("identity", True)],
)
def test_dense_matches_reference(gen, small_tiles, act, reverse):
    inputs = block_inputs(gen, reverse, k=2)
    assert_agree(inputs, kind="dense", reverse=reverse, aggr=("sum", "mean"), act=act)


@interp
@pytest.mark.parametrize("reverse", [False, True])
def test_conv_and_linear_kernels(gen, small_tiles, reverse):
    """K = 9 (a 3 x 3 convolution) and K = 1 (a Linear weight)."""
    for k in (9, 1):
        inputs = block_inputs(gen, reverse, k=k)
        assert_agree(inputs, kind="dense", reverse=reverse, aggr=("sum",), act="relu")


@interp
@pytest.mark.parametrize("aggr", [("sum",), ("mean",)])
@pytest.mark.parametrize("reverse", [False, True])
def test_one_tile_and_float64(gen, aggr, reverse):
    """Default tiles (the whole tiny block in one tile), float64 to 1e-12."""
    inputs = block_inputs(gen, reverse, dtype=torch.float64)
    assert_agree(inputs, rtol=1e-12, kind="dense", reverse=reverse, aggr=aggr, act="gelu")


@interp
@pytest.mark.parametrize("reverse", [False, True])
def test_grouped_matches_reference(gen, small_tiles, reverse):
    inputs = block_inputs(gen, reverse, out_n=6, in_n=9, groups=3)
    assert_agree(inputs, kind="grouped", reverse=reverse, aggr=("mean", "sum"), act="relu", groups=3)


@interp
def test_gradcheck(gen):
    reverse = True
    send, recv, edge, weight = block_inputs(gen, reverse, b=1, out_n=3, in_n=2, h=2, k=1, dtype=torch.float64)

    def fn(s, r, e, w):
        return message_pass(s, r, e, w, reverse=reverse, aggr=("sum", "mean"), act="tanh", backend="triton")

    assert torch.autograd.gradcheck(fn, (send, recv, edge, weight))


@interp
@pytest.mark.parametrize("frozen,reverse", [((2,), False), ((0, 3), True), ((1, 2, 3), False), ((1, 2, 3), True)])
def test_partial_requires_grad(gen, small_tiles, frozen, reverse):
    """Raw weights as edge features (no gradient), frozen maps or states: only the wanted gradients
    (the last two cases need only the column kernel, resp. only the row kernel, of the backward)."""
    inputs = block_inputs(gen, reverse)
    for j in frozen:
        inputs[j] = inputs[j].detach()
    assert_agree(inputs, kind="dense", reverse=reverse, aggr=("mean",), act="silu")


@interp
def test_strided_inputs(gen, small_tiles):
    """Node states sliced out of larger tensors (as GNNLayer passes them), a transposed-layout edge
    tensor and an incoming gradient that is a slice of a concatenation (sum + mean)."""
    big_s, big_r = rnd(gen, 2, 11, 6).requires_grad_(), rnd(gen, 2, 9, 6).requires_grad_()
    edge_t = rnd(gen, 2, 7, 5, 3).requires_grad_()  # (B, in, out, K) stored; used as (B, out, in, K)
    weight = rnd(gen, 3, 6).requires_grad_()
    args = (big_s[:, 2:9], big_r[:, 1:6], edge_t.transpose(1, 2), weight)
    assert not args[0].is_contiguous() and not args[2].is_contiguous()
    kw = dict(kind="dense", reverse=False, aggr=("sum", "mean"), act="tanh")
    assert_agree([big_s, big_r, edge_t, weight], args=args, **kw)


@interp
@pytest.mark.parametrize("act", ["relu", "tanh", "silu", "gelu", "identity"])
@pytest.mark.parametrize("reverse", [False, True])
def test_non_finite_inputs_match_reference(gen, small_tiles, act, reverse):
    """Issue 15: NaN and Inf in edges and node states propagate as in the reference, forward and every
    gradient (ReLU keeps a NaN; masked channels of an infinite edge do not reach dL/dx)."""
    from test_backends import non_finite

    inputs = list(non_finite(block_inputs(gen, reverse, b=3, k=2, dtype=torch.float64)))
    kw = dict(kind="dense", reverse=reverse, aggr=("sum", "mean"), act=act)
    ref, ref_g = outputs_and_grads("reference", inputs, **kw)
    out, out_g = outputs_and_grads("triton", inputs, **kw)
    assert ref.isnan().any()
    for a, b in zip((out, *out_g), (ref, *ref_g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True)


@interp
def test_fallbacks_match_reference(gen):
    inputs = block_inputs(gen, False)
    assert_agree(inputs, kind="dense", reverse=False, aggr=("max", "std"), act="relu")
    send, recv, weight = rnd(gen, 2, 4, 6).requires_grad_(), rnd(gen, 2, 8, 6).requires_grad_(), rnd(gen, 1, 6)
    kw = dict(kind="copy", reverse=False, aggr=("sum",), act="relu")
    assert_agree([send, recv, weight], args=(send, recv, None, weight), **kw)


def _graphs(arch: str, n: int = 2):
    import wgraph.zoo

    torch.manual_seed(0)
    if arch == "cnn":
        model, x = wgraph.zoo.small_cnn(channels=4, classes=3), torch.randn(1, 1, 16, 16)
    else:
        model, x = wgraph.zoo.mlp([5, 7, 6, 3]), torch.randn(1, 5)
    sds = []
    for _ in range(n):
        for p in model.parameters():
            torch.nn.init.normal_(p)
        sds.append({k: v.clone() for k, v in model.state_dict().items()})
    return wgraph.to_graph_batch(sds, model, x)


def graph_nfn_agrees(graph, backend, rtol=1e-5, device="cpu", **kw):
    results = {}
    for be in ("reference", backend):
        torch.manual_seed(1)
        model = GraphNFN(graph.layout, backend=be, **kw).to(device)
        out = model(graph.to(device))
        loss = (out * torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape)).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        results[be] = (out.detach(), grads, [n for n, _ in model.named_parameters()])
    (r_out, r_g, names), (t_out, t_g, _) = results["reference"], results[backend]
    assert_close_rel(t_out, r_out, rtol)
    assert [g is None for g in t_g] == [g is None for g in r_g]
    for name, a, b in zip(names, t_g, r_g):
        if b is not None:
            assert_close_rel(a, b, rtol)
    flowing = {n for n, b in zip(names, r_g) if b is not None and b.abs().max() > 0}
    for d in ("fwd", "bwd"):  # gradients reach every message map through the kernels
        for m in ("send", "recv", "edge"):
            assert f"layers.0.{d}.{m}.weight" in flowing, (d, m)


@interp
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_graph_nfn_triton_equals_reference(arch):
    graph = _graphs(arch)
    kinds = {(b.kind, tuple(b.kernel)) for b in graph.layout.blocks}
    assert ("dense", ()) in kinds and (arch != "cnn" or ("dense", (3, 3)) in kinds)
    graph_nfn_agrees(graph, "triton", hidden=4, layers=1, aggr=("sum", "mean"))


# ---------------------------------------------------------------------------------------------------------------------
# GPU (real sizes)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(
    "b,out_n,in_n,k,h",
    [
        (8, 256, 784, 1, 32),  # case a: first layer of 784-256-256-10
        (8, 10, 256, 1, 32),  # case a: last layer
        (64, 16, 16, 9, 64),  # case b: a 3x3 conv block of the Small-CNN-Zoo CNN at width 64
        (512, 32, 2, 1, 64),  # case c: first layer of 2-32-32-1
        (4, 64, 64, 9, 48),  # H not a power of two
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_gpu_matches_reference(gen, b, out_n, in_n, k, h, reverse, act):
    inputs = block_inputs(gen, reverse, b=b, out_n=out_n, in_n=in_n, h=h, k=k, device="cuda")
    assert_agree(inputs, kind="dense", reverse=reverse, aggr=("sum", "mean"), act=act)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("reverse", [False, True])
def test_gpu_grouped_and_raw_weights(gen, reverse):
    """A depthwise-like grouped conv (8 groups) and raw weights as edge features (no edge gradient)."""
    inputs = block_inputs(gen, reverse, b=16, out_n=64, in_n=64, k=9, h=64, groups=8, device="cuda")
    assert_agree(inputs, kind="grouped", reverse=reverse, aggr=("mean",), act="tanh", groups=8)
    inputs[2] = inputs[2].detach()
    assert_agree(inputs, kind="grouped", reverse=reverse, aggr=("sum",), act="silu", groups=8)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_gpu_other_dtypes(gen, dtype):
    """Half types accumulate in float32: compare with the float32 reference of the same (rounded) inputs."""
    inputs = block_inputs(gen, True, b=8, out_n=128, in_n=96, k=9, h=32, dtype=dtype, device="cuda")
    kw = dict(kind="dense", reverse=True, aggr=("sum", "mean"), act="relu")
    out, grads = outputs_and_grads("triton", inputs, **kw)
    wide = [t.detach().double().requires_grad_() for t in inputs]
    ref, ref_g = outputs_and_grads("reference", wide, **kw)
    rtol = 1e-12 if dtype == torch.float64 else 2e-2
    assert out.dtype == dtype
    assert_close_rel(out.double(), ref, rtol)
    for a, b in zip(grads, ref_g):
        assert a.dtype == dtype
        assert_close_rel(a.double(), b, rtol)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_auto_resolves_to_triton_on_cuda():
    assert resolve_backend("auto", "cuda") == "triton"
    assert get_backend("auto", "cuda") is tf.BACKEND and tf.BACKEND.fn is tf.message_pass
    assert not tf.INTERPRETED


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_gpu_graph_nfn_equals_reference(arch):
    graph_nfn_agrees(_graphs(arch, n=4), "triton", device="cuda", hidden=32, layers=2, aggr=("mean",))
