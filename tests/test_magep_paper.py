"""MAGEP as published: MAGEPPaper / MAGEPInvariant against the official layers' formulas in float64, and
their equivariance / invariance under hidden permutations and scalings.

The official code (github Fsoft-AIC/MAGEP-NFN, CC BY-NC-SA 4.0) is not copied: `reference_linear` and
`reference_invariant` below are the formulas of ``nfn/layers/equiv_layers.py: HNPSMixerLinear.mix_layers /
forward`` and ``nfn/layers/inv_layers.py: HNPSMixerInv.mix_layers / forward``, written out term by term
with the official parameter names (``layer_{i}_{W|b}_{input}``, ``Psi_s_0_L_t`` ...), computed the way the
official code does (every product ``W_{(s,t)}``, the ``n_s x n_s`` matrices whose traces are the trace
invariants). With ``MAGEP_NFN_SRC`` set to a checkout of that repository, `test_matches_the_official_code`
runs the official layers themselves in a subprocess (the package is named ``nfn`` like Zhou et al.'s).
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import wgraph
from wgraph.nn.configs import MAGEPConfig, PSConfigError
from wgraph.nn.magep import KernelSum, MAGEPInvariant, MAGEPPaper, kernel_free
from wgraph.nn.monomial import MonomialLinear, activation_for
from wgraph.nn.np_layers import TupleOp
from wgraph.nn.presets import from_preset
from wgraph.nn.weight_space import WeightSpace, WeightSpaceError, random_graph
from wgraph.testing import assert_equivariant, assert_invariant, equivariance_error
from wgraph.zoo import mlp, small_cnn

CHAINS = [(3, 2), (3, 5, 2), (4, 5, 6, 2), (4, 5, 6, 7, 3)]  # L = 1 .. 4


# ----------------------------------------------------------------------------- the official names
def linear_names(L: int) -> dict[str, list[str]]:
    """MAGEPPaper parameter -> the official HNPSMixerLinear terms it concatenates (channel axis, in order)."""
    names = {}
    for i in range(L):
        n = f"layer_{i}_"
        names[f"w_mix.{i}"] = [n + "W_W", n + "W_WW", n + "W_bW"]
        if i == 0:
            names |= {"w_from_b": [n + "W_b"], "b_mix.0": [n + "b_W", n + "b_WW", n + "b_bW"], "b_lin.0": [n + "b_b"]}
        elif i < L - 1:
            names |= {f"b_mix.{i}": [n + "b_W", n + "b_WW", n + "b_bW"], f"b_lin.{i}": [n + "b_Wb", n + "b_b"]}
        else:
            names |= {
                f"b_mix.{i}": [n + "b_W", n + "b_WW_L0L0", n + "b_bW_LL0"],
                f"b_lin.{i}": [n + "b_Wb", n + "b_b_L"],
                "b_trace": [n + "b_WW_0L", n + "b_bW_L"],
                "b_const": [n + "b"],
            }
    return {k: [f"{x}.weight" for x in v] for k, v in names.items()}


def linear_psi_names(L: int) -> dict[tuple[str, int], str]:
    """(MAGEPPaper buffer, row) -> the official fixed Ψ / ψ of that use."""
    out = {}
    for s in range(1, L + 1):
        out |= {("Psi_w", s - 1): f"Psi_s_0_L_t.{s}_{s - 1}", ("psi_w", s - 1): f"Psi_s_L_t.{s}_{s - 1}"}
        if s >= 2:
            out |= {("Psi_b", s - 2): f"Psi_s_0_L_t.{s}_0", ("psi_b", s - 2): f"Psi_s_L_t.{s}_0"}
        if s < L:
            out |= {("Psi_tr", s - 1): f"Psi_s_0_L_s.{s}_{s}", ("psi_tr", s - 1): f"Psi_s_L_s.{s}_{s}"}
    return out


INVARIANT_NAMES = {
    "mix": ["layer_W.weight", "layer_WW.weight", "layer_bW.weight"],
    "lin": ["layer_Wb.weight", "layer_b.weight"],
    "trace": ["layer_WW_pp.weight", "layer_bW_pp.weight"],
    "const": ["tau_weight"],
    "Psi": ["Psi_s_0_L_t"],
    "psi": ["Psi_s_L_t"],
}


def to_official(layer) -> dict[str, torch.Tensor]:
    """The official state of ``layer`` (MAGEPPaper or MAGEPInvariant): its tensors split into the official terms."""
    L, d = layer.spec.num_layers, layer.c_in
    state = layer.state_dict()
    if isinstance(layer, MAGEPPaper):
        names, psi = linear_names(L), linear_psi_names(L)
        out = {off: state[mine][row] for (mine, row), off in psi.items()}
    else:
        names = INVARIANT_NAMES
        out = {f"{p}.{s}_{s}": state[mine][s - 1] for s in range(1, L) for p, mine in
               (("Psi_s_0_L_s", "Psi_tr"), ("Psi_s_L_s", "psi_tr"))}
    for mine, offs in names.items():
        parts = state[mine].split(d, 1) if len(offs) > 1 else [state[mine]]
        out |= dict(zip(offs, parts, strict=True))
    return out


def load_official(layer, official: dict[str, torch.Tensor]) -> None:
    """Fill ``layer`` from an official state dict (the inverse of :func:`to_official`)."""
    state = layer.state_dict()
    L = layer.spec.num_layers
    if isinstance(layer, MAGEPPaper):
        names = linear_names(L)
        for (mine, row), off in linear_psi_names(L).items():
            state[mine][row] = official[off]
    else:
        names = INVARIANT_NAMES
        for s in range(1, L):
            state["Psi_tr"][s - 1] = official[f"Psi_s_0_L_s.{s}_{s}"]
            state["psi_tr"][s - 1] = official[f"Psi_s_L_s.{s}_{s}"]
    for mine, offs in names.items():
        state[mine] = torch.cat([official[o] for o in offs], 1) if len(offs) > 1 else official[offs[0]]
    layer.load_state_dict(state)


# ----------------------------------------------------------------------------- the formulas, transcribed
def _products(ws, bs):
    """The official mix_layers products: W[s], b[s] 1-based; W_st[s, t] = W[s] ... W[t+1]; Wb_st[s, t] = W_st b[t]."""
    L = len(ws)
    W, b = dict(enumerate(ws, 1)), dict(enumerate(bs, 1))
    W_st, Wb_st = {}, {}
    for s in range(1, L + 1):
        for t in range(s):
            W_st[s, t] = W[s] if t == s - 1 else W[s] @ W_st[s - 1, t]
            if t > 0:
                Wb_st[s, t] = (W_st[s, t] @ b[t][..., None])[..., 0]
    return L, W, b, W_st, Wb_st


def _traces(p, L, b, W_st, Psi_ss, psi_ss):
    """WW_pp / bW_pp: traces of W_st[s,0] Ψ_s W_st[L,s] and of b[s] ψ_s W_st[L,s] (n_s x n_s), s = 1..L-1."""
    WW = [torch.einsum("bdnn->bd", W_st[s, 0] @ p[f"{Psi_ss}.{s}_{s}"] @ W_st[L, s]) for s in range(1, L)]
    bW = [torch.einsum("bdnn->bd", b[s][..., None] @ p[f"{psi_ss}.{s}_{s}"][None] @ W_st[L, s]) for s in range(1, L)]
    B, d = b[1].shape[:2]
    stack = lambda xs: torch.stack(xs, -1) if xs else b[1].new_zeros(B, d, 0)  # noqa: E731
    return stack(WW), stack(bW)


def reference_linear(p: dict, ws: list, bs: list):
    """HNPSMixerLinear.forward (equiv_layers.py), term by term; ``p`` holds the official tensors."""
    L, W, b, W_st, Wb_st = _products(ws, bs)
    bW = lambda s, t: b[s][..., None] @ p[f"Psi_s_L_t.{s}_{t}"][None] @ W_st[L, t]  # noqa: E731
    WW = lambda s, t: W_st[s, 0] @ p[f"Psi_s_0_L_t.{s}_{t}"] @ W_st[L, t]  # noqa: E731
    WW_pp, bW_pp = _traces(p, L, b, W_st, "Psi_s_0_L_s", "Psi_s_L_s")
    w = lambda i, name: p[f"layer_{i}_{name}.weight"]  # noqa: E731
    out_w, out_b = [], []
    for i in range(L):
        s = i + 1
        if i == 0:
            X = [W_st[1, 0], WW(1, 0), bW(1, 0)]
            out_w.append(
                sum(torch.einsum("edqk,bdjq->bejk", w(0, n), x) for n, x in zip(("W_W", "W_WW", "W_bW"), X))
                + torch.einsum("edk,bdj->bejk", w(0, "W_b"), b[1])
            )
            out_b.append(
                sum(torch.einsum("edq,bdjq->bej", w(0, n), x) for n, x in zip(("b_W", "b_WW", "b_bW"), X))
                + torch.einsum("ed,bdj->bej", w(0, "b_b"), b[1])
            )
        elif i == L - 1:
            X = [W_st[s, i], WW(s, i), bW(s, i)]
            out_w.append(sum(torch.einsum("edpj,bdpk->bejk", w(i, n), x) for n, x in zip(("W_W", "W_WW", "W_bW"), X)))
            Y = zip(("b_WW_L0L0", "b_W", "b_bW_LL0"), (WW(s, 0), W_st[s, 0], bW(s, 0)))
            out_b.append(
                sum(torch.einsum("edpqj,bdpq->bej", w(i, n), y) for n, y in Y)
                + torch.einsum("edpj,bdp->bej", w(i, "b_b_L"), b[s])
                + torch.einsum("ej,b->bej", w(i, "b"), b[s].new_ones(1))
                + sum(torch.einsum("edpj,bdp->bej", w(i, "b_Wb"), Wb_st[s, t]) for t in range(1, L))
                + torch.einsum("edlj,bdl->bej", w(i, "b_WW_0L"), WW_pp)
                + torch.einsum("edlj,bdl->bej", w(i, "b_bW_L"), bW_pp)
            )
        else:
            X = [W_st[s, i], WW(s, i), bW(s, i)]
            out_w.append(sum(torch.einsum("ed,bdjk->bejk", w(i, n), x) for n, x in zip(("W_W", "W_WW", "W_bW"), X)))
            Y = zip(("b_W", "b_WW", "b_bW"), (W_st[s, 0], WW(s, 0), bW(s, 0)))
            out_b.append(
                sum(torch.einsum("edq,bdjq->bej", w(i, n), y) for n, y in Y)
                + sum(torch.einsum("ed,bdj->bej", w(i, "b_Wb"), Wb_st[s, t]) for t in range(1, s))
                + torch.einsum("ed,bdj->bej", w(i, "b_b"), b[s])
            )
    return out_w, out_b


def reference_invariant(p: dict, ws: list, bs: list) -> torch.Tensor:
    """HNPSMixerInv.forward (inv_layers.py), term by term."""
    L, W, b, W_st, Wb_st = _products(ws, bs)
    bW = b[L][..., None] @ p["Psi_s_L_t"][None] @ W_st[L, 0]
    WW = W_st[L, 0] @ p["Psi_s_0_L_t"] @ W_st[L, 0]
    WW_pp, bW_pp = _traces(p, L, b, W_st, "Psi_s_0_L_s", "Psi_s_L_s")
    X = (("WW", WW), ("W", W_st[L, 0]), ("bW", bW))
    y = sum(torch.einsum("edpq,bdpq->be", p[f"layer_{n}.weight"], x) for n, x in X)
    y = y + sum(torch.einsum("edp,bdp->be", p["layer_Wb.weight"], Wb_st[L, t]) for t in range(1, L))
    y = y + torch.einsum("edl,bdl->be", p["layer_WW_pp.weight"], WW_pp)
    y = y + torch.einsum("edl,bdl->be", p["layer_bW_pp.weight"], bW_pp)
    y = y + torch.einsum("edp,bdp->be", p["layer_b.weight"], b[L])
    return y + p["tau_weight"][None]


# ----------------------------------------------------------------------------- parity
def _random_input(sizes, d, seed=0, B=2):
    g = torch.Generator().manual_seed(seed)
    ws = [0.7 * torch.randn(B, d, m, n, generator=g, dtype=torch.float64) for n, m in zip(sizes, sizes[1:])]
    bs = [0.7 * torch.randn(B, d, m, generator=g, dtype=torch.float64) for m in sizes[1:]]
    return ws, bs


def _randomize(layer):
    """Every parameter and Ψ at unit scale, so that no term hides under another's magnitude."""
    torch.manual_seed(1)
    with torch.no_grad():
        for t in [*layer.parameters(), *layer.buffers()]:
            t.normal_()
    return layer


@pytest.mark.parametrize("sizes", CHAINS, ids=lambda s: "-".join(map(str, s)))
def test_layers_match_the_published_formulas(sizes):
    ws, bs = _random_input(sizes, 3)
    x = WeightSpace(ws, bs)
    layer = _randomize(MAGEPPaper(x.spec, 3, 2).double())
    want_w, want_b = reference_linear(to_official(layer), ws, bs)
    out = layer(x)
    for got, want in zip([*out.weights, *out.biases], [*want_w, *want_b], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    inv = _randomize(MAGEPInvariant(x.spec, 3, 2).double())
    torch.testing.assert_close(inv(x), reference_invariant(to_official(inv), ws, bs), rtol=1e-6, atol=1e-6)


def test_every_published_term_is_used():
    """Zeroing any one official term changes the output (the transcription and the layer miss none)."""
    ws, bs = _random_input((4, 5, 6, 2), 2)
    x = WeightSpace(ws, bs)
    for layer in (_randomize(MAGEPPaper(x.spec, 2, 2).double()), _randomize(MAGEPInvariant(x.spec, 2, 2).double())):
        full = to_official(layer)
        base = layer(x)
        for name in full:
            load_official(layer, full | {name: torch.zeros_like(full[name])})
            out = layer(x)
            diff = _max_diff(out, base)
            assert diff > 1e-6, name
        load_official(layer, full)


def _max_diff(a, b) -> float:
    if isinstance(a, WeightSpace):
        return max((u - v).abs().max().item() for u, v in zip([*a.weights, *a.biases], [*b.weights, *b.biases]))
    return (a - b).abs().max().item()


OFFICIAL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_default_dtype(torch.float64)  # the official layers build Psi and the traces in the default dtype
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
    from nfn.layers import HNPSMixerInv, HNPSMixerLinear
    data = torch.load(sys.argv[1], weights_only=True)
    L = len([k for k in data if k.startswith("w")])
    f = WeightSpaceFeatures([data[f"w{i}"] for i in range(L)], [data[f"b{i}"] for i in range(L)])
    torch.manual_seed(0)
    lin, inv = HNPSMixerLinear(network_spec_from_wsfeat(f), 3, 2), HNPSMixerInv(network_spec_from_wsfeat(f), 3, 2)
    for p in [*lin.parameters(), *inv.parameters()]:
        torch.nn.init.normal_(p)
    o = lin(f)
    out = {f"lin.{k}": v for k, v in lin.state_dict().items()} | {f"inv.{k}": v for k, v in inv.state_dict().items()}
    out |= {f"out.w{i}": w for i, w in enumerate(o.weights)} | {f"out.b{i}": b for i, b in enumerate(o.biases)}
    torch.save(out | {"out.inv": inv(f)}, sys.argv[2])
    """
)


@pytest.mark.skipif(not os.environ.get("MAGEP_NFN_SRC"), reason="MAGEP_NFN_SRC (a MAGEP-NFN checkout) not set")
@pytest.mark.parametrize("sizes", CHAINS, ids=lambda s: "-".join(map(str, s)))
def test_matches_the_official_code(sizes, tmp_path):
    ws, bs = _random_input(sizes, 3)
    torch.save({f"w{i}": w for i, w in enumerate(ws)} | {f"b{i}": b for i, b in enumerate(bs)}, tmp_path / "in.pt")
    env = dict(os.environ, PYTHONPATH=os.environ["MAGEP_NFN_SRC"], OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", OFFICIAL_SCRIPT, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")]
    subprocess.run(cmd, env=env, cwd=tmp_path, check=True, timeout=120)
    ref = torch.load(tmp_path / "out.pt", weights_only=True)
    x = WeightSpace(ws, bs)
    layer, inv = MAGEPPaper(x.spec, 3, 2).double(), MAGEPInvariant(x.spec, 3, 2).double()
    load_official(layer, {k[4:]: v for k, v in ref.items() if k.startswith("lin.")})
    load_official(inv, {k[4:]: v for k, v in ref.items() if k.startswith("inv.")})
    out = layer(x)
    L = len(ws)
    want = [ref[f"out.w{i}"] for i in range(L)] + [ref[f"out.b{i}"] for i in range(L)]
    for got, w in zip([*out.weights, *out.biases], want, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(inv(x), ref["out.inv"], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- symmetries
MLPS = {
    "relu_mlp": lambda: wgraph.to_graph(mlp((4, 6, 5, 3)), torch.randn(1, 4)).layout,
    "tanh_mlp": lambda: wgraph.to_graph(mlp((3, 5, 6, 2), nn.Tanh), torch.randn(1, 3)).layout,
    "relu_2layer": lambda: wgraph.to_graph(mlp((3, 7, 2)), torch.randn(1, 3)).layout,
}


def _scaled(graph):
    sym = wgraph.random_symmetry(graph, seed=0, scale=True)
    return sym.scales and not all(bool((s.abs() == 1).all()) for s in sym.scales.values())


@pytest.mark.parametrize("arch", list(MLPS))
def test_equivariant_and_invariant_under_permutations_and_scalings(arch):
    torch.manual_seed(0)
    g = random_graph(MLPS[arch](), 2, seed=3, dtype=torch.float64, scale=0.5)
    lay = g.layout
    act = TupleOp(activation_for(lay))
    first, second = MAGEPPaper(lay, 1, 3).double(), MAGEPPaper(lay, 3, 2).double()
    inv = MAGEPInvariant(lay, 2, 4).double()
    stack = lambda h: second(act(first(h)))  # noqa: E731
    assert_equivariant(lambda h: stack(h).to_graphs(h.layout), g, scale=True)
    assert_equivariant(lambda h: stack(h).to_graphs(h.layout), g)
    assert_invariant(lambda h: inv(act(stack(h))), g, scale=True)
    if arch != "tanh_mlp":  # ReLU networks: the draws really scale (tanh: sign flips only)
        assert _scaled(g)


def test_a_wrong_term_breaks_the_scale_check():
    """The scaled check is not vacuous: adding a term that permutes like W_0 but scales wrongly (b_0^2,
    a factor s^2 where W_0 has s) passes the permutation check and fails the scaled one."""
    g = random_graph(MLPS["relu_mlp"](), 2, seed=3, dtype=torch.float64, scale=0.5)
    layer = MAGEPPaper(g.layout, 1, 2).double()

    def broken(h):
        out = layer(h)
        x = WeightSpace.from_graph(h)
        w0 = out.weights[0] + (x.biases[0] ** 2)[..., None]  # degree 2 in b_0: scales as s^2, not s
        return WeightSpace([w0, *out.weights[1:]], out.biases, out.spec).to_graphs(h.layout)

    assert equivariance_error(broken, g) < 1e-10
    assert equivariance_error(broken, g, scale=True) > 1e-3


@pytest.mark.parametrize("arch", ["tanh_mlp", "relu_cnn"])
def test_paper_preset_is_invariant(arch):
    make = {
        "tanh_mlp": MLPS["tanh_mlp"],
        "relu_cnn": lambda: wgraph.to_graph(small_cnn(2, 4, 3), torch.randn(1, 2, 28, 28)).layout,
    }[arch]
    torch.manual_seed(0)
    g = random_graph(make(), 3, seed=5, dtype=torch.float64, scale=0.5)
    model = from_preset("magep-paper", g, hidden=3, layers=3, out_dim=2, head_hidden=8).double()
    assert isinstance(model.layers[0][0], MonomialLinear) and model.layers[0][0].io_mixing
    assert [type(m) for m in model.layers[1:]] == [MAGEPPaper, MAGEPPaper]
    assert isinstance(model.pool, MAGEPInvariant)
    assert len([m for m in model.head if isinstance(m, nn.Linear)]) == 3  # the official MlpHead: two hidden layers
    assert model(g).shape == (3, 2)
    assert_invariant(model, g, scale=True)
    assert_invariant(model, g)


# ----------------------------------------------------------------------------- shapes, counts, errors
def test_parameter_count_and_fixed_psi():
    n0, nL, C, E = 4, 3, 2, 5
    sizes = (n0, 6, 5, 7, nL)
    layer = MAGEPPaper(WeightSpace(*_random_input(sizes, 1)).spec, C, E)
    L = len(sizes) - 1
    per = 3 * n0**2 + 4 * n0 + 1 + (L - 2) * (3 * n0 + 5) + 5 * nL**2 + 3 * n0 * nL**2 + 2 * (L - 1) * nL
    assert sum(p.numel() for p in layer.parameters()) == C * E * per + E * nL  # the docstring's formula
    assert all(not b.requires_grad for b in layer.buffers())  # the layer's Ψ are fixed, as in the official code
    assert {n for n, _ in layer.named_buffers()} == {"Psi_w", "psi_w", "Psi_b", "psi_b", "Psi_tr", "psi_tr"}
    inv = MAGEPInvariant(layer.spec, C, E)
    assert {"Psi", "psi", "Psi_tr", "psi_tr"} <= {n for n, _ in inv.named_parameters()}  # learned in the invariant


def test_kernels_are_summed_first():
    lay = wgraph.to_graph(small_cnn(2, 4, 3), torch.randn(1, 2, 28, 28)).layout
    g = random_graph(lay, 2, seed=0)
    layer = MAGEPPaper(lay, 1, 2)
    assert layer.spec == kernel_free(lay) and layer.spec.sizes == (2, 4, 4, 4, 3)
    with pytest.raises(WeightSpaceError, match="KernelSum"):
        layer(g)
    summed = KernelSum()(g)
    torch.testing.assert_close(summed.weights[0], WeightSpace.from_graph(g).weights[0].sum((-2, -1)))
    assert layer(summed).weights[0].shape == (2, 2, 4, 2)


def test_variant_is_checked():
    assert MAGEPConfig().variant == "wgraph"
    with pytest.raises(PSConfigError, match="variant"):
        MAGEPConfig(variant="published")
