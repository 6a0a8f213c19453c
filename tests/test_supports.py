"""``Model.supports(layout)``: each model type's own answer to "can this model read this layout"."""

import dataclasses

import pytest
import torch
from torch import nn

import wgraph
from wgraph.nn import GraphNFN, ParamSharingNFN, StatNN, Support, WeightSpaceError, from_preset
from wgraph.zoo import mlp
from wgraph.zoo.archs import resnet_mlp


class Tied(nn.Module):
    """The same Linear used twice: a shared (tied-weight) block."""

    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.mid(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.mid(h)))


def _graph(model, x) -> wgraph.WeightGraph:
    torch.manual_seed(0)
    return wgraph.to_graph(model.eval(), x)


@pytest.fixture(scope="module")
def graphs():
    torch.manual_seed(0)
    return {
        "chain": _graph(mlp((5, 8, 8, 3), nn.ReLU), torch.randn(1, 5)),
        "residual": _graph(resnet_mlp(), torch.randn(1, 64)),
        "tied": _graph(Tied(), torch.randn(1, 3)),
    }


def test_support_is_a_small_frozen_answer():
    assert Support(True) and not Support(False, "why") and Support(True).reason == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Support(True).ok = False


def test_graph_nfn_reads_every_layout(graphs):
    for name in ("chain", "residual", "tied"):
        assert GraphNFN.supports(graphs[name].layout) == Support(True)
        # the answer holds: a model of the layout runs
        g = graphs[name]
        assert from_preset("gnn", g.layout, hidden=4, layers=1)(g).shape == (1, 1)


def test_parameter_sharing_models_read_chains_only(graphs):
    assert ParamSharingNFN.supports(graphs["chain"].layout) == Support(True)
    for name in ("residual", "tied"):
        answer = ParamSharingNFN.supports(graphs[name].layout)
        assert not answer and answer.reason.startswith("this layout is not a chain of layers")
        # the constructor raises the error whose first sentence is the reason
        with pytest.raises(WeightSpaceError) as err:
            from_preset("np", graphs[name].layout)
        assert str(err.value).split(". ")[0] == answer.reason
    assert "'skip:" in ParamSharingNFN.supports(graphs["residual"].layout).reason  # names the residual block
    assert "'shared' block" in ParamSharingNFN.supports(graphs["tied"].layout).reason


def test_statnn_reads_any_layout(graphs):
    for g in graphs.values():
        assert StatNN.supports(g.layout) == Support(True)
        assert StatNN(g.layout, {"hidden": 4, "layers": 1})(g).shape == (1, 1)
