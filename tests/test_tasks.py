"""Training harness (wgraph.tasks): split by group, StatNN features, learning, resume, results,
data-parallel runs and the ``wgraph train`` command, on tiny zoos written in the real zoo format."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import wgraph
from wgraph.cli import main
from wgraph.nn import StatNN, from_preset
from wgraph.nn.statnn import STATS, weight_statistics
from wgraph.tasks import TaskError, TrainConfig, get_task, split_groups, task_data, train
from wgraph.tasks.checkpoint import CheckpointError, load_checkpoint
from wgraph.tasks.trainer import TrainError
from wgraph.zoo import ZooWriter, load_zoo
from wgraph.zoo.dataset import Zoo, build_arch

ROOT = Path(__file__).resolve().parent.parent
CNN_ARCH = {
    "name": "digits_cnn", "kwargs": {"channels": 4, "classes": 10, "activation": "relu"}, "input_shape": [1, 1, 8, 8]
}
INR_ARCH = {"name": "siren", "kwargs": {"sizes": [2, 8, 8, 1]}, "input_shape": [1, 2]}


def cnn_zoo(runs: int = 16, checkpoints: int = 3, seed: int = 0) -> Zoo:
    """A CNN zoo whose "test accuracy" is a smooth function of each run's weight scale (learnable)."""
    g = torch.Generator().manual_seed(seed)
    template = build_arch(CNN_ARCH).state_dict()
    scale = 0.05 + 0.5 * torch.rand(runs, generator=g)
    n = runs * checkpoints
    s = scale.repeat_interleave(checkpoints)
    weights = {k: torch.randn(n, *v.shape, generator=g) * s.view(-1, *[1] * v.dim()) for k, v in template.items()}
    acc = torch.sigmoid(12 * (0.3 - s)) + 0.01 * torch.randn(n, generator=g)
    table = {
        "run": np.repeat(np.arange(runs), checkpoints),
        "checkpoint": np.tile(np.arange(checkpoints), runs),
        "test_acc": acc.double().numpy(),
    }
    return Zoo("cnn", CNN_ARCH, weights, table)


def inr_zoo(images: int = 40, seed: int = 0) -> Zoo:
    """An INR zoo whose label shows in the output bias."""
    g = torch.Generator().manual_seed(seed)
    template = build_arch(INR_ARCH).state_dict()
    weights = {k: 0.3 * torch.randn(images, *v.shape, generator=g) for k, v in template.items()}
    label = np.arange(images) % 10
    weights["4.bias"] = torch.as_tensor(label, dtype=torch.float32)[:, None] / 5 - 1
    table = {
        "run": np.arange(images), "checkpoint": np.zeros(images, dtype=np.int64), "label": label,
        "image": np.arange(images),
    }
    return Zoo("inr", INR_ARCH, weights, table)


def write_zoo(zoo: Zoo, path: Path) -> Path:
    columns = {k: "float" if v.dtype.kind == "f" else "int" for k, v in zoo.table.items()}
    with ZooWriter(path, kind=zoo.kind, arch=zoo.arch, columns=columns) as w:
        w.write_shard(0, zoo.weights, zoo.table)
        w.finish()
    return path


def tiny_gnn(tmp_path) -> str:
    """A small graph NFN preset (a path works wherever a preset name does)."""
    path = tmp_path / "tiny-gnn.toml"
    text = (ROOT / "models" / "gnn.toml").read_text()
    text = text.replace("hidden = 64", "hidden = 16").replace("layers = 4", "layers = 2")
    path.write_text(text)
    return str(path)


def config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(task="generalization", model="statnn", out=str(tmp_path / name), batch_size=8, progress=False)
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- split
def test_split_keeps_every_group_in_one_part():
    zoo = cnn_zoo(runs=30, checkpoints=4)
    groups = zoo.table["run"]
    split = split_groups(groups, seed=3)
    parts = {k: set(groups[v]) for k, v in split.items()}
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    assert sorted(np.concatenate(list(split.values()))) == list(range(len(groups)))  # every network once
    assert len(parts["val"]) == len(parts["test"]) == 3 and len(parts["train"]) == 24
    again, other = split_groups(groups, seed=3), split_groups(groups, seed=4)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["test"], other["test"])
    with pytest.raises(TaskError, match="at least 3"):
        split_groups([0, 0, 1], seed=0)


def test_task_data_names_missing_column():
    with pytest.raises(TaskError, match="'test_acc'.*inr"):
        task_data(inr_zoo(), get_task("generalization"))


# ----------------------------------------------------------------------------- StatNN
def test_statnn_features_of_a_hand_made_network():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    values = {
        "0.weight": [[1.0, -2.0], [0.5, 4.0], [3.0, 0.0]],
        "0.bias": [0.1, 0.2, 0.9],
        "2.weight": [[-1.0, 2.0, 7.0]],
        "2.bias": [5.0],
    }
    with torch.no_grad():
        for k, v in values.items():
            net.state_dict()[k].copy_(torch.tensor(v, dtype=torch.float64))
    g = wgraph.to_graph(net, torch.zeros(1, 2, dtype=torch.float64))
    stats = weight_statistics(g)  # (1, tensors, 7)
    assert stats.shape == (1, 4, len(STATS))
    for i, v in enumerate(values.values()):
        x = np.array(v).ravel()
        want = [x.mean(), x.var(), *np.percentile(x, [0, 25, 50, 75, 100])]
        np.testing.assert_allclose(stats[0, i].numpy(), want, rtol=1e-12, atol=1e-12)
    # 0.weight: sorted [-2, 0, 0.5, 1, 3, 4] -> quartiles by linear interpolation
    np.testing.assert_allclose(stats[0, 0, 2:].numpy(), [-2.0, 0.125, 0.75, 2.5, 4.0])
    model = from_preset("statnn", g.layout, out_dim=3).double()
    assert isinstance(model, StatNN) and model(g).shape == (1, 3)


def test_statnn_is_invariant_to_neuron_permutations():
    g = cnn_zoo(runs=4, checkpoints=1).graphs()
    model = StatNN(g.layout, {"out_dim": 2})
    model.fit_normalization(g)
    perm = wgraph.random_symmetry(g, seed=1)
    torch.testing.assert_close(model(g.permute(perm)), model(g), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- learning
def test_statnn_learns_the_generalization_target(tmp_path):
    """Better than the best constant prediction on the training set: it reads the weights."""
    data = task_data(cnn_zoo(runs=16, checkpoints=2), get_task("generalization"))
    r = train(config(tmp_path, epochs=8, lr=3e-3, select="last"), data=data)
    losses = [h["train_loss"] for h in r["history"]]
    assert len(losses) == 8 and np.isfinite(losses).all()
    y = data.targets[split_groups(data.groups)["train"]]
    constant = torch.nn.functional.binary_cross_entropy(y.mean().expand_as(y), y).item()
    assert r["metrics"]["train"]["loss"] < constant - 0.1 < losses[0], (constant, losses)
    assert r["metrics"]["train"]["kendall_tau"] > 0.8


@pytest.mark.parametrize("preset", ["gnn", "np", "mlp"])  # StatNN learns above; these read the graph / weights
def test_inr_classification_reduces_the_training_loss(tmp_path, preset):
    data = task_data(inr_zoo(images=60), get_task("inr-classify"))
    preset = tiny_gnn(tmp_path) if preset == "gnn" else preset
    r = train(config(tmp_path, task="inr-classify", model=preset, epochs=10, lr=3e-3, select="last"), data=data)
    losses = [h["train_loss"] for h in r["history"]]
    assert r["metrics"]["train"]["loss"] < 0.85 * losses[0], losses
    assert r["metrics"]["train"]["accuracy"] > 0.25  # 10 balanced classes: chance is 0.1


# ----------------------------------------------------------------------------- resume
class Interrupt(Exception):
    pass


def _stop_at(k):
    def hook(step):
        if step == k:
            raise Interrupt

    return hook


@pytest.mark.parametrize("preset", ["statnn", "gnn"])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, preset):
    data = task_data(cnn_zoo(runs=16, checkpoints=2), get_task("generalization"))
    preset = tiny_gnn(tmp_path) if preset == "gnn" else preset
    kw = dict(model=preset, steps=9, checkpoint_every=2)  # 3 steps per epoch: checkpoints at 2, 3, 4, 6, 8, 9
    full = train(config(tmp_path, "full", **kw), data=data)
    with pytest.raises(Interrupt):
        train(config(tmp_path, "cut", **kw), data=data, on_step=_stop_at(5))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4
    with pytest.raises(TrainError, match="--resume"):
        train(config(tmp_path, "cut", **kw), data=data)
    with pytest.raises(CheckpointError, match="lr"):
        train(config(tmp_path, "cut", lr=0.1, resume=True, **kw), data=data)
    resumed = train(config(tmp_path, "cut", resume=True, **kw), data=data)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 9
    assert resumed["metrics"] == full["metrics"]
    assert resumed["history"] == full["history"]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_tasks import cnn_zoo
from wgraph.tasks import TrainConfig, get_task, task_data, train
data = task_data(cnn_zoo(runs=16, checkpoints=2), get_task("generalization"))
kill = int(sys.argv[2])
def hook(step):
    if step == kill:
        os.kill(os.getpid(), signal.SIGKILL)
cfg = TrainConfig(task="generalization", model="statnn", out=sys.argv[1], steps=9, batch_size=8, checkpoint_every=2,
                  progress=False, resume=True)
train(cfg, data=data, on_step=hook)
"""


def test_kill_9_then_rerun_resumes(tmp_path):
    """A process killed with SIGKILL mid-run leaves a readable checkpoint; the same run resumed from
    it (here in this process) ends exactly where an uninterrupted run ends."""
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    argv = [sys.executable, str(script), str(tmp_path / "killed"), "7"]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == -9, p.stderr
    assert not (tmp_path / "killed" / "results.json").exists()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 6
    data = task_data(cnn_zoo(runs=16, checkpoints=2), get_task("generalization"))
    resumed = train(config(tmp_path, "killed", steps=9, checkpoint_every=2, resume=True), data=data)
    full = train(config(tmp_path, "full", steps=9, checkpoint_every=2), data=data)
    assert resumed["resumed_from_step"] == 6 and resumed["metrics"] == full["metrics"]


def test_checkpoint_is_tensors_only_and_loaded_without_unpickling(tmp_path):
    data = task_data(cnn_zoo(runs=8, checkpoints=2), get_task("generalization"))
    train(config(tmp_path, steps=2), data=data)
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # weights_only=True
    assert ck["step"] == 2 and "model" in ck and "optimizer" in ck and "rng" in ck

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "run" / "checkpoint.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")


# ----------------------------------------------------------------------------- results and CLI
def test_results_json(tmp_path):
    data = task_data(cnn_zoo(runs=16, checkpoints=2), get_task("generalization"))
    r = train(config(tmp_path, epochs=2, seed=5), data=data)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(r))
    assert saved["seed"] == 5 and saved["config"]["model"] == "statnn" and saved["steps"] == 6
    assert set(saved["metrics"]) == {"train", "val", "test"}
    assert {"kendall_tau", "r2", "mse", "loss"} <= set(saved["metrics"]["test"])
    assert saved["split"]["train"]["groups"] + saved["split"]["val"]["groups"] + saved["split"]["test"]["groups"] == 16
    assert saved["timings"]["train_s"] > 0 and saved["timings"]["total_s"] >= saved["timings"]["train_s"]
    assert len(saved["history"]) == 2 and 1 <= saved["selected_step"] <= 6


def test_cli_end_to_end_on_stored_zoos(tmp_path, capsys):
    cnn = write_zoo(cnn_zoo(runs=12, checkpoints=2), tmp_path / "cnn")
    inr = write_zoo(inr_zoo(images=30), tmp_path / "inr")
    assert len(load_zoo(cnn)) == 24
    out = tmp_path / "out-cnn"
    argv = [
        "train", "--task", "generalization", "--model", "statnn", "--zoo", str(cnn), "--out", str(out),
        "--epochs", "2", "--batch-size", "8", "--seed", "1", "--no-progress",
    ]
    assert main(argv) == 0
    assert "kendall_tau" in capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    assert r["zoo"] == str(cnn) and r["networks"] == 24 and r["seed"] == 1
    assert main(argv) == 2  # an existing run is not overwritten without --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # finished: re-evaluates and rewrites the same results
    assert json.loads((out / "results.json").read_text())["metrics"] == r["metrics"]
    argv = [
        "train", "--task", "inr-classify", "--model", "np", "--zoo", str(inr), "--out", str(tmp_path / "out-inr"),
        "--steps", "3", "--batch-size", "8", "--no-progress",
    ]
    assert main(argv) == 0
    assert "accuracy" in json.loads((tmp_path / "out-inr" / "results.json").read_text())["metrics"]["test"]
    argv = ["train", "--task", "generalization", "--model", "statnn", "--zoo", str(inr), "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "test_acc" in capsys.readouterr().err


# ----------------------------------------------------------------------------- data parallel
def _torchrun(nproc: int, zoo: Path, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "-m", "wgraph", "train", "--task", "generalization", "--model", "statnn", "--zoo", str(zoo), "--out", str(out),
        "--steps", "6", "--batch-size", "8", "--lr", "3e-3", "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_two_process_ddp_matches_one_process(tmp_path):
    zoo = write_zoo(cnn_zoo(runs=16, checkpoints=2), tmp_path / "zoo")
    cfg = TrainConfig(
        "generalization", "statnn", zoo=str(zoo), out=str(tmp_path / "one"), steps=6, batch_size=8, lr=3e-3,
        progress=False,
    )
    one = train(cfg)
    two = _torchrun(2, zoo, tmp_path / "two")
    assert two["world_size"] == 2 and one["world_size"] == 1
    for part in ("val", "test"):
        for k, v in one["metrics"][part].items():
            assert abs(two["metrics"][part][k] - v) <= 1e-4 * max(1.0, abs(v)), (part, k, v, two["metrics"][part][k])
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tmp_path):
    data = task_data(cnn_zoo(runs=16, checkpoints=2), get_task("generalization"))
    cpu = train(config(tmp_path, "cpu", model=tiny_gnn(tmp_path), steps=6), data=data)
    gpu = train(config(tmp_path, "gpu", model=tiny_gnn(tmp_path), steps=6, device="cuda"), data=data)
    assert gpu["device"].startswith("cuda")
    for k, v in cpu["metrics"]["test"].items():
        assert abs(gpu["metrics"]["test"][k] - v) <= 1e-3 * max(1.0, abs(v)), k


# ----------------------------------------------------------------------------- issue 15: no lost results
def test_a_second_training_into_the_same_directory_is_refused(tmp_path):
    """Two trainings on one --out both reported "wrote results.json" and one result was lost."""
    from wgraph.dirlock import lock_directory

    data = task_data(cnn_zoo(runs=8, checkpoints=2), get_task("generalization"))
    (tmp_path / "run").mkdir()
    held = lock_directory(tmp_path / "run", TrainError, "training")  # the first run, still writing
    try:
        with pytest.raises(TrainError, match="another process is training into this directory"):
            train(config(tmp_path, epochs=1), data=data)
        assert not (tmp_path / "run" / "results.json").exists()
    finally:
        held.close()
    train(config(tmp_path, epochs=1), data=data)  # released: the run goes through
    assert (tmp_path / "run" / "results.json").exists()


def test_learning_curve_is_plotted(tmp_path):
    data = task_data(cnn_zoo(runs=8, checkpoints=2), get_task("generalization"))
    train(config(tmp_path, epochs=3), data=data)
    png = (tmp_path / "run" / "learning_curve.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000


def test_networks_with_nonfinite_weights_are_named_and_skipped(tmp_path, caplog):
    """A NaN network in the zoo gave a finite training loss with the fused kernels, or a raw
    scikit-learn ValueError when it landed in validation or test."""
    zoo = cnn_zoo(runs=12, checkpoints=2)
    name = next(iter(zoo.weights))
    zoo.weights[name][5].view(-1)[0] = float("nan")
    zoo.weights[name][17].view(-1)[1] = float("inf")
    task = get_task("generalization")
    with caplog.at_level("WARNING", logger="wgraph.train"):
        data = task_data(zoo, task, where="zoo Z")
    assert "2 network(s) with NaN or infinite weights: network 5: " in caplog.text and "network 17" in caplog.text
    assert data.graphs.batch_size == 22 and data.dropped == 2 and not data.graphs.has_nonfinite
    with pytest.raises(TaskError, match="network 5"):
        task_data(zoo, task, where="zoo Z", strict=True)
    path = write_zoo(zoo, tmp_path / "zoo")
    r = train(config(tmp_path, zoo=str(path), epochs=2, model=tiny_gnn(tmp_path)))
    assert r["dropped_networks"] == 2, r["metrics"]
    assert all(np.isfinite(r["metrics"][part]["loss"]) for part in ("train", "val", "test")), r["metrics"]


def test_a_non_finite_training_loss_stops_the_run(tmp_path):
    """A diverged model must not train on silently (NaN weights for the rest of the run)."""
    data = task_data(cnn_zoo(runs=8, checkpoints=2), get_task("generalization"))
    data.targets[:] = float("nan")
    config = TrainConfig(task="generalization", model="statnn", out=str(tmp_path / "run"), epochs=2, progress=False)
    with pytest.raises(TrainError, match="step 1: the training loss is nan.*--lr"):
        train(config, data=data)
