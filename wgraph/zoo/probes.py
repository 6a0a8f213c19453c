r"""Probe features: what each neuron of a network computes on a fixed set of inputs.

For probe inputs :math:`x_1, \dots, x_K` (the same for every network of a zoo) the probe feature
``probe:k`` of neuron :math:`i` of a layer is its pre-activation on :math:`x_k`, the output of the
module that produced the layer (for a convolution, averaged over the spatial positions):

.. math::

    p_{ik} = \operatorname{mean}_{s}\, \big(W_\ell\, h_{\ell-1}(x_k) + b_\ell\big)_{i, s}

and for an input neuron the input itself. The features are equivariant by construction: permuting
a network's hidden neurons (with its weights) permutes their probe values the same way, and scaling
a neuron scales its pre-activation (power 1, :func:`wgraph.layout.feature_power`). They give a model
the function, not only the weights: a cheap, strong signal (neural-graphs, Kofinas et al. 2024).

Networks run in batches with :func:`torch.func.vmap` over :func:`torch.func.functional_call`; a
zoo whose networks differ in a builder argument (``arch["per_network"]``, e.g. the activation) runs
each group with its own module.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ZooError
from ..layout import PROBE_PREFIX


def probe_inputs(zoo, k: int, seed: int = 0) -> torch.Tensor:
    """``k`` fixed probe inputs for the networks of ``zoo``: uniform in [-1, 1] (pixel coordinates of
    an INR, standardized images of a CNN are on that scale), ``(k, *input_shape[1:])``, from ``seed``."""
    if k < 1:
        raise ZooError(f"probes: expected at least 1 probe input, got {k}")
    shape = zoo.arch["input_shape"][1:]
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, *shape, generator=g, dtype=torch.float64) * 2 - 1


def probe_columns(k: int) -> tuple[str, ...]:
    return tuple(f"{PROBE_PREFIX}{i}" for i in range(k))


def _per_neuron(y: torch.Tensor, size: int, where: str) -> torch.Tensor:
    """``(K, ...)`` module output -> ``(K, size)`` per channel (axis 1, mean over spatial axes, or
    the last axis for a linear layer)."""
    if y.dim() >= 3 and y.shape[1] == size:
        return y.flatten(2).mean(-1)
    if y.dim() == 2 and y.shape[1] == size:
        return y
    raise ZooError(f"probe features: the output of {where} has shape {tuple(y.shape)}, not {size} channels")


@torch.no_grad()
def probe_features(zoo, layout, inputs: torch.Tensor, index=None, chunk: int = 256) -> torch.Tensor:
    """``(B, N, K)``: the probe value of every node of ``layout`` (the zoo's graph layout) for
    each network ``index`` of ``zoo`` (all by default) on ``inputs`` ``(K, ...)``."""
    from torch.func import functional_call, vmap

    rows = np.arange(len(zoo)) if index is None else np.asarray(index).reshape(-1)
    out = torch.zeros(len(rows), layout.num_nodes, len(inputs), dtype=torch.float64)
    settings = [(k, col) for k, col in zoo.arch.get("per_network", {}).items()]
    keys = [tuple(zoo.table[col][r].item() for _, col in settings) for r in rows]
    for key in dict.fromkeys(keys):
        where = np.flatnonzero([k == key for k in keys])
        module = zoo.model(int(rows[where[0]])).double().eval()
        names = dict(module.named_modules())
        layers = [(li, layer) for li, layer in enumerate(layout.layers) if layer.kind != "input"]
        missing = [layer.name for _, layer in layers if layer.name not in names]
        if missing:
            raise ZooError(
                f"probe features need every layer of the graph to be a module's output; layers {missing} are not "
                f"modules of {zoo.arch['name']!r}"
            )

        def run(params, x):
            captured = {}
            hooks = [names[layer.name].register_forward_hook(lambda m, a, y, li=li: captured.__setitem__(li, y))
                     for li, layer in layers]
            try:
                functional_call(module, params, (x,))
            finally:
                for h in hooks:
                    h.remove()
            return tuple(captured[li] for li, _ in layers)

        f = vmap(run, in_dims=(0, None))
        for a in range(0, len(where), chunk):
            sel = torch.as_tensor(rows[where[a : a + chunk]])
            params = {k: v[sel].double() for k, v in zoo.weights.items()}
            outs = f(params, inputs.double())
            dest = torch.as_tensor(where[a : a + chunk])
            for (li, layer), y in zip(layers, outs):
                per = torch.stack([_per_neuron(yy, layer.size, f"module {layer.name!r}") for yy in y])  # (G, K, C)
                out[dest, layer.start : layer.stop] = per.transpose(1, 2)
            for layer in layout.layers:
                if layer.kind == "input":
                    per = _per_neuron(inputs.double(), layer.size, "the input")  # (K, C)
                    out[dest, layer.start : layer.stop] = per.t()
    return out
