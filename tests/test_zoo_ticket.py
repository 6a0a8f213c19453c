"""The ticket zoo (``wgraph zoo ticket``, wgraph.zoo.ticket): per-layer kept counts, the magnitude
rule against a plain loop, batched training against one network at a time, the stored pairs, resume."""

import math
import warnings

import numpy as np
import pytest
import torch

from wgraph.cli import main
from wgraph.errors import ZooError
from wgraph.zoo import load_zoo, mlp
from wgraph.zoo.data import image_split
from wgraph.zoo.ticket import (
    TicketZooConfig,
    generate_ticket_zoo,
    kept_count,
    magnitude_masks,
    mlp_forward,
    random_masks,
    ticket_masks,
    train_masked,
)

TINY = {"runs": 6, "shard_size": 3, "epochs": 8, "rounds": 2, "hidden": (16, 16), "keep": 0.2}


def stacked(sizes, n: int, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    sds = []
    for i in range(n):
        torch.manual_seed(seed * 100 + i)
        sds.append(mlp(sizes).to(dtype).state_dict())
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ticket") / "zoo"
    generate_ticket_zoo(out, progress=False, **TINY)
    return out


def test_kept_counts_follow_the_schedule_and_end_exactly_at_keep():
    assert [kept_count(1000, 0.1, r, 5) for r in range(6)] == [1000, 631, 398, 251, 158, 100]
    assert kept_count(320, 0.1, 5, 5) == 32 and kept_count(3, 0.1) == 1  # never an empty matrix


def test_magnitude_masks_equal_a_plain_loop_with_ties_to_the_lower_index():
    g = torch.Generator().manual_seed(0)
    w = {"0.weight": torch.randint(-3, 4, (4, 5, 6), generator=g).double(), "0.bias": torch.randn(4, 5)}
    prior = {"0.weight": torch.rand(4, 5, 6, generator=g) < 0.7, "0.bias": torch.ones(4, 5, dtype=torch.bool)}
    got = magnitude_masks(w, 0.3, prior, r=1, rounds=2)
    k = kept_count(30, 0.3, 1, 2)
    for i in range(4):
        flat, allowed = w["0.weight"][i].flatten().tolist(), prior["0.weight"][i].flatten().tolist()
        ranked = sorted((j for j in range(30) if allowed[j]), key=lambda j: (-abs(flat[j]), j))
        want = torch.zeros(30, dtype=torch.bool)
        want[ranked[:k]] = True
        assert torch.equal(got["0.weight"][i].flatten(), want)
    assert got["0.bias"].all()  # biases are never pruned


def test_random_masks_keep_exact_counts_and_differ_by_generator():
    w = stacked([10, 7, 3], 3)
    m = random_masks(w, 0.25, [torch.Generator().manual_seed(s) for s in (0, 1, 0)])
    assert (m["0.weight"].flatten(1).sum(1) == kept_count(70, 0.25)).all()
    assert (m["2.weight"].flatten(1).sum(1) == kept_count(21, 0.25)).all()
    assert torch.equal(m["0.weight"][0], m["0.weight"][2]) and not torch.equal(m["0.weight"][0], m["0.weight"][1])


def test_batched_forward_equals_the_module():
    sizes = [64, 8, 8, 10]
    w = stacked(sizes, 3)
    x = torch.randn(3, 5, 64, dtype=torch.float64)
    out = mlp_forward(w, x)
    for i in range(3):
        net = mlp(sizes).double()
        net.load_state_dict({k: v[i] for k, v in w.items()})
        torch.testing.assert_close(out[i], net(x[i]), rtol=0, atol=1e-12)


def test_batched_masked_training_equals_one_network_at_a_time():
    """Stacked networks train exactly as each alone (float64): no network sees another's gradient."""
    sizes = [64, 8, 8, 10]
    w = stacked(sizes, 3)
    masks = random_masks(w, 0.5, [torch.Generator().manual_seed(s) for s in range(3)])
    recipe = {"dataset": "digits", "seed": 0, "test_fraction": 0.25, "epochs": 1, "batch_size": 32, "lr": 1e-2}
    data = image_split("digits", 0)
    trained, acc = train_masked(w, masks, recipe, [5, 6, 7], data)
    for i in range(3):
        one, a = train_masked({k: v[i : i + 1] for k, v in w.items()}, {k: v[i : i + 1] for k, v in masks.items()},
                              recipe, [5 + i], data)
        for k in w:
            torch.testing.assert_close(trained[k][i], one[k][0], rtol=0, atol=1e-10)
        assert acc[i] == a[0]
    assert (trained["0.weight"][~masks["0.weight"]] == 0).all()  # pruned weights stay out
    assert (trained["0.weight"] != w["0.weight"]).any()
    with torch.no_grad():  # also trains when a metric calls it without gradients
        again, _ = train_masked(w, masks, recipe, [5, 6, 7], data)
    torch.testing.assert_close(again["0.weight"], trained["0.weight"], rtol=0, atol=0)


def test_the_zoo_stores_initializations_and_their_tickets(zoo_dir):
    zoo = load_zoo(zoo_dir)
    assert zoo.kind == "ticket" and len(zoo) == 12 and zoo.arch["name"] == "mlp"
    assert zoo.table["role"].tolist() == ["init", "ticket"] * 6
    rows, masks = ticket_masks(zoo)
    assert rows.tolist() == list(range(0, 12, 2))
    for name, m in masks.items():
        if name.endswith("bias"):
            assert m.all()
            continue
        n = m[0].numel()
        assert (m.flatten(1).sum(1) == round(0.2 * n)).all(), name  # exactly keep, every network and layer
        torch.testing.assert_close(zoo.weights[name][1::2], zoo.weights[name][0::2] * m, rtol=0, atol=0)
    assert (zoo.weights["0.weight"][0::2] != 0).all()  # dense initializations
    t = {c: zoo.table[c][0::2] for c in ("dense_acc", "ticket_acc", "magnitude_acc", "random_acc")}
    assert all(((0 <= v) & (v <= 1)).all() for v in t.values())
    assert t["dense_acc"].mean() > 0.5 and t["ticket_acc"].mean() > t["random_acc"].mean()
    gains = zoo.table["init_gain"][0::2]
    assert ((0.5 <= gains) & (gains <= 2)).all() and len(set(gains.tolist())) == 6
    graphs = zoo.graphs()  # the manifest's "mlp" architecture converts, and the round trip is exact
    for i in (0, 1):
        for k, v in graphs.to_state_dict(i).items():
            assert torch.equal(v, zoo.weights[k][i])
    network = zoo.network(1)  # a ticket row is a runnable (sparse) network
    assert (network[0].weight != 0).sum() == round(0.2 * network[0].weight.numel())


def test_a_lost_shard_is_regenerated_identically(zoo_dir, tmp_path):
    import shutil

    copy = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy)
    before = load_zoo(copy)
    (copy / "shard-00001.safetensors").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = generate_ticket_zoo(copy, progress=False, **TINY)
    assert any("generated again" in str(w.message) for w in caught)
    for k in before.weights:
        assert torch.equal(before.weights[k], after.weights[k])
    assert np.array_equal(before.table["ticket_acc"], after.table["ticket_acc"])


def test_cli_and_clear_errors(tmp_path, capsys):
    assert main(["zoo", "ticket", str(tmp_path / "z"), "--runs", "2", "--epochs", "1", "--rounds", "1",
                 "--hidden", "4", "-q"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 (initialization, ticket) pairs" in out and "ticket" in out
    zoo = load_zoo(tmp_path / "z")
    assert zoo.arch["kwargs"]["sizes"] == [64, 4, 10] and math.isclose(zoo.config["keep"], 0.1)
    with pytest.raises(ZooError, match="keep must be a fraction"):
        TicketZooConfig(keep=1.5)
    with pytest.raises(ZooError, match="different config"):
        generate_ticket_zoo(tmp_path / "z", progress=False, runs=2, epochs=2, rounds=1, hidden=(4,))
    cnn_like = load_zoo(tmp_path / "z")
    cnn_like.kind = "cnn"
    with pytest.raises(ZooError, match="expected a ticket zoo"):
        ticket_masks(cnn_like)
    with pytest.raises(ZooError, match="not initializations"):
        ticket_masks(zoo, [1])
