"""Model zoos: storage round trip, resume, corruption, no unpickling, graphs, labels, CLI."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import wgraph
from wgraph.cli import main
from wgraph.errors import ZooError
from wgraph.zoo import ZooWriter, digits_cnn, generate_cnn_zoo, generate_inr_zoo, load_zoo

CNN = dict(runs=6, checkpoints=2, epochs=2, seed=1, shard_size=3, channels=8, progress=False)
INR = dict(images=12, steps=30, seed=1, shard_size=5, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The generators run tiny batches; on a loaded 2-core machine one thread is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory):
    with warnings.catch_warnings():  # e.g. vmap's "performance drop" note for an unbatched op
        warnings.simplefilter("error")
        return generate_cnn_zoo(tmp_path_factory.mktemp("cnn") / "zoo", **CNN)


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory):
    return generate_inr_zoo(tmp_path_factory.mktemp("inr") / "zoo", **INR)


def _assert_same_zoo(a, b):
    assert len(a) == len(b) and a.weights.keys() == b.weights.keys()
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k
    assert a.table.keys() == b.table.keys()
    for c in a.table:
        np.testing.assert_array_equal(a.table[c], b.table[c])


# ---------------------------------------------------------------- storage
ARCH = {"name": "digits_cnn", "kwargs": {"channels": 4}, "input_shape": [1, 1, 8, 8],
        "per_network": {"activation": "act"}}
COLS = {"run": "int", "checkpoint": "int", "acc": "float", "act": "str", "good": "bool"}


def _write_small(path, n_shards=2, per=3):
    torch.manual_seed(0)
    sds = [digits_cnn(4).state_dict() for _ in range(n_shards * per)]
    stacked = {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}
    with ZooWriter(path, kind="cnn", arch=ARCH, columns=COLS, config={"seed": 0}) as w:
        for s in range(n_shards):
            rows = range(s * per, (s + 1) * per)
            table = {"run": list(rows), "checkpoint": [0] * per, "acc": [0.5, float("nan"), 1.0][:per],
                     "act": ["relu", "tanh", "gelu"][:per], "good": [True, False, True][:per]}
            w.write_shard(s, {k: v[s * per : (s + 1) * per] for k, v in stacked.items()}, table)
        w.finish()
    return stacked


def test_writer_loader_round_trip(tmp_path):
    stacked = _write_small(tmp_path / "z")
    zoo = load_zoo(tmp_path / "z")
    assert len(zoo) == 6 and zoo.kind == "cnn" and zoo.arch == ARCH
    for k, v in stacked.items():
        assert torch.equal(zoo.weights[k], v)
    assert zoo.table["run"].tolist() == list(range(6)) and zoo.table["run"].dtype == np.int64
    assert np.isnan(zoo.table["acc"][1]) and zoo.table["acc"][2] == 1.0
    assert zoo.table["act"].tolist() == ["relu", "tanh", "gelu"] * 2 and zoo.table["good"].dtype == bool
    zoo.model().load_state_dict({k: v[0] for k, v in zoo.weights.items()}, strict=True)
    assert isinstance(zoo.network(1)[1], torch.nn.Tanh)  # the per-network activation
    sub = zoo.subset([4, 0])
    assert sub.table["run"].tolist() == [4, 0] and torch.equal(sub.weights["0.weight"][0], stacked["0.weight"][4])
    assert len(zoo.subset(zoo.table["good"])) == 4
    m = json.loads((tmp_path / "z" / "manifest.json").read_text())
    assert m["complete"] and [s["count"] for s in m["shards"]] == [3, 3]


def test_writer_rejects_bad_input(tmp_path):
    w = ZooWriter(tmp_path / "z", kind="cnn", arch=ARCH, columns=COLS)
    sd = {k: v[None] for k, v in digits_cnn(4).state_dict().items()}
    row = {"run": [0], "checkpoint": [0], "acc": [0.1], "act": ["relu"], "good": [True]}
    with pytest.raises(ZooError, match="0.weight"):
        w.write_shard(0, {**sd, "0.weight": torch.zeros(1, 3, 1, 3, 3)}, row)
    with pytest.raises(ZooError, match="'acc'"):
        w.write_shard(0, sd, {**row, "acc": ["high"]})
    with pytest.raises(ZooError, match="another process"):
        ZooWriter(tmp_path / "z", kind="cnn", arch=ARCH, columns=COLS)
    w.close()
    with pytest.raises(ZooError, match="incomplete"):
        load_zoo(tmp_path / "z")
    assert len(load_zoo(tmp_path / "z", partial=True)) == 0
    with pytest.raises(ZooError, match="no manifest.json"):
        load_zoo(tmp_path)
    with pytest.raises(ZooError, match="not empty"):  # never mixes a zoo into a directory of other files
        ZooWriter(tmp_path, kind="cnn", arch=ARCH, columns=COLS)


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("kind", ["cnn", "inr"])
def test_resume_after_kill_equals_uninterrupted(kind, tmp_path, monkeypatch, cnn_zoo, inr_zoo):
    generate, settings, full = (generate_cnn_zoo, CNN, cnn_zoo) if kind == "cnn" else (generate_inr_zoo, INR, inr_zoo)
    out = tmp_path / "zoo"
    real_write = ZooWriter.write_shard

    def killed_after_first(self, index, *args):
        if self.num_networks:
            raise KeyboardInterrupt  # a kill between shards
        real_write(self, index, *args)

    monkeypatch.setattr(ZooWriter, "write_shard", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        generate(out, **settings)
    monkeypatch.setattr(ZooWriter, "write_shard", real_write)
    with pytest.raises(ZooError, match="incomplete"):
        load_zoo(out)
    first = json.loads((out / "manifest.json").read_text())["shards"]
    assert len(first) == 1 and len(load_zoo(out, partial=True)) == first[0]["count"] > 0
    # debris of a kill in the middle of the next shard: a temp file and a shard the manifest never got
    (out / ".tmp-shard-00001.safetensors.4242").write_bytes(b"half a shard")
    (out / "shard-00001.safetensors").write_bytes(b"not in the manifest")
    resumed = generate(out, **settings)
    _assert_same_zoo(resumed, full)
    pairs = list(zip(resumed.table["run"].tolist(), resumed.table["checkpoint"].tolist()))
    assert len(pairs) == len(set(pairs))
    assert not list(out.glob(".tmp-*"))


def test_rerun_with_other_settings_is_refused(cnn_zoo):
    with pytest.raises(ZooError, match="epochs: 2 stored, 3 now"):
        generate_cnn_zoo(cnn_zoo.path, **{**CNN, "epochs": 3})


# ---------------------------------------------------------------- corruption and safety
def test_corrupted_and_truncated_shards_are_named(tmp_path):
    _write_small(tmp_path / "z")
    shard = tmp_path / "z" / "shard-00001.safetensors"
    data = shard.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(ZooError, match=r"shard-00001\.safetensors: corrupted shard"):
        load_zoo(tmp_path / "z")
    shard.write_bytes(data[: len(data) - 7])
    with pytest.raises(ZooError, match=r"shard-00001\.safetensors: corrupted"):
        load_zoo(tmp_path / "z")
    with pytest.raises(ZooError, match=r"shard-00001\.safetensors: not a valid safetensors file"):
        load_zoo(tmp_path / "z", verify=False)
    shard.unlink()
    with pytest.raises(ZooError, match=r"shard-00001\.safetensors: shard missing"):
        load_zoo(tmp_path / "z")


def test_resume_regenerates_a_corrupted_shard(tmp_path, inr_zoo):
    out = tmp_path / "zoo"
    shutil.copytree(inr_zoo.path, out)
    shard = out / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.warns(UserWarning, match="shard-00001.safetensors: missing or corrupted"):
        regenerated = generate_inr_zoo(out, **INR)
    _assert_same_zoo(regenerated, inr_zoo)


class _Evil:
    """Unpickling this creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickles_in_a_zoo_are_never_loaded(tmp_path):
    zoo_dir = tmp_path / "z"
    _write_small(zoo_dir)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker))
    for name in ("evil.pkl", "weights.pt", "model.bin", "shard-00002.safetensors"):
        (zoo_dir / name).write_bytes(payload)
    zoo = load_zoo(zoo_dir)
    assert len(zoo) == 6 and not marker.exists()
    # a manifest that points at the pickle is refused, whatever the pickle is called
    manifest = zoo_dir / "manifest.json"
    m = json.loads(manifest.read_text())
    m["shards"][0]["file"] = "evil.pkl"
    manifest.write_text(json.dumps(m))
    with pytest.raises(ZooError, match="not a plain"):
        load_zoo(zoo_dir)
    m["shards"][0]["file"] = "../z/evil.safetensors"
    manifest.write_text(json.dumps(m))
    with pytest.raises(ZooError, match="not a plain"):
        load_zoo(zoo_dir)
    m["shards"][0]["file"] = "shard-00002.safetensors"  # the pickle under a shard's name
    manifest.write_text(json.dumps(m))
    for verify in (True, False):
        with pytest.raises(ZooError, match="shard-00002.safetensors"):
            load_zoo(zoo_dir, verify=verify)
    assert not marker.exists()


# ---------------------------------------------------------------- graphs and labels
@pytest.mark.parametrize("which", ["cnn", "inr"])
def test_graphs_give_back_the_stored_weights(which, cnn_zoo, inr_zoo):
    zoo = cnn_zoo if which == "cnn" else inr_zoo
    g = zoo.graphs()
    assert isinstance(g, wgraph.WeightGraph) and g.batch_size == len(zoo)
    for i in (0, len(zoo) - 1):
        sd = g.to_state_dict(i)
        assert sd.keys() == zoo.weights.keys()
        assert all(torch.equal(sd[k], zoo.weights[k][i]) for k in sd)
    sub = zoo.graphs([2, 1])
    assert sub.batch_size == 2 and torch.equal(sub.to_state_dict(0)["0.weight"], zoo.weights["0.weight"][2])
    one = wgraph.to_graph(zoo.network(3), zoo.example_input())  # the module converts on its own, exactly
    assert all(torch.equal(v, zoo.weights[k][3]) for k, v in one.to_state_dict().items())


def test_cnn_labels(cnn_zoo):
    from wgraph.zoo.data import digits_split

    t = cnn_zoo.table
    assert len(cnn_zoo) == CNN["runs"] * CNN["checkpoints"]  # nothing diverged in this tiny zoo
    assert t["epoch"].tolist() == [1, 2] * CNN["runs"]
    for c in ("test_acc", "train_acc"):
        assert ((t[c] >= 0) & (t[c] <= 1)).all()
    assert (t["train_loss"] >= 0).all() and np.isfinite(t["test_loss"]).all()
    last = t["checkpoint"] == 1
    assert (t["test_acc"][last] > 0.2).mean() >= 0.5, t["test_acc"]  # mostly above chance (0.1)
    assert set(t["optimizer"]) <= {"sgd", "adam"} and set(t["activation"]) <= {"relu", "tanh", "gelu"}
    # the labels are those of the stored network, with its own activation
    _, _, x_test, y_test = digits_split(CNN["seed"])
    for i in range(len(cnn_zoo)):
        with torch.no_grad():
            acc = (cnn_zoo.network(i)(x_test).argmax(1) == y_test).float().mean().item()
        assert acc == pytest.approx(t["test_acc"][i], abs=1e-6)


def test_inr_labels_and_fit(inr_zoo, tmp_path):
    from wgraph.zoo.data import digits_images
    from wgraph.zoo.inr import pixel_coordinates

    pixels, labels = digits_images()
    t = inr_zoo.table
    assert t["image"].tolist() == list(range(12)) and t["label"].tolist() == labels[:12].tolist()
    with torch.no_grad():
        mse = ((inr_zoo.network(5)(pixel_coordinates())[:, 0] - pixels[5].reshape(-1)) ** 2).mean().item()
    assert mse == pytest.approx(t["recon_mse"][5], rel=1e-4, abs=1e-9)
    fewer = generate_inr_zoo(tmp_path / "few", **{**INR, "steps": 3})
    assert (t["recon_mse"] < fewer.table["recon_mse"]).all()
    assert t["recon_mse"].mean() < 0.2 * fewer.table["recon_mse"].mean()


@pytest.mark.parametrize("steps", [0, 1])
def test_inr_init_shared_or_independent(steps, tmp_path):
    """Shared: every INR starts from one initialization, whatever its shard (after one Adam step
    the first layers differ, by at most lr per entry); independent: each its own."""
    settings = dict(images=5, steps=steps, seed=3, shard_size=2, progress=False)
    shared = generate_inr_zoo(tmp_path / "shared", **settings)  # the default
    independent = generate_inr_zoo(tmp_path / "independent", init="independent", **settings)
    first = shared.weights["0.weight"]  # (5, 32, 2)
    if steps == 0:
        for w in shared.weights.values():
            assert all(torch.equal(w[i], w[0]) for i in range(1, 5))
        # drawn from the seed: another seed, another start
        other = generate_inr_zoo(tmp_path / "seed4", **{**settings, "seed": 4})
        assert not torch.equal(other.weights["0.weight"][0], first[0])
    else:  # Adam's first step moves every entry by lr (times sign of its gradient) from the shared start
        spread = (first - first[:1]).abs()
        assert spread.max() <= 2 * 1e-3 * (1 + 1e-5) and spread.max() > 0
    w = independent.weights["0.weight"]
    assert all((w[i] - w[j]).abs().max() > 0.1 for i in range(5) for j in range(i))  # far apart, not a step apart
    assert not torch.equal(independent.weights["2.weight"][0], independent.weights["2.weight"][1])
    assert json.loads((shared.path / "manifest.json").read_text())["config"]["init"] == "shared"
    assert independent.config["init"] == "independent"


def test_inr_init_is_a_stored_setting(inr_zoo, tmp_path):
    assert inr_zoo.config["init"] == "shared"
    with pytest.raises(ZooError, match="init: 'shared' stored, 'independent' now"):
        generate_inr_zoo(inr_zoo.path, **{**INR, "init": "independent"})
    with pytest.raises(ZooError, match="init must be one of 'shared', 'independent', got 'same'"):
        generate_inr_zoo(tmp_path / "z", **{**INR, "init": "same"})


# ---------------------------------------------------------------- CLI
def test_cli_end_to_end(tmp_path, capsys):
    assert main(["zoo", "inr", str(tmp_path / "inr"), "--images", "4", "--steps", "2", "--quiet"]) == 0
    assert "wrote 4 INRs" in capsys.readouterr().out and len(load_zoo(tmp_path / "inr")) == 4
    assert load_zoo(tmp_path / "inr").config["init"] == "shared"
    ind = ["zoo", "inr", str(tmp_path / "ind"), "--images", "2", "--steps", "0", "--init", "independent", "-q"]
    assert main(ind) == 0 and load_zoo(tmp_path / "ind").config["init"] == "independent"
    assert main([*ind[:-2], "shared", "-q"]) == 2
    assert "init: 'independent' stored, 'shared' now" in capsys.readouterr().err
    args = ["zoo", "cnn", str(tmp_path / "cnn"), "--runs", "2", "--checkpoints", "1", "--epochs", "1", "-q"]
    assert main(args) == 0
    assert f"wrote 2 CNNs trained on digits (2 runs x 1 checkpoints) to {tmp_path / 'cnn'}" in capsys.readouterr().out
    assert main(args) == 0  # complete already: nothing to do
    assert main([*args[:-2], "2", "-q"]) == 2
    assert "epochs: 1 stored, 2 now" in capsys.readouterr().err


def test_tampered_manifest_is_refused(tmp_path):
    zoo_dir = tmp_path / "z"
    _write_small(zoo_dir)
    manifest = zoo_dir / "manifest.json"
    good = json.loads(manifest.read_text())
    for change, message in (
        (lambda m: m["arch"].update(name="os.system"), "unknown architecture 'os.system'"),
        (lambda m: m["arch"]["kwargs"].update(channels=5), r"shard-00000.safetensors: '0.weight' has shape"),
        (lambda m: m["shards"][1].update(count=4), "column 'run' must be a list of 4 values"),
        (lambda m: m["shards"][1]["table"]["run"].__setitem__(0, 0), r"duplicate \(run, checkpoint\)"),
        (lambda m: m.update(version=99), "format version 99"),
    ):
        m = json.loads(json.dumps(good))
        change(m)
        manifest.write_text(json.dumps(m))
        with pytest.raises(ZooError, match=message):
            load_zoo(zoo_dir)
    manifest.write_text("{not json")
    with pytest.raises(ZooError, match="unreadable manifest"):
        load_zoo(zoo_dir)


def test_batched_training_equals_independent_training():
    """The vmapped, row-wise SGD / Adam of a group is G separate torch.optim trainings."""
    from wgraph.zoo.cnn import CNNZooConfig, _Group, sample_run
    from wgraph.zoo.data import digits_split

    cfg = CNNZooConfig(runs=6, epochs=1, checkpoints=1, channels=4, activations=("tanh",))
    runs = list(range(6))
    hps = [sample_run(cfg, r) for r in runs]
    assert {hp["optimizer"] for hp in hps} == {"sgd", "adam"}
    data = digits_split(cfg.seed)
    steps = 5
    group = _Group(cfg, runs, hps, data, steps)
    init = group.p.detach().clone()
    for s in range(steps):
        group.step(s, data[0], data[1], cfg)
    for i, hp in enumerate(hps):
        model = digits_cnn(cfg.channels, 10, "tanh")
        model.load_state_dict({k: v[i] for k, v in group.params(init).items()})
        kw = {"lr": hp["lr"], "weight_decay": hp["weight_decay"]}
        if hp["optimizer"] == "adam":
            opt = torch.optim.Adam(model.parameters(), **kw)
        else:
            opt = torch.optim.SGD(model.parameters(), momentum=cfg.momentum, **kw)
        for s in range(steps):
            idx = group.batches[s, i]
            h = model[:-1](data[0][idx]) * group.masks[s, i] / (1 - hp["dropout"])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model[-1](h), data[1][idx]).backward()
            opt.step()
        for k, v in model.state_dict().items():
            torch.testing.assert_close(group.params(group.p.detach())[k][i], v, rtol=1e-4, atol=1e-5)


def test_every_generated_architecture_is_known_after_importing_the_zoo_package():
    """load_zoo in a fresh process finds every architecture `wgraph zoo` writes (the transformer
    zoo's row_transformer was registered only when the CLI imported its module)."""
    import subprocess
    import sys

    code = "import json, wgraph.zoo as z; print(json.dumps(sorted(z.ARCHITECTURES)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert {"digits_cnn", "siren", "row_transformer"} <= set(json.loads(out))
