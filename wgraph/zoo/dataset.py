"""A model zoo in memory: N networks of one architecture, their stacked weights and a table of
per-network columns (hyperparameters, labels).

The weights are a stacked state dict, ``{name: Tensor (N, *shape)}``, which is exactly what
:func:`wgraph.to_graph_batch` accepts, so :meth:`Zoo.graphs` converts any selection of networks
without a Python loop over them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ZooError
from ..layout import NODE_KINDS
from .archs import ARCHITECTURES


def build_arch(arch: dict[str, Any], where: str = "arch", **overrides) -> nn.Module:
    """The module ``ARCHITECTURES[arch["name"]](**arch["kwargs"], **overrides)``."""
    name = arch.get("name")
    if name not in ARCHITECTURES:
        raise ZooError(f"{where}: unknown architecture {name!r}; known: {sorted(ARCHITECTURES)} (see register_arch)")
    try:
        return ARCHITECTURES[name](**{**arch.get("kwargs", {}), **overrides})
    except (TypeError, ValueError) as e:
        raise ZooError(f"{where}: cannot build {name!r} with {arch.get('kwargs')} {overrides or ''}: {e}") from None


def _as_index(index, n: int) -> np.ndarray:
    """Any of None, int, slice, bool mask, integer sequence / array / tensor -> int64 positions."""
    if index is None:
        return np.arange(n)
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    if isinstance(index, slice):
        return np.arange(n)[index]
    idx = np.asarray(index)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ZooError(f"boolean index of shape {idx.shape} for a zoo of {n} networks")
        return np.flatnonzero(idx)
    if idx.ndim > 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ZooError(f"index must be integers, a boolean mask or a slice, got {idx.dtype} of shape {idx.shape}")
    idx = idx.reshape(-1).astype(np.int64)
    bad = idx[(idx < -n) | (idx >= n)]
    if bad.size:
        raise ZooError(f"index {int(bad[0])} out of range for a zoo of {n} networks")
    return idx % n if n else idx


class Zoo:
    """N networks of one architecture.

    Attributes:
        kind: ``"cnn"``, ``"inr"``, or a user's own kind.
        arch: ``{"name", "kwargs", "input_shape"}`` and optionally ``"per_network"``
            (``{kwarg: column}``: a builder argument that varies per network, e.g. the activation,
            read from that table column by :meth:`model`).
        weights: ``{name: Tensor (N, *shape)}``, the stacked state dicts.
        table: ``{column: numpy array (N,)}``; always ``run`` and ``checkpoint``.
        config: the settings the zoo was generated with (may be empty).
        path: the directory it was loaded from, if any.
    """

    def __init__(self, kind: str, arch: dict, weights: dict[str, torch.Tensor], table: dict[str, np.ndarray],
                 *, config: dict | None = None, path=None):
        self.kind = kind
        self.arch = arch
        self.weights = weights
        self.table = table
        self.config = config or {}
        self.path = path
        sizes = {k: v.shape[0] for k, v in weights.items()} | {k: len(v) for k, v in table.items()}
        if len(set(sizes.values())) > 1:
            raise ZooError(f"weights and table disagree on the number of networks: {sizes}")
        self._n = next(iter(sizes.values()), 0)
        self._template: nn.Module | None = None
        self._levels: dict[str, list] | None = None

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"Zoo(kind={self.kind!r}, arch={self.arch['name']!r}, networks={len(self)}{where})"

    def model(self, index: int | None = None) -> nn.Module:
        """A fresh module of the architecture (random weights). With ``index``, the per-network
        builder arguments (``arch["per_network"]``, e.g. the activation) of that network are used;
        without, the template's (``arch["kwargs"]``), which is what :meth:`graphs` converts with."""
        overrides = {}
        if index is not None:
            i = int(_as_index(index, len(self))[0])
            overrides = {k: self.table[col][i].item() for k, col in self.arch.get("per_network", {}).items()}
        return build_arch(self.arch, **overrides)

    def network(self, index: int) -> nn.Module:
        """Network ``index``: :meth:`model` (with its own per-network arguments) with its stored
        weights loaded (strictly), in eval mode."""
        i = int(_as_index(index, len(self))[0])
        m = self.model(i)
        m.load_state_dict({k: v[i] for k, v in self.weights.items()}, strict=True)
        return m.eval()

    def example_input(self) -> torch.Tensor:
        """A zero tensor of ``arch["input_shape"]`` (what the architecture is traced with)."""
        return torch.zeros(self.arch["input_shape"])

    def subset(self, index) -> Zoo:
        """The networks at ``index`` (int, slice, bool mask or integer array), in that order."""
        idx = _as_index(index, len(self))
        t = torch.from_numpy(idx)
        z = Zoo(self.kind, self.arch, {k: v[t] for k, v in self.weights.items()},
                {k: v[idx] for k, v in self.table.items()}, config=self.config, path=self.path)
        z._template, z._levels = self._template, self._settings()  # a subset keeps the zoo's setting columns
        return z

    def graphs(self, index=None, probes: int = 0):
        """The :class:`~wgraph.graph.WeightGraph` of the selected networks (all by default), built
        by :func:`wgraph.to_graph_batch` from the stacked weights (no loop over networks). The
        layout comes from the template (:meth:`model` without index), converted once per zoo.

        Per-network settings (``arch["per_network"]``) become node features (:func:`with_settings`);
        ``probes = K`` adds each neuron's values on K fixed probe inputs, node features
        ``probe:0`` .. ``probe:K-1`` (:mod:`wgraph.zoo.probes`)."""
        from ..convert import to_graph_batch

        if self._template is None:
            self._template = self.model()
        zoo = self if index is None else self.subset(index)
        graph = to_graph_batch(zoo.weights, self._template, self.example_input())
        graph = with_settings(graph, self._settings(), {k: zoo.table[k] for k in self._settings()})
        if probes:
            from .probes import probe_columns, probe_features, probe_inputs

            values = probe_features(zoo, graph.layout, probe_inputs(self, probes))
            graph = with_columns(graph, probe_columns(probes), values)
        return graph

    def _settings(self) -> dict[str, list]:
        """``{column: values}`` of the per-network builder arguments (``arch["per_network"]``): the
        sorted distinct values of a text column over the *whole* zoo (so that every subset gets
        the same columns), ``[]`` for a numeric one. A subset keeps the values of the zoo it was taken from."""
        if self._levels is None:
            self._levels = {}
            for col in self.arch.get("per_network", {}).values():
                v = np.asarray(self.table[col])
                self._levels[col] = sorted(set(v.tolist())) if v.dtype.kind in "USO" else []
        return self._levels


def with_settings(graph, settings: dict[str, list], table: dict[str, np.ndarray]):
    """``graph`` with its networks' per-network settings (activation, ...) as node features.

    The graph of a zoo is converted from one template, but the networks of a zoo may compute
    different functions for the same weights (a CNN zoo samples each run's activation): that
    must be in the graph, or no model can see it. A text setting ``col`` with values ``settings[col]``
    becomes one-hot columns ``"col=value"``, a numeric one the column ``col`` with its value, on
    every hidden neuron (zero elsewhere). The columns hold no parameter: converting the graph
    back to weights ignores them, and neuron permutations and scalings leave them in place.
    """
    if not settings:
        return graph
    lay = graph.layout
    names, values = [], []
    for col, levels in settings.items():
        v = np.asarray(table[col])
        if levels:
            names += [f"{col}={x}" for x in levels]
            values += [torch.from_numpy(v == x) for x in levels]
        else:
            names.append(col)
            values.append(torch.from_numpy(v.astype(np.float64)))
    hidden = (lay.node_kind == NODE_KINDS.index("hidden")).to(torch.float64)  # (N,)
    per_net = torch.stack(values, 1).to(torch.float64)  # (B, S)
    return with_columns(graph, tuple(names), per_net[:, None, :] * hidden[None, :, None])


def with_columns(graph, names: tuple[str, ...], values: torch.Tensor):
    """``graph`` with node-feature columns ``names`` appended, values ``(B, N, len(names))``
    (columns that hold no parameter: the layout gains their names, its parameters are unchanged)."""
    import dataclasses

    from ..graph import WeightGraph

    lay = graph.layout
    clash = [n for n in names if n in lay.node_features]
    if clash:
        raise ZooError(f"node-feature column(s) {clash} are already in the graph's layout")
    layout = dataclasses.replace(lay, node_features=lay.node_features + tuple(names))
    extra = values.to(device=graph.device, dtype=graph.dtype)
    return WeightGraph(layout, torch.cat([graph.nodes, extra], dim=-1), list(graph.edges), graph.extras)
