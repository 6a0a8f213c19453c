"""Winning-ticket masks (``wgraph train --task ticket-mask``, wgraph.tasks.ticket_mask): equivariant
scores, the metrics against their definitions, a tiny end-to-end run with resume, errors."""

import json

import numpy as np
import pytest
import torch

import wgraph
from wgraph.cli import main
from wgraph.convert.batch import gather
from wgraph.tasks import TaskError, get_task, task_data
from wgraph.tasks.ticket_mask import build_score_model, unflatten
from wgraph.zoo import load_zoo, mlp
from wgraph.zoo.dataset import Zoo
from wgraph.zoo.ticket import generate_ticket_zoo

SIZES = [64, 16, 16, 10]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ticket-task") / "zoo"
    generate_ticket_zoo(out, runs=12, shard_size=6, epochs=6, rounds=2, hidden=(16, 16), keep=0.2, progress=False)
    return out


def graphs_of(n: int = 3):
    sds = []
    for i in range(n):
        torch.manual_seed(i)
        sds.append(mlp(SIZES).double().state_dict())
    weights = {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}
    return wgraph.to_graph_batch(weights, mlp(SIZES).double(), torch.zeros(1, 64).double())


def moved_and_permuted(preset: str):
    """The scores of ``preset`` (float64) as weight graphs: permuted after scoring, and scored
    after permuting the initializations."""
    graphs = graphs_of()
    model = build_score_model(preset, graphs.layout).double()
    model.fit_normalization(graphs)
    model.eval()
    params = tuple((p.name, p.shape) for p in graphs.layout.params)
    perm = wgraph.random_symmetry(graphs, seed=1)
    with torch.no_grad():
        moved = gather(graphs.layout, unflatten(model(graphs), params)).permute(perm)
        permuted = gather(graphs.layout, unflatten(model(graphs.permute(perm)), params))
    return moved, permuted


@pytest.mark.parametrize("preset", ["gnn", "np", "hnp"])
def test_scores_are_permutation_equivariant(preset):
    moved, permuted = moved_and_permuted(preset)
    assert moved.edges[0].std() > 1e-3  # scores that vary over the weights
    for a, b in zip(moved.edges, permuted.edges):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def test_flat_mlp_scores_are_not_equivariant():
    moved, permuted = moved_and_permuted("mlp")
    assert (moved.edges[0] - permuted.edges[0]).abs().max() > 1e-4


def test_metrics_match_their_definitions(zoo_dir):
    zoo = load_zoo(zoo_dir)
    task = get_task("ticket-mask")
    data = task_data(zoo, task)
    task = task.bind(data)
    y = data.targets
    assert y.shape == (12, 2, data.graphs.layout.num_params) and task.keep == 0.2
    exact = task.metrics(torch.where(y[:, 0] > 0, 5.0, -5.0), y)  # the ticket's own mask
    assert exact["overlap"] == 1.0 and exact["accuracy"] == exact["ticket_accuracy"]
    magnitude = task.metrics(y[:, 1].abs(), y)  # the largest initial magnitudes
    assert magnitude["overlap"] == pytest.approx(magnitude["magnitude_overlap"])
    assert magnitude["accuracy"] == magnitude["magnitude_accuracy"]
    table = zoo.table
    init = table["role"] == "init"
    # the task retrains with the zoo's recipe: its IMP tickets beat random masks here as in the zoo
    assert exact["ticket_accuracy"] > exact["random_accuracy"]
    assert table["ticket_acc"][init].mean() > table["random_acc"][init].mean()
    assert task.loss(torch.zeros_like(y[:, 0]), y).item() == pytest.approx(np.log(2))


def test_train_ticket_mask_end_to_end_with_resume(tmp_path, zoo_dir, capsys):
    def argv(out, epochs):
        return ["train", "--task", "ticket-mask", "--model", "gnn", "--zoo", str(zoo_dir), "--out", str(out),
                "--epochs", str(epochs), "--batch-size", "4", "--lr", "3e-3", "--val-fraction", "0.2",
                "--test-fraction", "0.2", "--no-progress"]

    assert main(argv(tmp_path / "full", 6)) == 0
    assert "ticket_accuracy" in capsys.readouterr().out
    r = json.loads((tmp_path / "full" / "results.json").read_text())
    losses = [h["train_loss"] for h in r["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert r["task"] == "ticket-mask" and r["primary_metric"] == "accuracy"
    assert r["split"]["by"] == "run" and r["networks"] == 12
    test = r["metrics"]["test"]
    assert {"accuracy", "overlap", "ticket_accuracy", "magnitude_accuracy", "random_accuracy"} <= test.keys()
    best = max(h["val_accuracy"] for h in r["history"])
    assert r["metrics"]["val"]["accuracy"] == pytest.approx(best, rel=1e-6)
    assert main(argv(tmp_path / "part", 3)) == 0
    assert main([*argv(tmp_path / "part", 6), "--resume"]) == 0
    resumed = json.loads((tmp_path / "part" / "results.json").read_text())
    assert resumed["resumed_from_step"] == r["steps"] // 2
    assert resumed["metrics"]["test"]["accuracy"] == pytest.approx(test["accuracy"], rel=1e-6)


def test_wrong_zoo_and_wrong_model_are_clear_errors(zoo_dir):
    task = get_task("ticket-mask")
    zoo = load_zoo(zoo_dir)
    no_role = Zoo("cnn", zoo.arch, zoo.weights, {k: v for k, v in zoo.table.items() if k != "role"})
    with pytest.raises(TaskError, match="needs a ticket zoo"):
        task_data(no_role, task)
    data = task_data(zoo, task)
    with pytest.raises(TaskError, match="weight-space output.*'statnn'"):
        task.build_model("statnn", data.graphs.layout)
    with pytest.raises(TaskError, match="bind"):
        task.metrics(torch.zeros_like(data.targets[:, 0]), data.targets)
    data.zoo_config = {}
    with pytest.raises(TaskError, match="lacks"):
        task.bind(data)
