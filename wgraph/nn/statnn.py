"""StatNN: a baseline that reads only per-tensor weight statistics (Unterthiner et al. 2020,
"Predicting Neural Network Accuracy from Weights").

For every weight and bias tensor of a network (every float entry of its state dict), seven numbers:
mean, variance, and the 0/25/50/75/100 % quantiles (linear interpolation, as ``numpy.percentile``).
The features of a network, ``(7 * tensors,)``, are standardized with statistics fitted on the
training zoo (:meth:`StatNN.fit_normalization`, kept in ``state_dict``) and fed to an MLP.

The features are invariant to every neuron permutation, so the model is too; it sees no structure
beyond one tensor at a time.

Preset keys (``type = "statnn"``): the fields of :class:`~wgraph.nn.configs.StatNNConfig` (``hidden``,
the width of the MLP's hidden layers, 256; ``layers``, 2; ``out_dim``, 1; ``dropout`` after each hidden
layer, 0.0).
"""

from __future__ import annotations

import torch
from torch import nn

from ..graph import Layout, WeightGraph
from ..support import Support
from .configs import StatNNConfig, StatNNConfigError
from .layouts import model_layout

__all__ = ["StatNN", "StatNNConfig", "StatNNConfigError", "STATS", "weight_statistics", "stat_tensors", "from_config"]

#: The statistics, in feature order.
STATS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


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

    def __init__(self, layout, config: dict | StatNNConfig | None = None):
        super().__init__()
        if not isinstance(config, StatNNConfig):  # a parsed preset (its "type" aside) or None
            config = StatNNConfig.from_dict({k: v for k, v in (config or {}).items() if k != "type"})
        self.config = cfg = config
        self.layout = model_layout(layout, "StatNN", error=StatNNConfigError)
        self.names = stat_tensors(self.layout)
        n_in = len(STATS) * len(self.names)
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("feature_std", torch.ones(n_in))
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.ReLU()]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            width = cfg.hidden
        layers.append(nn.Linear(width, cfg.out_dim))
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


def from_config(config: dict, layout) -> StatNN:
    """The StatNN of a parsed ``type = "statnn"`` preset (its builder in
    :data:`~wgraph.nn.presets.PRESET_TYPES`) for ``layout``."""
    return StatNN(layout, config)
