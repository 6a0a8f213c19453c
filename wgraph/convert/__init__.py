"""Model → WeightGraph conversion: tracing (:mod:`.trace`, :mod:`.interpret`), per-op rules (the package
:mod:`.rules`, one module per op family), batches (:mod:`.batch`)."""

from __future__ import annotations

from torch import nn

from ..errors import StateDictError
from ..graph import WeightGraph
from .batch import gather
from .rules import supported_ops
from .trace import build_layout, layout_of

__all__ = ["to_graph", "to_graph_batch", "load_into", "layout_of", "build_layout", "gather", "supported_ops"]


def to_graph(
    model: nn.Module, example_input, *, concrete_args: dict | None = None, tracer: str = "auto"
) -> WeightGraph:
    """The WeightGraph (B = 1) of ``model``'s current weights.

    ``example_input`` is a tensor (or tuple of tensors) that ``model`` accepts; it fixes the input
    shapes the model is traced with. ``tracer``: ``"fx"``, ``"export"`` or ``"auto"`` (fx, then
    ``torch.export`` for forwards fx cannot trace, e.g. ``transformers`` models).
    """
    layout = layout_of(model, example_input, concrete_args, tracer)
    return gather(layout, [model.state_dict()])


def to_graph_batch(
    state_dicts, model: nn.Module, example_input, *, concrete_args: dict | None = None, tracer: str = "auto"
) -> WeightGraph:
    """One WeightGraph for B checkpoints of ``model``'s architecture.

    ``state_dicts``: a sequence of state dicts (or modules of that architecture), or a mapping of
    stacked tensors ``{name: (B, *shape)}``. A missing, extra or mis-shaped key raises
    :class:`~wgraph.errors.StateDictError` naming the key, both shapes and the checkpoint index.
    """
    return gather(layout_of(model, example_input, concrete_args, tracer), state_dicts)


def load_into(model: nn.Module, graph: WeightGraph, index: int = 0) -> nn.Module:
    """Write network ``index`` of ``graph`` into ``model`` (in place; returns ``model``)."""
    sd = graph.to_state_dict(index)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise StateDictError(f"graph does not fit {type(model).__name__}: {e}") from None
    return model
