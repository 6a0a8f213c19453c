"""The model a preset describes, built for a task.

``build_model(preset, layout, out_dim)`` calls :func:`wgraph.nn.from_preset` with the task's output
size. The NP / HNP stacks and the flat MLP have no input normalization of their own; here they read the weights
standardized per tensor (one mean and std per weight block and per bias layer, fitted on the training
zoo), a scalar affine map per tensor that keeps their permutation equivariance. The graph NFN and
StatNN standardize their own inputs. :func:`fit_normalization` fits whichever the model has.
"""

from __future__ import annotations

import torch
from torch import nn

from ..graph import WeightGraph
from ..nn import InputNormalization, from_preset, load_preset

STANDARDIZED_TYPES = ("np", "hnp", "mlp")


class Standardized(nn.Module):
    """``model`` applied to weights standardized by an :class:`~wgraph.nn.InputNormalization`."""

    def __init__(self, model: nn.Module, layout):
        super().__init__()
        self.norm = InputNormalization([layout])
        self.model = model

    def fit_normalization(self, graphs: WeightGraph) -> None:
        self.norm.fit(graphs)

    def forward(self, graph: WeightGraph):
        nodes, edges = self.norm(graph)
        return self.model(WeightGraph(graph.layout, nodes, edges, graph.extras))


#: Preset types whose model can output one value per parameter (``head = "parameters"``).
PARAMETER_TYPES = ("gnn", "np", "hnp", "monomial", "magep", "mlp")


def parameter_body(preset: str, layout, task: str) -> tuple[nn.Module, str]:
    """The model of ``preset`` with its per-parameter head (weights -> one value per parameter: a
    WeightGraph for the graph NFN, ``{name: tensor}`` otherwise) and the preset's type. The NF-layer
    stacks (:class:`~wgraph.nn.ParamSharingNFN`) and the flat MLP read standardized weights."""
    from ..errors import TaskError
    from ..nn import ParamSharingNFN

    config = load_preset(preset)
    kind = config["type"]
    if kind not in PARAMETER_TYPES:
        raise TaskError(
            f"{task} needs a model with a weight-space output: a preset of type gnn, np, hnp, monomial or magep, "
            f"or 'mlp' (the flat baseline); {preset!r} has type {kind!r}"
        )
    if kind == "gnn":
        return from_preset(preset, layout, head="parameters"), kind
    if kind == "mlp":
        return Standardized(from_preset(preset, layout, head="parameters"), layout), kind
    return Standardized(ParamSharingNFN(layout, config, head="parameters"), layout), kind


def build_model(preset: str, layout, out_dim: int) -> nn.Module:
    model = from_preset(preset, layout, out_dim=out_dim)
    if load_preset(preset)["type"] in STANDARDIZED_TYPES:
        model = Standardized(model, layout)
    return model


def fit_normalization(model: nn.Module, graphs: WeightGraph, batch_size: int = 256) -> None:
    """Fit the model's input statistics on the training graphs, if it has any, then the statistics
    that depend on the model's own features (``refresh_statistics``: the graph NFN's readout
    normalization), which the trainer refreshes again before every evaluation."""
    if hasattr(model, "fit_normalization") and getattr(model, "normalization", True) is not None:
        model.fit_normalization(graphs)
    if hasattr(model, "refresh_statistics"):  # as the trainer calls it: eval mode, no gradients
        was = model.training
        model.eval()
        with torch.no_grad():
            model.refresh_statistics(graphs, batch_size)
        model.train(was)
