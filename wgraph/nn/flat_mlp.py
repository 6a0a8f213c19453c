r"""The flat baseline (preset type ``mlp``): an MLP on a network's parameters concatenated in
state-dict order, :math:`y = \mathrm{MLP}(\mathrm{vec}(W))`, blind to every weight-space symmetry.

``head = "invariant"``: ``(B, out_dim)`` (generalization, classification); ``head = "parameters"``:
one value per parameter, ``{name: (B, *shape)}`` (INR editing). It reads whatever it is given, so
the tasks feed it weights standardized per tensor (:class:`wgraph.tasks.models.Standardized`). The
input size is the parameter count: one model per architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config, option
from ..graph import WeightGraph
from .layouts import model_layout

__all__ = ["FlatMLPConfig", "FlatMLP", "from_config"]


@dataclass
class FlatMLPConfig(Config):
    """``type = "mlp"``: the keys of :class:`FlatMLP`."""

    hidden: int = option(512, "width of the hidden layers", minimum=1)
    layers: int = option(2, "hidden layers", minimum=1)
    head: str = option("invariant", "'invariant': (B, out_dim); 'parameters': one value per parameter",
                       choices=("invariant", "parameters"))
    out_dim: int = option(1, "outputs of the invariant head", minimum=1)
    dropout: float = option(0.0, "dropout after each hidden layer", minimum=0.0, below=1.0)


class FlatMLP(nn.Module):
    """The flattened parameters of a network -> MLP -> ``(B, out_dim)`` or ``{name: (B, *shape)}``."""

    def __init__(self, layout, config: FlatMLPConfig | None = None, **overrides):
        super().__init__()
        cfg = (config or FlatMLPConfig()).replace(**overrides)
        self.config = cfg
        lay = model_layout(layout, "FlatMLP")
        self.shapes = {p.name: p.shape for p in lay.params}
        d = sum(math.prod(s) for s in self.shapes.values())
        widths = [d] + [cfg.hidden] * cfg.layers
        hidden = []
        for a, b in zip(widths, widths[1:]):
            hidden += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(cfg.dropout)] if cfg.dropout else [])
        self.mlp = nn.Sequential(*hidden, nn.Linear(cfg.hidden, d if cfg.head == "parameters" else cfg.out_dim))

    def forward(self, graph: WeightGraph):
        x = torch.cat([graph.param(n).flatten(1) for n in self.shapes], 1)
        y = self.mlp(x)
        if self.config.head == "invariant":
            return y
        parts = y.split([math.prod(s) for s in self.shapes.values()], 1)
        return {n: v.reshape(-1, *s) for (n, s), v in zip(self.shapes.items(), parts)}


def from_config(config: dict, layout) -> FlatMLP:
    """The model of a parsed ``type = "mlp"`` preset for ``layout``."""
    return FlatMLP(layout, FlatMLPConfig.from_dict({k: v for k, v in config.items() if k != "type"}))
