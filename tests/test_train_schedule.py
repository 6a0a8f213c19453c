"""Trainer options against NFN plateaus and readout collapse: learning-rate warm-up and cosine decay,
gradient clipping (with the pre-clip norm in the history), their exact resume, and the model hooks
``refresh_statistics`` / ``dead_units``, on the tiny zoos of test_tasks."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_tasks import Interrupt, _stop_at, cnn_zoo, config
from torch import nn

from wgraph.cli import build_parser
from wgraph.config import from_args
from wgraph.nn import from_preset
from wgraph.tasks import TrainConfig, get_task, split_groups, task_data, train
from wgraph.tasks import trainer as trainer_module
from wgraph.tasks.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wgraph.tasks.trainer import TrainError, lr_factor


def data_of(runs=16, checkpoints=2):
    return task_data(cnn_zoo(runs=runs, checkpoints=checkpoints), get_task("generalization"))


class HookedModel(nn.Module):
    """StatNN with the two optional hooks; it records every call (mode, gradients, networks seen).

    ``refresh_statistics`` counts itself into a buffer (so the state dict tells how many refreshes
    the model had seen); ``dead_units`` reports the next of ``reports``."""

    def __init__(self, layout, out_dim, reports=()):
        super().__init__()
        self.inner = from_preset("statnn", layout, out_dim=out_dim)
        self.register_buffer("refreshes", torch.zeros((), dtype=torch.int64))
        self.reports = list(reports)
        self.calls = []

    def fit_normalization(self, graphs):
        self.inner.fit_normalization(graphs)

    def forward(self, graphs):
        self.calls.append(("forward", graphs.batch_size, self.training, torch.is_grad_enabled()))
        return self.inner(graphs)

    def refresh_statistics(self, graphs, batch_size):
        self.calls.append(("refresh", graphs, self.training, torch.is_grad_enabled()))
        self.refreshes += 1

    def dead_units(self, graphs, batch_size):
        self.calls.append(("dead", graphs, self.training, torch.is_grad_enabled()))
        return self.reports.pop(0) if self.reports else {"dead": 0, "total": 8}


@pytest.fixture
def hooked(monkeypatch):
    """The models the trainer builds are HookedModels (with ``reports`` if set); ``built`` holds them."""
    built = []

    def build(preset, layout, out_dim):
        built.append(HookedModel(layout, out_dim, build.reports))
        return built[-1]

    build.reports = ()
    build.built = built
    monkeypatch.setattr(trainer_module, "build_model", build)
    return build


def test_lr_rises_during_warmup_then_follows_the_cosine(tmp_path):
    data = data_of(runs=8)  # 12 training networks: a batch of 12 is one step per epoch
    r = train(config(tmp_path, steps=10, batch_size=64, lr=0.01, warmup=0.3, schedule="cosine"), data=data)
    assert r["steps_per_epoch"] == 1
    lrs = [h["lr"] for h in r["history"]]
    # 3 warm-up steps (1/3, 2/3, 1 of lr), then (1 + cos(pi k / 7)) / 2 for k = 0..6
    want = [0.01 / 3, 0.02 / 3, 0.01] + [0.005 * (1 + math.cos(math.pi * k / 7)) for k in range(7)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert lrs[3] == pytest.approx(0.01) and 0 < lrs[-1] < 0.0005  # the peak, then nearly 0 at the end
    flat = train(config(tmp_path, "flat", steps=4, batch_size=64, lr=0.01), data=data)
    assert [h["lr"] for h in flat["history"]] == [0.01] * 4  # the default: exactly lr, as before
    assert [lr_factor(s, 10, 0.0, "constant") for s in range(10)] == [1.0] * 10
    assert lr_factor(0, 10, 0.0, "cosine") == 1.0 and lr_factor(5, 10, 0.0, "cosine") == pytest.approx(0.5)


def test_clipping_bounds_the_applied_gradient_and_history_keeps_the_norm_before(tmp_path, hooked):
    data = data_of(runs=8)
    seen = {}

    def applied_norm(name):
        def hook(step):  # after the optimizer step, the gradients are still those it applied
            grads = [p.grad for p in hooked.built[-1].parameters() if p.grad is not None]
            seen.setdefault(name, []).append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        return hook

    kw = dict(steps=3, batch_size=64, select="last")
    free = train(config(tmp_path, "free", **kw), data=data, on_step=applied_norm("free"))
    clipped = train(config(tmp_path, "clip", clip_grad=1e-3, **kw), data=data, on_step=applied_norm("clip"))
    pre = [h["grad_norm"] for h in clipped["history"]]
    assert all(n <= 1e-3 * (1 + 1e-5) for n in seen["clip"]), seen["clip"]
    assert min(pre) > 0.01, pre  # recorded before clipping: far above the bound
    # unclipped, the recorded norm is the applied one; the first step is the same in both runs
    assert [h["grad_norm"] for h in free["history"]] == pytest.approx(seen["free"], rel=1e-5)
    assert pre[0] == pytest.approx(free["history"][0]["grad_norm"], rel=1e-6)
    assert clipped["metrics"] != free["metrics"]


def test_resume_in_warmup_and_in_cosine_is_exact(tmp_path):
    data = data_of()  # 24 training networks, 3 steps per epoch of 8
    kw = dict(steps=12, warmup=0.5, schedule="cosine", clip_grad=0.05, checkpoint_every=2, lr=3e-3)
    full = train(config(tmp_path, "full", **kw), data=data)
    with pytest.raises(Interrupt):
        train(config(tmp_path, "cut", **kw), data=data, on_step=_stop_at(5))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4  # within the 6 warm-up steps
    with pytest.raises(Interrupt):
        train(config(tmp_path, "cut", resume=True, **kw), data=data, on_step=_stop_at(11))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 10  # in the cosine decay, mid-epoch
    resumed = train(config(tmp_path, "cut", resume=True, **kw), data=data)
    assert resumed["resumed_from_step"] == 10
    assert resumed["history"] == full["history"] and resumed["metrics"] == full["metrics"]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_schedule_or_length_is_refused(tmp_path):
    data = data_of()
    kw = dict(steps=9, warmup=0.2, schedule="cosine", checkpoint_every=2)
    with pytest.raises(Interrupt):
        train(config(tmp_path, "cut", **kw), data=data, on_step=_stop_at(5))
    for change, match in [
        (dict(schedule="constant"), "schedule: 'cosine' -> 'constant'"),
        (dict(warmup=0.1), "warmup: 0.2 -> 0.1"),
        (dict(clip_grad=1.0), "clip_grad: None -> 1.0"),
        (dict(steps=12), "run of 9 steps.*stretched.*now 12 steps"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            train(config(tmp_path, "cut", resume=True, **{**kw, **change}), data=data)
    assert train(config(tmp_path, "cut", resume=True, **kw), data=data)["steps"] == 9


def test_a_checkpoint_from_before_schedules_still_resumes(tmp_path):
    """Format 1: no scheduler state, no total, a config without warmup / schedule / clip_grad."""
    data = data_of()
    kw = dict(steps=9, checkpoint_every=100)  # checkpoints at the epoch ends 3, 6, 9
    full = train(config(tmp_path, "full", **kw), data=data)
    with pytest.raises(Interrupt):
        train(config(tmp_path, "old", **kw), data=data, on_step=_stop_at(4))
    path = tmp_path / "old" / "checkpoint.pt"
    ck = load_checkpoint(path)
    assert ck["format"] == 2 and ck["step"] == 3
    old_config = {k: v for k, v in json.loads(ck["config"]).items() if k not in ("warmup", "schedule", "clip_grad")}
    old = {k: v for k, v in ck.items() if k not in ("scheduler", "total_steps", "epoch_grad_norm")}
    save_checkpoint(path, {**old, "format": 1, "config": json.dumps(old_config)})
    with pytest.raises(CheckpointError, match="schedule: 'constant' -> 'cosine'"):
        train(config(tmp_path, "old", resume=True, schedule="cosine", **kw), data=data)
    resumed = train(config(tmp_path, "old", resume=True, **kw), data=data)
    assert resumed["resumed_from_step"] == 3 and resumed["history"] == full["history"]
    save_checkpoint(path, {**ck, "format": 3})
    with pytest.raises(CheckpointError, match="format 3"):
        train(config(tmp_path, "old", resume=True, **kw), data=data)


@pytest.mark.parametrize("select", ["best-val", "last"])
def test_refresh_before_every_validation_and_dead_units_on_training_networks(tmp_path, hooked, monkeypatch, select):
    monkeypatch.setattr(trainer_module, "DEAD_UNIT_NETWORKS", 5)
    data = data_of()
    split = split_groups(data.groups)
    n_train, n_val = len(split["train"]), len(split["val"])
    r = train(config(tmp_path, steps=9, select=select), data=data)  # 3 epochs of 3 steps
    calls = hooked.built[-1].calls
    kinds = [c[0] if c[0] != "forward" else ("train" if c[2] else f"eval{c[1]}") for c in calls]
    epoch = ["train"] * 3 + ["refresh", f"eval{n_val}", "dead"]
    final = ["refresh"] if select == "last" else []  # a snapshot (best-val) already holds its refresh
    fitted = ["refresh"]  # when the model is fitted to the training zoo, before the first step
    assert kinds == fitted + epoch * 3 + final + [f"eval{n_train}", f"eval{n_val}", f"eval{len(split['test'])}"]
    for kind, arg, training, grad in calls:
        assert (training, grad) == ((True, True) if kind == "forward" and training else (False, False)), kind
        if kind == "refresh":  # all the training networks
            assert torch.equal(arg.nodes, data.graphs[torch.as_tensor(split["train"])].nodes)
        if kind == "dead":  # the first 5 of them
            assert torch.equal(arg.nodes, data.graphs[torch.as_tensor(split["train"][:5])].nodes)
    assert [h["dead_units"] for h in r["history"]] == [0.0] * 3
    # The tested model holds the refresh made before its validation (best-val: that of its epoch)
    refreshes = int(load_file(tmp_path / "run" / "model.safetensors")["refreshes"])
    assert refreshes == 1 + (r["selected_step"] // 3 if select == "best-val" else 4)
    assert r["timings"]["eval_s"] > 0


def test_collapsing_readout_is_recorded_and_warned_twice(tmp_path, hooked, caplog):
    hooked.reports = [{"dead": d, "total": 8} for d in (2, 5, 6, 8, 8)]
    data = data_of(runs=8)
    with caplog.at_level("WARNING", logger="wgraph.train"):
        r = train(config(tmp_path, steps=5, batch_size=64), data=data)
    assert [h["dead_units"] for h in r["history"]] == [0.25, 0.625, 0.75, 1.0, 1.0]
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "wgraph.train" and rec.levelname == "WARNING"]
    assert len(warnings) == 2, warnings  # on crossing one half, and on reaching all
    assert warnings[0].startswith("epoch 2: 5 of 8 readout units (62%) are zero for every training network")
    assert "collapsed" in warnings[0] and "--lr" in warnings[0] and "--warmup" in warnings[0]
    assert warnings[1].startswith("epoch 4: 8 of 8 readout units (100%)") and "no longer depends" in warnings[1]

    hooked.reports = [{"dead": 3}]
    with pytest.raises(TrainError, match="dead_units must return"):
        train(config(tmp_path, "bad", steps=1, batch_size=64), data=data)


def test_options_are_checked_and_on_the_command_line(capsys):
    for bad, match in [
        (dict(warmup=1.0), "warmup"), (dict(clip_grad=0.0), "clip_grad"), (dict(schedule="step"), "schedule")
    ]:
        with pytest.raises(TrainError, match=match):
            TrainConfig("generalization", "statnn", **bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    shown = capsys.readouterr().out
    assert "--warmup" in shown and "--schedule {constant,cosine}" in shown and "--clip-grad" in shown
    argv = ["train", "--task", "generalization", "--model", "statnn", "--zoo", "z", "--warmup", "0.1",
            "--schedule", "cosine", "--clip-grad", "2"]
    cfg = from_args(TrainConfig, build_parser().parse_args(argv))
    assert (cfg.warmup, cfg.schedule, cfg.clip_grad) == (0.1, "cosine", 2.0)
    defaults = from_args(TrainConfig, build_parser().parse_args(argv[:7]))
    assert (defaults.warmup, defaults.schedule, defaults.clip_grad) == (0.0, "constant", None)
