"""wgraph.ot: tree-sliced Wasserstein against POT, its metric properties, network distances, the
sliced-Wasserstein embedding and ``wgraph distance``."""

import argparse
import math

import numpy as np
import ot
import pytest
import torch
from safetensors.torch import save_file

import wgraph
from wgraph.errors import IncompatibleBatchError, SpecError, WgraphError
from wgraph.ot import (
    SlicedWassersteinEmbedding,
    TreeSystem,
    canonicalize,
    layer_distances,
    measured_layers,
    network_distance,
    neuron_measure,
    sample_trees,
    sliced_wasserstein,
    split_masses,
    tree_sliced_wasserstein,
    tree_wasserstein,
)
from wgraph.ot import cli as ot_cli
from wgraph.zoo import digits_cnn, mlp

F64 = torch.float64
KINDS = ("concurrent", "chain")
SPLITS = ("uniform", "distance")


def _measure(n, d, seed, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64) + shift
    a = torch.rand(n, generator=gen, dtype=F64) + 0.1
    return x, a / a.sum()


def _tree_cost(trees: TreeSystem, i: int, s: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    """Path lengths along the lines of tree ``i`` between the atoms ``(line l, coordinate s[l, p])`` and
    ``(line l', coordinate t[l', q])``, atoms ordered line-major: written from the tree's definition
    (line ``l + 1`` starts at coordinate ``attach[l]`` of line ``l``), independent of the closed form."""
    k, c = trees.n_lines, trees.attach[i].tolist()
    n, m = s.shape[1], t.shape[1]
    cost = np.zeros((k * n, k * m))
    for l1 in range(k):
        for l2 in range(k):
            p, q = s[l1][:, None], t[l2][None, :]
            if l1 == l2:
                d = (p - q).abs()
            else:  # up from the deeper line to its root, down the lines between, along the upper line
                (lo, p_lo), (hi, p_hi) = sorted([(l1, p), (l2, q)], key=lambda z: z[0])
                d = (p_lo - c[lo]).abs() + sum(abs(c[j]) for j in range(lo + 1, hi)) + p_hi.abs()
            cost[l1 * n : (l1 + 1) * n, l2 * m : (l2 + 1) * m] = d.numpy()
    return cost


# ----------------------------------------------------------------------------- closed form vs POT
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", SPLITS)
def test_closed_form_is_emd_on_the_tree_metric(kind, split):
    x, a = _measure(9, 3, 0)
    y, b = _measure(6, 3, 1, shift=0.7)
    trees = sample_trees(4, 3, 3, kind=kind, std=0.5, dtype=F64, generator=torch.Generator().manual_seed(2))
    per_tree = tree_wasserstein(x, y, trees, a, b, split=split)
    sx, mx = split_masses(trees, x, a, split)
    sy, my = split_masses(trees, y, b, split)
    assert torch.allclose(mx.sum(dim=(1, 2)), torch.ones(4, dtype=F64)) and bool((mx >= 0).all())
    for i in range(len(trees)):
        cost = _tree_cost(trees, i, sx[i], sy[i])
        exact = ot.emd2(mx[i].reshape(-1).numpy(), my[i].reshape(-1).numpy(), cost)
        assert abs(float(per_tree[i]) - exact) < 1e-10


def test_one_line_is_sliced_w1_of_pot():
    x, a = _measure(30, 4, 3)
    y, b = _measure(20, 4, 4, shift=0.3)
    trees = sample_trees(12, 1, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    theta = trees.directions[:, 0]
    args = (x.numpy(), y.numpy(), a.numpy(), b.numpy())
    pot_w1 = ot.sliced_wasserstein_distance(*args, p=1, projections=theta.T.numpy())
    for split in SPLITS:  # one line takes every point's whole mass, whatever the split
        assert abs(float(tree_sliced_wasserstein(x, y, a, b, trees=trees, split=split)) - pot_w1) < 1e-10
    for p in (1, 2):
        pot = ot.sliced_wasserstein_distance(*args, p=p, projections=theta.T.numpy())
        assert abs(float(sliced_wasserstein(x, y, a, b, directions=theta, p=p)) - pot) < 1e-10


# ----------------------------------------------------------------------------- metric properties
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", SPLITS)
def test_metric_properties_with_fixed_trees(kind, split):
    trees = sample_trees(8, 4, 3, kind=kind, dtype=F64, generator=torch.Generator().manual_seed(0))
    d = lambda p, q: float(tree_sliced_wasserstein(*p[:1], *q[:1], p[1], q[1], trees=trees, split=split))  # noqa: E731
    mus = [_measure(n, 3, s, shift=0.4 * s) for s, n in enumerate((7, 5, 9, 6))]
    x, a = mus[0]
    assert d(mus[0], mus[0]) < 1e-12
    assert abs(d(mus[0], mus[1]) - d(mus[1], mus[0])) < 1e-12
    perm = torch.randperm(len(a), generator=torch.Generator().manual_seed(1))
    assert abs(d((x[perm], a[perm]), mus[1]) - d(mus[0], mus[1])) < 1e-12
    for p in mus:
        for q in mus:
            for r in mus:
                assert d(p, r) <= d(p, q) + d(q, r) + 1e-12
    assert d(mus[0], mus[2]) > 0


def test_gradcheck():
    x, a = _measure(5, 3, 0)
    y, b = _measure(4, 3, 1, shift=0.5)
    for kind in KINDS:
        trees = sample_trees(3, 3, 3, kind=kind, dtype=F64, generator=torch.Generator().manual_seed(3))
        for split in SPLITS:
            f = lambda x, y, a, b: tree_sliced_wasserstein(x, y, a, b, trees=trees, split=split)  # noqa: E731
            inputs = [t.clone().requires_grad_() for t in (x, y, a, b)]
            assert torch.autograd.gradcheck(f, inputs)
    theta = sample_trees(6, 1, 3, dtype=F64).directions[:, 0]
    inputs = [t.clone().requires_grad_() for t in (x, y, a, b)]
    assert torch.autograd.gradcheck(lambda x, y, a, b: sliced_wasserstein(x, y, a, b, directions=theta, p=2), inputs)


def test_db_tsw_invariant_under_rotation_and_translation():
    x, a = _measure(20, 4, 0)
    y, b = _measure(15, 4, 1, shift=1.0)
    gen = torch.Generator().manual_seed(7)
    rot, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=F64))
    shift = torch.randn(4, generator=gen, dtype=F64) * 3
    for kind in KINDS:
        trees = sample_trees(16, 4, 4, kind=kind, dtype=F64, generator=torch.Generator().manual_seed(0))
        moved = trees.transform(rot, shift)
        before = tree_sliced_wasserstein(x, y, a, b, trees=trees)
        after = tree_sliced_wasserstein(x @ rot.T + shift, y @ rot.T + shift, a, b, trees=moved)
        assert abs(float(before - after)) < 1e-10
    # sampled trees follow the data's mean: a translation alone changes nothing, draw for draw
    d = lambda s: tree_sliced_wasserstein(x + s, y + s, a, b, generator=torch.Generator().manual_seed(1))  # noqa: E731
    assert abs(float(d(0) - d(shift))) < 1e-10


def test_monte_carlo_spread_shrinks_like_one_over_sqrt_trees():
    x, _ = _measure(40, 5, 0)
    y, _ = _measure(40, 5, 1, shift=0.5)

    def spread(n_trees):
        draws = [tree_sliced_wasserstein(x, y, n_trees=n_trees, generator=torch.Generator().manual_seed(s))
                 for s in range(40)]
        return float(torch.stack(draws).std())

    ratio = spread(4) / spread(64)  # sqrt(64 / 4) = 4
    assert 2.5 < ratio < 6.5


# ----------------------------------------------------------------------------- trees
def test_tree_systems():
    gen = torch.Generator().manual_seed(0)
    chain = sample_trees(5, 4, 3, kind="chain", offset=2.0, dtype=F64, generator=gen)
    for l in range(3):  # line l + 1 starts at coordinate attach[l] of line l
        start = chain.origins[:, l] + chain.attach[:, l, None] * chain.directions[:, l]
        assert torch.allclose(start, chain.origins[:, l + 1])
    assert bool((chain.attach[:, -1] == 0).all()) and bool((chain.attach[:, :-1].abs() <= 2).all())
    conc = sample_trees(5, 4, 3, center=torch.tensor([10.0, 0, 0], dtype=F64), dtype=F64, generator=gen)
    assert torch.allclose(conc.origins, conc.origins[:, :1].expand_as(conc.origins))
    assert bool((conc.attach == 0).all()) and abs(float(conc.origins[:, 0, 0].mean()) - 10) < 0.5
    orth = sample_trees(5, 3, 3, orthogonal=True, dtype=F64, generator=gen)
    gram = orth.directions @ orth.directions.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(3, dtype=F64).expand(5, 3, 3), atol=1e-12)
    assert torch.allclose(chain.directions.norm(dim=-1), torch.ones(5, 4, dtype=F64))
    assert len(chain[1:3]) == 2 and len(chain[-1]) == 1
    with pytest.raises(WgraphError, match="do not fit"):
        sample_trees(5, 4, 3, orthogonal=True)
    with pytest.raises(WgraphError, match="tree kind"):
        sample_trees(5, 4, 3, kind="star")
    with pytest.raises(WgraphError, match="expected"):
        TreeSystem(chain.origins, chain.directions[:, :2], chain.attach)
    with pytest.raises(WgraphError, match="dimension"):
        tree_sliced_wasserstein(torch.randn(4, 2), torch.randn(4, 2), trees=chain.to(torch.float32))
    with pytest.raises(WgraphError, match="split"):
        tree_sliced_wasserstein(torch.randn(4, 3), torch.randn(4, 3), split="nearest")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, a = _measure(300, 8, 0)
    y, b = _measure(200, 8, 1, shift=0.2)
    trees = sample_trees(32, 4, 8, kind="chain", dtype=F64, generator=torch.Generator().manual_seed(0))
    cpu = tree_sliced_wasserstein(x, y, a, b, trees=trees)
    gpu = tree_sliced_wasserstein(x.cuda(), y.cuda(), a.cuda(), b.cuda(), trees=trees.to("cuda"))
    assert abs(float(cpu) - float(gpu)) < 1e-10
    sw = sliced_wasserstein(x, y, a, b, directions=trees.directions[:, 0])
    sw_gpu = sliced_wasserstein(x.cuda(), y.cuda(), a.cuda(), b.cuda(), directions=trees.directions[:, 0].cuda())
    assert abs(float(sw) - float(sw_gpu)) < 1e-10


# ----------------------------------------------------------------------------- networks
def _trained_mlp(seed: int, steps: int = 60) -> torch.nn.Module:
    from wgraph.zoo.data import digits_split

    x, y, _, _ = digits_split(0)
    torch.manual_seed(seed)
    model = mlp((64, 16, 12, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x.flatten(1)), y).backward()
        opt.step()
    return model.double()


@pytest.fixture(scope="module")
def two_mlps():
    example = torch.randn(1, 64, dtype=F64)
    return [wgraph.to_graph(_trained_mlp(s), example) for s in (0, 1)]


def _networks():
    torch.manual_seed(0)
    yield mlp((64, 16, 12, 10)).double(), torch.randn(1, 64, dtype=F64)
    yield digits_cnn(6).double(), torch.randn(1, 1, 8, 8, dtype=F64)
    yield mlp((6, 5, 4, 3), torch.nn.Tanh).double(), torch.randn(1, 6, dtype=F64)


@pytest.mark.parametrize("net", list(range(3)), ids=["mlp", "cnn", "tanh-mlp"])
def test_network_distance_is_zero_on_symmetric_copies(net, two_mlps):
    model, example = list(_networks())[net]
    g = wgraph.to_graph(model, example)
    copy = g.permute(wgraph.random_symmetry(g, seed=3, scale=True))
    for method in ("tsw", "sw", "exact"):
        for masses in ("uniform", "norm"):
            assert float(network_distance(g, copy, method, masses=masses)) < 1e-10
    a, b = two_mlps
    for method in ("tsw", "sw", "exact"):
        assert float(network_distance(a, b, method)) > 1e-3


def test_canonical_form_keeps_the_function_and_fixes_scalings():
    model, example = next(_networks())
    g = wgraph.to_graph(model, example)
    c = canonicalize(g)
    x = torch.randn(5, 64, dtype=F64)
    out = model(x)
    wgraph.load_into(model, c)
    assert torch.allclose(model(x), out, atol=1e-12)
    for li in measured_layers(g.layout):  # incoming weights and bias of norm 1
        l = g.layout.layers[li]
        rows = [c.block_values(i)[0].reshape(l.size, -1) for i, blk in enumerate(g.layout.blocks) if blk.dst == li]
        norms = torch.cat(rows + [c.nodes[0, l.start : l.stop]], dim=1).norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms))
    # a symmetric copy has the same measures, with the neurons reordered
    copy = g.permute(wgraph.random_symmetry(g, seed=1, scale=True))
    for li in measured_layers(g.layout):
        (p, m), (q, n) = neuron_measure(g, li), neuron_measure(copy, li)
        order_p, order_q = p[:, 0].argsort(), q[:, 0].argsort()
        assert torch.allclose(p[order_p], q[order_q], atol=1e-12) and torch.allclose(m[order_p], n[order_q])
    # raw coordinates of a deeper layer are not invariant: its sources moved
    deep = measured_layers(g.layout)[1]
    p, q = neuron_measure(g, deep, coords="raw")[0], neuron_measure(copy, deep, coords="raw")[0]
    assert not torch.allclose(p[p[:, 0].argsort()], q[q[:, 0].argsort()])


def test_weighted_exact_distance_is_pot_emd(two_mlps):
    a, b = two_mlps
    layers = layer_distances(a, b, "exact", masses="norm")
    for li in measured_layers(a.layout):
        (x, wa), (y, wb) = neuron_measure(a, li), neuron_measure(b, li)
        cost = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").numpy()
        want = ot.emd2((wa / wa.sum()).numpy(), (wb / wb.sum()).numpy(), cost)
        assert abs(float(layers[a.layout.layers[li].name]) - want) < 1e-8


def test_network_distance_errors(two_mlps):
    a, _ = two_mlps
    other = wgraph.to_graph(mlp((64, 16, 10)).double(), torch.randn(1, 64, dtype=F64))
    with pytest.raises(IncompatibleBatchError, match="layouts differ"):
        network_distance(a, other)
    with pytest.raises(WgraphError, match="method"):
        network_distance(a, a, "gromov")
    with pytest.raises(WgraphError, match="not a measured layer"):
        neuron_measure(a, 0)
    assert measured_layers(a.layout) == [1, 2]


# ----------------------------------------------------------------------------- set embedding
def test_sliced_wasserstein_embedding():
    emb = SlicedWassersteinEmbedding(5, n_slices=12, n_references=8).double().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 5, generator=gen, dtype=F64)
    out = emb(x)
    assert out.shape == (3, 96) == (3, emb.out_features)
    perm = torch.randperm(8, generator=gen)
    assert torch.allclose(emb(x[:, perm]), out, atol=1e-14)
    # uniform sets of n_references points: the embedding distance is sliced W2 for the same slices
    theta = emb.slices / emb.slices.norm(dim=-1, keepdim=True)
    sw2 = sliced_wasserstein(x[0], x[1], directions=theta, p=2)
    assert abs(float((out[0] - out[1]).norm()) - float(sw2)) < 1e-12
    # zero weights drop padded elements
    padded = torch.cat([x, 100 + torch.randn(3, 4, 5, dtype=F64)], dim=1)
    mask = torch.cat([torch.ones(3, 8), torch.zeros(3, 4)], dim=1).to(F64)
    assert torch.allclose(emb(padded, mask), out, atol=1e-14)
    # learned references and slices receive gradients; an output head maps to out_dim
    head = SlicedWassersteinEmbedding(5, n_slices=4, n_references=3, out_dim=7, learn_slices=True)
    y = head(torch.randn(2, 6, 5))
    assert y.shape == (2, 7) and head.out_features == 7
    y.sum().backward()
    assert head.reference.grad.abs().sum() > 0 and head.slices.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- command line
def _parse(argv):
    parser = argparse.ArgumentParser(prog="wgraph")
    ot_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_distance_command(tmp_path, capsys, two_mlps):
    a, b = two_mlps
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    args = _parse(["distance", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--per-layer"])
    assert args.fn(args) == 0
    lines = capsys.readouterr().out.splitlines()
    values = {line.split()[0]: float(line.split()[1]) for line in lines if not line.startswith(" ")}
    assert values.keys() == {"tsw", "sw", "exact"}
    assert math.isclose(values["exact"], float(network_distance(a, b, "exact")), rel_tol=1e-5)
    assert sum(line.startswith("    ") for line in lines) == 6  # two layers per method
    # checkpoints of a model spec
    ckpts = [str(tmp_path / "a.ckpt.safetensors"), str(tmp_path / "b.ckpt.safetensors")]
    for path, g in zip(ckpts, (a, b)):
        save_file({k: v.float().contiguous() for k, v in g.to_state_dict().items()}, path)
    spec = ["--spec", "test_ot:small_mlp"]  # this module, importable under pytest
    args = _parse(["distance", *ckpts, *spec, "--method", "tsw"])
    with pytest.raises(SpecError, match="input-shape"):
        args.fn(args)
    args = _parse(["distance", *ckpts, *spec, "--input-shape", "1,64", "--method", "sw", "--method", "exact"])
    assert args.fn(args) == 0
    values = {line.split()[0]: float(line.split()[1]) for line in capsys.readouterr().out.splitlines()}
    assert values.keys() == {"sw", "exact"}
    want = network_distance(a.to(torch.float32), b.to(torch.float32), "exact")
    assert math.isclose(values["exact"], float(want), rel_tol=1e-5)


def small_mlp() -> torch.nn.Module:
    """The architecture of :func:`two_mlps`, for ``--spec``."""
    return mlp((64, 16, 12, 10))
