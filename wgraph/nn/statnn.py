"""StatNN: a baseline that reads only per-tensor weight statistics (Unterthiner et al. 2020,
"Predicting Neural Network Accuracy from Weights").

For every weight and bias tensor of a network (every float entry of its state dict), seven numbers:
mean, variance, and the 0/25/50/75/100 % quantiles (linear interpolation, as ``numpy.percentile``).
The features of a network, ``(7 * tensors,)``, are standardized with statistics fitted on the
training zoo (:meth:`StatNN.fit_normalization`, kept in ``state_dict``) and fed to an MLP.

The features are invariant to every neuron permutation, so the model is too; it sees no structure
beyond one tensor at a time.

Preset keys (``type = "statnn"``):

=========== ================================================ =======
key         meaning                                          default
=========== ================================================ =======
hidden      width of the MLP's hidden layers                 256
layers      hidden layers of the MLP                         2
out_dim     outputs                                          1
dropout     dropout after each hidden layer                  0.0
=========== ================================================ =======
"""

from __future__ import annotations

import torch
from torch import nn

from ..graph import Layout, WeightGraph
from .gnn import ConfigError
from ..support import Support

#: The statistics, in feature order.
STATS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULTS = {"hidden": 256, "layers": 2, "out_dim": 1, "dropout": 0.0}


class StatNNConfigError(ConfigError):
    """A bad StatNN configuration (unknown key, wrong value) or a graph it was not built for."""


def _layout(layout) -> Layout:
    if isinstance(layout, WeightGraph):
        return layout.layout
    if isinstance(layout, (list, tuple)) and len(layout) == 1:
        return _layout(layout[0])
    if isinstance(layout, Layout):
        return layout
    raise StatNNConfigError(f"StatNN is built for one architecture: pass one Layout or WeightGraph, got {type(layout).__name__}")


def stat_tensors(layout: Layout) -> list[str]:
    """The state-dict entries StatNN summarizes: every float parameter or buffer (no aliases)."""
    names = []
    for p in layout.params:
        if p.where == "alias" or (p.where == "extra" and p.dtype is not None and "float" not in p.dtype):
            continue
        names.append(p.name)
    return names


def weight_statistics(graph: WeightGraph, names: list[str] | None = None) -> torch.Tensor:
    """``(B, len(names), 7)`` statistics (:data:`STATS`) of each named tensor of each network."""
    names = stat_tensors(graph.layout) if names is None else names
    q = torch.tensor(QUANTILES, dtype=graph.dtype, device=graph.device)
    out = []
    for name in names:
        v = graph.param(name).reshape(graph.batch_size, -1)
        mean = v.mean(dim=1)
        var = v.var(dim=1, unbiased=False)
        quant = torch.quantile(v, q, dim=1).t()  # (B, 5)
        out.append(torch.cat([mean[:, None], var[:, None], quant], dim=1))
    return torch.stack(out, dim=1)


class StatNN(nn.Module):
    """Per-tensor weight statistics (:func:`weight_statistics`) -> standardization -> MLP."""

    def __init__(self, layout, config: dict | None = None):
        super().__init__()
        config = {k: v for k, v in (config or {}).items() if k != "type"}
        for key in config:
            if key not in DEFAULTS:
                raise StatNNConfigError(f"unknown key {key!r} for a 'statnn' model; allowed keys: {sorted(DEFAULTS)}")
        self.config = cfg = {**DEFAULTS, **config}
        for key in ("hidden", "layers", "out_dim"):
            if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
                raise StatNNConfigError(f"{key!r} must be a positive integer, got {cfg[key]!r}")
        if not 0.0 <= float(cfg["dropout"]) < 1.0:
            raise StatNNConfigError(f"'dropout' must be in [0, 1), got {cfg['dropout']!r}")
        self.layout = _layout(layout)
        self.names = stat_tensors(self.layout)
        n_in = len(STATS) * len(self.names)
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("feature_std", torch.ones(n_in))
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(cfg["layers"]):
            layers += [nn.Linear(width, cfg["hidden"]), nn.ReLU()]
            if cfg["dropout"]:
                layers.append(nn.Dropout(float(cfg["dropout"])))
            width = cfg["hidden"]
        layers.append(nn.Linear(width, cfg["out_dim"]))
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def supports(cls, layout: Layout) -> Support:
        """StatNN reads any layout: it summarizes every float tensor of the state dict, whatever the
        architecture."""
        return Support(True)

    def features(self, graph: WeightGraph) -> torch.Tensor:
        """``(B, 7 * tensors)`` raw (unstandardized) features of ``graph``."""
        if graph.layout != self.layout:
            raise StatNNConfigError("this StatNN was built for a different architecture (layout) than the graph's")
        return weight_statistics(graph, self.names).flatten(1)

    @torch.no_grad()
    def fit_normalization(self, graph: WeightGraph) -> None:
        """Standardize each feature with its mean and std over ``graph`` (the training zoo)."""
        f = self.features(graph).double()
        self.feature_mean.copy_(f.mean(dim=0))
        std = f.std(dim=0, unbiased=False)
        self.feature_std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))  # constant features stay put

    def forward(self, graph: WeightGraph) -> torch.Tensor:
        x = (self.features(graph) - self.feature_mean) / self.feature_std
        return self.mlp(x.to(self.mlp[0].weight.dtype))
