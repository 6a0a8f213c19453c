"""Importers (wgraph.zoo.importers): each format written here in its real layout, imported exactly
(weights bit for bit, the same function as the source network in its own convention, labels), the
broken inputs reported by file and index, strict mode, resuming, no unpickling, and the CLI."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wgraph.zoo import import_zoo, load_zoo
from wgraph.zoo.importers import REPORT, ImportFailed, register_import
from wgraph.zoo.importers import common as import_common


# ------------------------------------------------------------------ Small CNN Zoo, built as TensorFlow lays it out
def tf_variables(rng, channels=(1, 4, 4, 4), classes=10, k=3) -> list[tuple[str, np.ndarray]]:
    """One TensorFlow CNN's variables in order: HWIO kernels, biases, a dense (in, out) kernel."""
    out = []
    for i, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
        name = "sequential/conv2d" + (f"_{i}" if i else "")
        out += [(f"{name}/kernel:0", rng.normal(0, 0.5, (k, k, a, b))), (f"{name}/bias:0", rng.normal(0, 0.1, b))]
    out += [("sequential/dense/kernel:0", rng.normal(0, 0.5, (channels[-1], classes))),
            ("sequential/dense/bias:0", rng.normal(0, 0.1, classes))]
    return [(n, v.astype(np.float32)) for n, v in out]


def tf_forward(variables, x_nhwc, stride, padding, activation):
    """The TensorFlow network in numpy: conv2d NHWC with HWIO kernels and TF's padding, activation,
    global average pooling, dense ``x @ K + b``."""
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[activation]
    h = x_nhwc.astype(np.float64)
    pairs = list(zip(variables[::2], variables[1::2]))
    for (_, K), (_, b) in pairs[:-1]:
        k, n = K.shape[0], h.shape[1]
        if padding == "same":
            out = -(-n // stride)
            total = max((out - 1) * stride + k - n, 0)
            h = np.pad(h, ((0, 0), (total // 2, total - total // 2), (total // 2, total - total // 2), (0, 0)))
        else:
            out = (n - k) // stride + 1
        patches = np.stack([h[:, di : di + stride * out : stride, dj : dj + stride * out : stride, :]
                            for di in range(k) for dj in range(k)], axis=3)  # (B, out, out, k*k, C)
        h = act(np.einsum("bijpc,pco->bijo", patches, K.reshape(k * k, *K.shape[2:])) + b)
    (_, K), (_, b) = pairs[-1]
    return h.mean((1, 2)) @ K + b


def write_small_cnn_zoo(root: Path, nets, metrics: list[dict], truncate_bytes: int = 0) -> None:
    """weights.npy (one flattened network per row), layout.csv, metrics.csv.gz."""
    root.mkdir(parents=True, exist_ok=True)
    rows = np.stack([np.concatenate([v.reshape(-1) for _, v in net]) for net in nets])
    np.save(root / "weights.npy", rows)
    if truncate_bytes:
        data = (root / "weights.npy").read_bytes()
        (root / "weights.npy").write_bytes(data[:-truncate_bytes])
    with open(root / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        start = 0
        for name, v in nets[0]:
            w.writerow([name, start, start + v.size, str(tuple(v.shape))])
            start += v.size
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(metrics[0]))
        w.writeheader()
        w.writerows(metrics)


def metrics_rows(n, activations=("relu", "tanh"), dataset="mnist"):
    return [{"config.activation": activations[i % len(activations)], "config.dataset": dataset,
             "config.learning_rate": 10.0 ** -(1 + i % 3), "modeldir": f"run{i // 3}", "step": [0, 20, 86][i % 3],
             "test_accuracy": 0.1 + 0.05 * i, "test_loss": 2.0 - 0.1 * i, "train_accuracy": 0.2, "train_loss": 1.5}
            for i in range(n)]


@pytest.mark.parametrize("padding,size", [("same", 28), ("same", 32), ("valid", 28)])
def test_small_cnn_zoo_exact(tmp_path, padding, size):
    rng = np.random.default_rng(0)
    nets = [tf_variables(rng) for _ in range(6)]
    dataset = {28: "mnist", 32: "cifar10"}[size]
    metrics = metrics_rows(6, dataset=dataset)
    write_small_cnn_zoo(tmp_path / "src", nets, metrics)
    report = import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "zoo", padding=padding, shard_size=4,
                        progress=False)
    zoo = load_zoo(tmp_path / "zoo")
    assert report.imported == len(zoo) == 6 and not report.problems
    assert zoo.arch["input_shape"] == [1, 1, size, size]
    x = rng.normal(size=(3, size, size, 1)).astype(np.float32)
    for i, net in enumerate(nets):
        # bit for bit: HWIO kernels -> OIHW, dense (in, out) -> (out, in)
        assert torch.equal(zoo.weights["conv0.weight"][i], torch.from_numpy(net[0][1].transpose(3, 2, 0, 1).copy()))
        assert torch.equal(zoo.weights["conv2.bias"][i], torch.from_numpy(net[5][1]))
        assert torch.equal(zoo.weights["dense.weight"][i], torch.from_numpy(net[6][1].T.copy()))
        want = tf_forward(net, x, 2, padding, metrics[i]["config.activation"])
        with torch.no_grad():
            got = zoo.network(i)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert zoo.table["activation"].tolist() == [m["config.activation"] for m in metrics]
    np.testing.assert_allclose(zoo.table["test_acc"], [m["test_accuracy"] for m in metrics])
    assert zoo.table["run"].tolist() == [0, 0, 0, 1, 1, 1] and zoo.table["checkpoint"].tolist() == [0, 1, 2] * 2
    assert zoo.table["row"].tolist() == list(range(6))
    assert zoo.graphs().batch_size == 6


def test_small_cnn_zoo_problems_and_wgraph_task(tmp_path):
    """NaN weights, an empty label field, rows without metrics and a truncated array are reported
    by file and index; the other networks are imported, and the zoo is task data as it is."""
    from wgraph.tasks.data import task_data
    from wgraph.tasks.spec import get_task

    rng = np.random.default_rng(1)
    nets = [tf_variables(rng) for _ in range(12)]
    nets[2][3] = (nets[2][3][0], np.full_like(nets[2][3][1], np.nan))  # conv1 bias
    metrics = metrics_rows(10)  # rows 10, 11 have weights but no metrics
    metrics[5]["test_accuracy"] = ""
    row_bytes = sum(v.size for _, v in nets[0]) * 4
    write_small_cnn_zoo(tmp_path / "src", nets, metrics, truncate_bytes=row_bytes - 7)  # row 11 cut short
    report = import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "zoo", shard_size=5, progress=False)
    got = {(p.reason, p.index, p.count) for p in report.problems}
    assert got == {("non-finite weights", 2, 1), ("missing label", 5, 1), ("missing label", 10, 1),
                   ("truncated", 11, 1)}, report.summary()
    by = {p.index: p for p in report.problems}
    assert by[2].file == "weights.npy" and "conv1.bias" in by[2].detail
    assert by[5].file == "weights.npy" and "test_acc" in by[5].detail and by[10].file == "metrics.csv.gz"
    assert report.imported == 8 and report.networks == 12
    summary = report.summary()
    assert "imported 8 of 12" in summary and "weights.npy [network 2]" in summary
    zoo = report.zoo
    assert zoo.table["row"].tolist() == [0, 1, 3, 4, 6, 7, 8, 9]
    assert torch.equal(zoo.weights["conv1.weight"][2], torch.from_numpy(nets[3][2][1].transpose(3, 2, 0, 1).copy()))
    data = task_data(zoo, get_task("generalization"))
    assert data.graphs.batch_size == 8 and len(set(data.groups.tolist())) == 4
    with pytest.raises(ImportFailed, match=r"stopped: metrics.csv.gz \[network 10\]: missing label"):
        import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "strict", strict=True, progress=False)
    # steps: only the end of training
    final = import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "final", steps=[86], progress=False)
    assert final.zoo.table["row"].tolist() == [8] and final.networks == 5  # rows 2, 5, 8 of step 86; 10, 11


def test_small_cnn_zoo_resume_gives_the_same_zoo(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    nets = [tf_variables(rng) for _ in range(7)]
    nets[1][0] = (nets[1][0][0], np.full_like(nets[1][0][1], np.inf))
    write_small_cnn_zoo(tmp_path / "src", nets, metrics_rows(7))
    whole = import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "whole", shard_size=3, progress=False)
    real = import_common.ZooWriter.write_shard

    def killed(self, index, *a, **k):
        if index == 1:
            raise KeyboardInterrupt
        return real(self, index, *a, **k)

    monkeypatch.setattr(import_common.ZooWriter, "write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "resumed", shard_size=3, progress=False)
    monkeypatch.setattr(import_common.ZooWriter, "write_shard", real)
    resumed = import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "resumed", shard_size=3, progress=False)
    assert [str(p) for p in resumed.problems] == [str(p) for p in whole.problems] and len(whole.problems) == 1
    for k, v in whole.zoo.weights.items():
        assert torch.equal(resumed.zoo.weights[k], v)
    assert json.loads((tmp_path / "resumed" / REPORT).read_text())["shards"]["0"][0]["index"] == 1
    with pytest.raises(Exception, match="different arch"):  # another setting is refused, as for generation
        import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "resumed", shard_size=3, padding="same",
                   progress=False)


# ------------------------------------------------------------------ INRs: DWSNets / neural-graphs and NFN conventions
class DWSSiren(nn.Module):
    """A layer of DWSNets' INR: its own weight and bias, ``sin(w0 · (W x + b))``."""

    def __init__(self, a, b, w0=30.0):
        super().__init__()
        self.weight, self.bias, self.w0 = nn.Parameter(torch.randn(b, a) / a), nn.Parameter(torch.randn(b) / 8), w0

    def forward(self, x):
        return torch.sin(self.w0 * F.linear(x, self.weight, self.bias))


class DWSINR(nn.Module):
    """DWSNets' INR: ``seq`` of Siren layers and a final Linear, output + 0.5."""

    def __init__(self, sizes=(2, 8, 8, 1)):
        super().__init__()
        self.seq = nn.Sequential(*[DWSSiren(a, b) for a, b in zip(sizes[:-2], sizes[1:-1])], nn.Linear(*sizes[-2:]))

    def forward(self, x):
        return self.seq(x) + 0.5


class NFNSineLayer(nn.Module):
    def __init__(self, a, b, w0=30.0):
        super().__init__()
        self.linear, self.omega_0 = nn.Linear(a, b), w0

    def forward(self, x):
        return torch.sin(self.omega_0 * self.linear(x))


class NFNSiren(nn.Module):
    """NFN's Siren(in, hidden, hidden_layers=1, out, outermost_linear=True): ``net.{i}.linear.*``, ``net.2.*``."""

    def __init__(self, sizes=(2, 8, 8, 1)):
        super().__init__()
        self.net = nn.Sequential(*[NFNSineLayer(a, b) for a, b in zip(sizes[:-2], sizes[1:-1])], nn.Linear(*sizes[-2:]))

    def forward(self, coords):
        return self.net(coords), coords


def grid(n=5):
    t = torch.linspace(-1, 1, n)
    return torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)


def test_dwsnets_inrs(tmp_path):
    torch.manual_seed(0)
    root = tmp_path / "dataset"
    inrs, paths, labels = [], [], []
    for i in range(8):
        label = i % 3
        f = root / "mnist-inrs" / f"mnist_png_{'training' if i < 6 else 'testing'}_{label}_{100 + i}" / "checkpoints"
        f.mkdir(parents=True)
        inr = DWSINR()
        if i == 3:
            with torch.no_grad():
                inr.seq[1].weight[0, 0] = float("nan")
        torch.save(inr.state_dict(), f / "model_final.pth")
        inrs.append(inr)
        # DWSNets writes absolute paths of the machine that made the split
        paths.append(f"/home/someone/dwsnets/dataset/mnist-inrs/{f.parent.name}/checkpoints/model_final.pth")
        labels.append(str(label))
    bad = DWSINR((2, 8, 4, 1))  # another architecture: shape mismatch
    torch.save(bad.state_dict(), root / "mnist-inrs" / "odd.pth")
    torch.save({"seq.0.weight": torch.zeros(8, 2)}, root / "mnist-inrs" / "keys.pth")
    splits = {"train": {"path": paths[:5] + ["mnist-inrs/odd.pth"], "label": labels[:5] + ["1"]},
              "val": {"path": [paths[5], "mnist-inrs/keys.pth"], "label": [labels[5], "2"]},
              "test": {"path": paths[6:] + ["mnist-inrs/gone/model_final.pth"], "label": labels[6:] + ["0"]}}
    (root / "mnist_splits.json").write_text(json.dumps(splits))
    report = import_zoo("inr", root, tmp_path / "zoo", shard_size=4, progress=False)
    got = {(p.reason, p.index) for p in report.problems}
    assert got == {("shape", 5), ("keys", 7), ("non-finite weights", 3), ("missing file", 10)}, report.summary()
    zoo = report.zoo
    assert zoo.arch == {"name": "siren", "kwargs": {"sizes": [2, 8, 8, 1], "w0": 30.0, "offset": 0.5},
                        "input_shape": [1, 2]}
    kept = [0, 1, 2, 4, 5, 6, 7]  # source INRs in split order (train 0-4, val 5, test 6-7)
    assert zoo.table["split"].tolist() == ["train"] * 4 + ["val"] + ["test"] * 2
    assert zoo.table["label"].tolist() == [int(labels[i]) for i in kept]
    x = grid()
    for j, i in enumerate(kept):
        sd = inrs[i].state_dict()
        assert torch.equal(zoo.weights["0.weight"][j], sd["seq.0.weight"])
        assert torch.equal(zoo.weights["4.bias"][j], sd["seq.2.bias"])
        with torch.no_grad():
            torch.testing.assert_close(zoo.network(j)(x), inrs[i](x), rtol=0, atol=1e-6)
    from wgraph.tasks.data import task_data
    from wgraph.tasks.spec import get_task

    data = task_data(zoo, get_task("inr-classify"))
    assert data.graphs.batch_size == 7 and data.targets.tolist() == [int(labels[i]) for i in kept]


def test_nfn_inrs_and_labels_from_files(tmp_path):
    torch.manual_seed(1)
    root = tmp_path / "siren_mnist_wts"
    sirens = []
    for i in range(6):
        d = root / f"randinit_smaller_{i % 4}s"
        d.mkdir(parents=True, exist_ok=True)
        s = NFNSiren()
        torch.save(s.state_dict(), d / f"net{i}.pth")
        sirens.append(s)
    report = import_zoo("inr", root, tmp_path / "zoo", progress=False)
    zoo = report.zoo
    assert not report.problems and zoo.arch["kwargs"] == {"sizes": [2, 8, 8, 1], "w0": 30.0}
    assert zoo.table["label"].tolist() == [i % 4 for i in range(6)]
    x = grid()
    for i, s in enumerate(sirens):
        assert torch.equal(zoo.weights["2.weight"][i], s.state_dict()["net.1.linear.weight"])
        with torch.no_grad():
            torch.testing.assert_close(zoo.network(i)(x), s(x)[0], rtol=0, atol=1e-6)

    # neural-graphs' Fashion-MNIST layout: a split of plain paths, the label inside each file
    fm = tmp_path / "fmnist_inrs"
    (fm / "inrs").mkdir(parents=True)
    for i in range(3):
        entry = dict(DWSINR().state_dict())
        if i != 1:
            entry["label"] = 7 + i
        torch.save(entry, fm / "inrs" / f"inr_{i}.pth")
    (fm / "splits.json").write_text(json.dumps({"train": [f"inrs/inr_{i}.pth" for i in range(3)]}))
    r = import_zoo("inr", fm / "splits.json", tmp_path / "fm", progress=False)
    assert r.zoo.table["label"].tolist() == [7, 9]
    assert [(p.reason, p.index, p.file) for p in r.problems] == [("missing label", 1, "inrs/inr_1.pth")]


# ------------------------------------------------------------------ a folder of checkpoints
class Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_checkpoint_folder(tmp_path):
    torch.manual_seed(2)
    src = tmp_path / "runs"
    (src / "a").mkdir(parents=True)
    nets = [nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(5)]
    torch.save(nets[0].state_dict(), src / "a" / "n0.pt")
    torch.save({"epoch": 3, "state_dict": nets[1].state_dict()}, src / "a" / "n1.pth")  # nested
    torch.save({"model": {f"module.{k}": v for k, v in nets[2].state_dict().items()}}, src / "n2.pt")  # DataParallel
    from safetensors.torch import save_file

    save_file(nets[3].state_dict(), src / "n3.safetensors")
    torch.save(nets[4].state_dict(), src / "n4.pt")
    data = (src / "n4.pt").read_bytes()
    (src / "n4.pt").write_bytes(data[: len(data) // 2])  # truncated
    marker = tmp_path / "pwned"
    torch.save({"0.weight": Payload(marker)}, src / "evil.pt")  # torch's zip format
    with open(src / "evil_raw.pt", "wb") as f:
        pickle.dump({"0.weight": Payload(marker)}, f)  # a bare pickle
    torch.save({"0.weight": torch.zeros(8, 4)}, src / "partial.pt")
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("file,acc,optimizer\na/n0.pt,0.5,sgd\nn1,0.6,adam\nn2.pt,0.7,sgd\nn3.safetensors,,adam\n"
                "n4.pt,0.9,sgd\nevil.pt,0.1,sgd\nevil_raw.pt,0.1,sgd\nghost.pt,0.3,sgd\n")
    mlp = {"arch": "wgraph.zoo.archs:mlp", "arch_kwargs": {"sizes": [4, 8, 3]}, "input_shape": [1, 4]}
    labels = str(tmp_path / "labels.csv")
    report = import_zoo("checkpoints", src, tmp_path / "zoo", labels=labels, progress=False, **mlp)
    assert not marker.exists()
    assert "it needs io.open, which is not a tensor type" in report.summary()
    got = {(p.file, p.reason) for p in report.problems}
    assert got == {("evil.pt", "unsafe pickle"), ("evil_raw.pt", "unsafe pickle"), ("n4.pt", "unreadable"),
                   ("labels.csv", "missing label"), ("labels.csv", "missing file"),
                   ("n3.safetensors", "missing label")}, report.summary()
    zoo = report.zoo
    assert zoo.table["source"].tolist() == ["a/n0.pt", "a/n1.pth", "n2.pt"]
    assert zoo.table["optimizer"].tolist() == ["sgd", "adam", "sgd"] and zoo.table["acc"].dtype == np.float64
    for j in range(3):
        for k, v in nets[j].state_dict().items():
            assert torch.equal(zoo.weights[k][j], v)
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(zoo.network(2)(x), nets[2](x), rtol=0, atol=0)

    # keys that do not match, a list file, module:factory, strict mode
    lst = tmp_path / "list.txt"
    lst.write_text("runs/a/n0.pt\nruns/partial.pt\n")
    r = import_zoo("checkpoints", lst, tmp_path / "zoo2", progress=False, **mlp)
    assert [(p.reason, p.index) for p in r.problems] == [("keys", 1)] and "'2.weight'" in r.problems[0].detail
    with pytest.raises(ImportFailed, match="runs/partial.pt \\[network 1\\]: keys"):
        import_zoo("checkpoints", lst, tmp_path / "zoo3", strict=True, progress=False, **mlp)
    with pytest.raises(ImportFailed, match="no network could be imported"):
        import_zoo("checkpoints", lst, tmp_path / "zoo4", arch="digits_cnn", input_shape=[1, 1, 8, 8],
                   progress=False)


def test_torchvision_checkpoints_drop_step_counters(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    src = tmp_path / "ckpts"
    src.mkdir()
    nets = [tv.models.resnet18(num_classes=10) for _ in range(2)]
    for i, m in enumerate(nets):
        torch.save(m.state_dict(), src / f"r{i}.pth")  # with BatchNorm's num_batches_tracked
    report = import_zoo("checkpoints", src, tmp_path / "zoo", arch="torchvision:resnet18",
                        arch_kwargs={"num_classes": 10}, input_shape=[1, 3, 32, 32], progress=False)
    zoo = report.zoo
    assert len(zoo) == 2 and not any(k.endswith("num_batches_tracked") for k in zoo.weights)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(zoo.network(1)(x), nets[1].eval()(x))
    with pytest.raises(Exception, match="would load weights"):
        import_zoo("checkpoints", src, tmp_path / "z2", arch="torchvision:resnet18", arch_kwargs={"weights": "DEFAULT"},
                   progress=False)


# ------------------------------------------------------------------ the command line
def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="wgraph")
    zoo = parser.add_subparsers(dest="command").add_parser("zoo")
    register_import(zoo.add_subparsers(dest="zoo_kind"))
    rng = np.random.default_rng(4)
    nets = [tf_variables(rng) for _ in range(3)]
    nets[0][1] = (nets[0][1][0], np.full_like(nets[0][1][1], np.nan))
    write_small_cnn_zoo(tmp_path / "src", nets, metrics_rows(3))
    argv = ["zoo", "import", "small-cnn-zoo", str(tmp_path / "src"), str(tmp_path / "zoo"), "-q", "--steps", "0,20"]
    args = parser.parse_args(argv)
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert "imported 1 of 2" in out and "weights.npy [network 0]: non-finite weights" in out
    args = parser.parse_args(argv[:4] + [str(tmp_path / "strict"), "-q", "--strict"])
    with pytest.raises(ImportFailed):
        args.fn(args)
    args = parser.parse_args(["zoo", "import", "checkpoints", "SRC", "OUT", "--arch", "mlp", "--arch-kwargs",
                              '{"sizes": [4, 3]}', "--input-shape", "1,4"])
    assert args.arch_kwargs == '{"sizes": [4, 3]}' and math.prod(map(int, args.input_shape.split(","))) == 4
    from wgraph.cli import main  # the real command has the subcommand

    write_small_cnn_zoo(tmp_path / "src2", nets[1:], metrics_rows(2))
    assert main(["zoo", "import", "small-cnn-zoo", str(tmp_path / "src2"), str(tmp_path / "z2"), "-q"]) == 0
    assert "imported 2 of 2" in capsys.readouterr().out


# ------------------------------------------------------------------ the Small Transformer Zoo (MNIST-Transformers)
class SourceViT(nn.Module):
    """The published MNIST-Transformers network in its own convention: attention as explicit
    ``softmax(Q K^T / sqrt(d)) V`` matrix products, no residual connections."""

    def __init__(self, dim=8, heads=2, layers=2, mul=2, size=12, patch=4, classes=10):
        super().__init__()
        self.heads = heads
        self.embedding = nn.Module()
        self.embedding.conv1 = nn.Conv2d(1, dim, patch, stride=patch)
        self.embedding.pos_embedding = nn.Parameter(torch.randn((size // patch) ** 2, dim), requires_grad=False)
        self.encoder = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.attention = nn.Module()
            for name in ("queries", "keys", "values", "out_projection"):
                setattr(block.attention, name, nn.Linear(dim, dim, bias=False))
            block.fc1, block.fc2 = nn.Linear(dim, dim * mul), nn.Linear(dim * mul, dim)
            self.encoder.append(block)
        self.classifier = nn.Module()
        self.classifier.fc1, self.classifier.fc2 = nn.Linear(dim, dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embedding.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1) + self.embedding.pos_embedding
        b, s, e = x.shape
        for blk in self.encoder:
            h = F.layer_norm(x, (e,))
            q, k, v = (getattr(blk.attention, n)(h).reshape(b, s, self.heads, -1).permute(0, 2, 1, 3)
                       for n in ("queries", "keys", "values"))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // self.heads), -1)
            h = blk.attention.out_projection((att @ v).permute(0, 2, 1, 3).reshape(b, s, e))
            x = blk.fc2(torch.relu(blk.fc1(F.layer_norm(h, (e,)))))
        return self.classifier.fc2(torch.relu(self.classifier.fc1(F.layer_norm(x, (e,)).mean(1))))


def test_small_transformer_zoo(tmp_path):
    from wgraph.tasks.data import task_data
    from wgraph.tasks.spec import get_task

    torch.manual_seed(5)
    data = tmp_path / "mnist_transformer"
    (data / "mnist").mkdir(parents=True)
    (data / "metadata").mkdir()
    nets, rows = [SourceViT() for _ in range(4)], []
    for i, m in enumerate(nets):
        torch.save(m.state_dict(), data / "mnist" / f"run{i}_75_{9000 + i}.pt")
        rows.append(f"{i},mnist/run{i}_75_{9000 + i}.pt,75,0.{90 + i},2,8\n")
    torch.save({"embedding": {"weight": [torch.zeros(2)]}}, data / "mnist_train_0.1.pt")  # the loader's own cache
    (data / "metadata" / "mnist.csv").write_text(
        "seed,ckpt_file,ckpt_epoch,test_top1_accuracy,n_attention_heads,embed_dim\n" + "".join(rows))
    kwargs = {"embed_dim": 8, "n_heads": 2, "image_size": 12}
    report = import_zoo("checkpoints", data, tmp_path / "zoo", arch="small_vit", arch_kwargs=kwargs,
                        input_shape=[1, 1, 12, 12], labels=str(data / "metadata" / "mnist.csv"), key="ckpt_file",
                        rename={"test_top1_accuracy": "test_acc", "seed": "run"}, progress=False)
    assert [(p.file, p.reason) for p in report.problems] == [("mnist.csv", "missing label")]  # the cache file
    zoo = report.zoo
    np.testing.assert_allclose(zoo.table["test_acc"], [0.90, 0.91, 0.92, 0.93])
    x = torch.randn(3, 1, 12, 12)
    for i, m in enumerate(nets):
        assert torch.equal(zoo.weights["encoder.1.attention.keys.weight"][i], m.encoder[1].attention.keys.weight)
        with torch.no_grad():
            torch.testing.assert_close(zoo.network(i)(x), m(x), rtol=1e-5, atol=1e-5)
    assert task_data(zoo, get_task("generalization")).graphs.batch_size == 4
