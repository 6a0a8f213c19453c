"""INR editing (``wgraph train --task inr-edit``, wgraph.tasks.inr_edit): the edits, the batched
functional INR forward, equivariance of the weight deltas, a tiny end-to-end run with resume, errors."""

import json
import math

import numpy as np
import pytest
import torch

import wgraph
from wgraph.cli import main
from wgraph.config import ConfigError
from wgraph.convert.batch import gather
from wgraph.tasks import TaskError, get_task, task_data
from wgraph.tasks.edit_plots import plot_edits
from wgraph.tasks.inr_edit import EDITS, INRRenderer, build_edit_model, edit_images, graph_params
from wgraph.zoo.archs import siren
from wgraph.zoo.dataset import Zoo
from wgraph.zoo.inr import generate_inr_zoo, pixel_coordinates

ARCH = {"name": "siren", "kwargs": {"sizes": [2, 8, 8, 1], "w0": 30.0}, "input_shape": [64, 2]}


def stacked(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` SIRENs of ARCH with their own initializations, stacked, float64."""
    sds = []
    for i in range(n):
        torch.manual_seed(seed * 1000 + i)
        sds.append(siren(**ARCH["kwargs"]).double().state_dict())
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    """A real (tiny) INR zoo: 12 digits SIRENs of width 8, written by the zoo generator."""
    out = tmp_path_factory.mktemp("inr-zoo") / "zoo"
    generate_inr_zoo(out, images=12, steps=30, hidden=8, progress=False)
    return out


# ----------------------------------------------------------------------------- edits
def test_dilate_is_scipy_grey_dilation_and_contrast_is_its_formula():
    from scipy.ndimage import grey_dilation

    x = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = np.stack([grey_dilation(im, size=(3, 3)) for im in x.numpy()])
    torch.testing.assert_close(edit_images(x, "dilate"), torch.from_numpy(want), rtol=0, atol=0)
    torch.testing.assert_close(edit_images(x, "contrast"), ((x - 0.5) * 1.5 + 0.5).clamp(0, 1))
    assert set(EDITS) == {"dilate", "contrast"}
    with pytest.raises(TaskError, match="unknown edit 'blur'.*contrast"):
        edit_images(x, "blur")


# ----------------------------------------------------------------------------- the functional forward
def test_batched_functional_forward_equals_each_module_forward():
    params = stacked(4)
    images = INRRenderer(ARCH)(params)
    coords = pixel_coordinates(8).double()
    assert images.shape == (4, 64)
    for i in range(4):
        m = siren(**ARCH["kwargs"]).double()
        m.load_state_dict({k: v[i] for k, v in params.items()})
        torch.testing.assert_close(images[i], m(coords)[:, 0], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- equivariance
def _model(preset: str, graphs):
    model = build_edit_model(preset, graphs.layout, ARCH).double()
    model.fit_normalization(graphs)
    with torch.no_grad():  # a delta of ordinary size, so that equivariance is tested at full scale
        model.scale.mul_(1 / 0.01)
    return model.eval()


@pytest.mark.parametrize("preset", ["gnn", "np", "hnp"])
def test_delta_is_permutation_equivariant_and_the_edited_image_invariant(preset):
    graphs = wgraph.to_graph_batch(stacked(3), siren(**ARCH["kwargs"]).double(), torch.zeros(64, 2).double())
    model = _model(preset, graphs)
    perm = wgraph.random_symmetry(graphs, seed=3)
    with torch.no_grad():
        delta = gather(graphs.layout, model.delta(graphs))
        delta_p = gather(graphs.layout, model.delta(graphs.permute(perm)))
        images, images_p = model(graphs), model(graphs.permute(perm))
    moved = delta.permute(perm)
    assert delta.edges[1].abs().mean() > 1e-2 * graphs.edges[1].abs().mean()  # a real delta, not (almost) zero
    for a, b in zip(moved.edges, delta_p.edges):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)
    torch.testing.assert_close(moved.nodes, delta_p.nodes, rtol=0, atol=1e-8)
    torch.testing.assert_close(images, images_p, rtol=0, atol=1e-8)
    assert (images - INRRenderer(ARCH)(graph_params(graphs))).abs().max() > 1e-3  # the edit changes the image


def test_flat_mlp_baseline_is_not_equivariant():
    """The same check fails for the baseline that ignores the symmetry (the test above can fail)."""
    graphs = wgraph.to_graph_batch(stacked(3), siren(**ARCH["kwargs"]).double(), torch.zeros(64, 2).double())
    model = _model("mlp", graphs)
    perm = wgraph.random_symmetry(graphs, seed=3)
    with torch.no_grad():
        moved = gather(graphs.layout, model.delta(graphs)).permute(perm)
        delta_p = gather(graphs.layout, model.delta(graphs.permute(perm)))
    assert (moved.edges[1] - delta_p.edges[1]).abs().max() > 1e-4


def test_the_first_edit_is_small():
    """The output layer starts scaled down: every tensor's initial delta is a few percent of the
    tensor (the initial edited INR is almost the input INR)."""
    graphs = wgraph.to_graph_batch(stacked(3), siren(**ARCH["kwargs"]).double(), torch.zeros(64, 2).double())
    params = graph_params(graphs)
    for preset in ("gnn", "np", "hnp", "mlp"):
        model = build_edit_model(preset, graphs.layout, ARCH).double()
        model.fit_normalization(graphs)
        with torch.no_grad():
            for name, d in model.delta(graphs).items():
                assert 0 < d.norm() < 0.05 * params[name].norm(), (preset, name)


# ----------------------------------------------------------------------------- end to end
def test_train_inr_edit_end_to_end_with_resume(tmp_path, zoo_dir, capsys):
    def argv(out, epochs):
        return ["train", "--task", "inr-edit", "--edit", "dilate", "--model", "gnn", "--zoo", str(zoo_dir),
                "--out", str(out), "--epochs", str(epochs), "--batch-size", "4", "--lr", "3e-3",
                "--val-fraction", "0.2", "--test-fraction", "0.2", "--no-progress"]

    assert main(argv(tmp_path / "full", 6)) == 0
    assert "identity_mse" in capsys.readouterr().out
    r = json.loads((tmp_path / "full" / "results.json").read_text())
    losses = [h["train_loss"] for h in r["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    test = r["metrics"]["test"]
    assert test["mse"] < test["identity_mse"] and math.isclose(test["psnr"], test["psnr"])
    assert r["task"] == "inr-edit" and r["config"]["edit"] == "dilate" and r["primary_metric"] == "mse"
    best = min(h["val_mse"] for h in r["history"])  # lower is better: the lowest validation MSE is selected
    assert math.isclose(r["metrics"]["val"]["mse"], best, rel_tol=1e-5)
    # interrupted after 3 epochs, resumed to 6: the same result as the run straight through
    assert main(argv(tmp_path / "part", 3)) == 0
    assert main([*argv(tmp_path / "part", 6), "--resume"]) == 0
    resumed = json.loads((tmp_path / "part" / "results.json").read_text())
    assert resumed["resumed_from_step"] == r["steps"] // 2
    assert resumed["metrics"]["test"]["mse"] == pytest.approx(test["mse"], rel=1e-6)
    png = plot_edits(zoo_dir, {"gnn": tmp_path / "full"}, tmp_path / "edits.png", count=2)
    assert png.stat().st_size > 1000


def test_bad_edit_bad_zoo_and_bad_model_are_clear_errors(tmp_path, zoo_dir, capsys):
    argv = ["train", "--task", "inr-edit", "--model", "gnn", "--zoo", str(zoo_dir), "--out", str(tmp_path / "x"),
            "--no-progress"]
    with pytest.raises(SystemExit):
        main([*argv, "--edit", "blur"])
    assert "invalid choice: 'blur'" in capsys.readouterr().err
    with pytest.raises(TaskError, match="unknown edit 'blur'"):
        get_task("inr-edit").with_edit("blur")
    task = get_task("inr-edit")
    table = {"run": np.arange(3), "checkpoint": np.zeros(3, int), "image": np.arange(3)}
    cnn_like = Zoo("cnn", ARCH, stacked(3), table)
    with pytest.raises(TaskError, match="needs an INR zoo"):
        task_data(cnn_like, task)
    no_image = Zoo("cnn", ARCH, stacked(3), {"run": np.arange(3), "checkpoint": np.zeros(3, int)})
    with pytest.raises(TaskError, match="'image'.*inr-edit an INR zoo"):
        task_data(no_image, task)
    graphs = wgraph.to_graph_batch(stacked(2), siren(**ARCH["kwargs"]).double(), torch.zeros(64, 2).double())
    with pytest.raises(TaskError, match="weight-space output.*'statnn'"):
        build_edit_model("statnn", graphs.layout, ARCH)
    preset = tmp_path / "small-mlp.toml"
    preset.write_text('type = "mlp"\nhidden = 16\nlayers = 1\n')
    assert build_edit_model(str(preset), graphs.layout, ARCH).body.model.mlp[0].out_features == 16
    preset.write_text('type = "mlp"\nwidth = 16\n')
    with pytest.raises(ConfigError, match="unknown key 'width'"):
        build_edit_model(str(preset), graphs.layout, ARCH)
    with pytest.raises(TaskError, match="architecture"):
        get_task("inr-edit").build_model("gnn", graphs.layout, None)
