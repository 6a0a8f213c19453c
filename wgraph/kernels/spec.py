"""Names shared by every message-passing backend: aggregators and nonlinearities.

Backends receive these as strings (not callables) so that a fused kernel can implement them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Aggregators over the incoming messages of a node. ``std`` is ``sqrt(E[m^2] - E[m]^2 + eps)``.
AGGREGATORS = ("sum", "mean", "max", "min", "std")

#: Pointwise nonlinearities ``phi`` applied to each message before aggregation.
ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": F.tanh,
    "identity": lambda x: x,
}


def apply_act_(z: torch.Tensor, act: str) -> torch.Tensor:
    """``phi(z)``, in place where the activation has an in-place form (ReLU, tanh, SiLU)."""
    if act == "relu":
        return z.relu_()
    if act == "identity":
        return z
    if act == "tanh":
        return z.tanh_()
    if act == "silu":
        return F.silu(z, inplace=True)
    return ACTIVATIONS[act](z)


def act_grad(z: torch.Tensor, g: torch.Tensor, act: str) -> torch.Tensor:
    """``g * phi'(z)`` for the activation named ``act`` (``g`` broadcasts against ``z``)."""
    if act == "relu":
        return torch.ops.aten.threshold_backward(g.expand_as(z), z, 0)
    if act == "identity":
        return g.expand_as(z)
    if act == "tanh":
        t = torch.tanh(z)
        return (1 - t * t) * g
    if act == "silu":
        sg = torch.sigmoid(z)
        return sg * (1 + z * (1 - sg)) * g
    if act == "gelu":  # exact (erf) GELU: Phi(z) + z * pdf(z)
        cdf = 0.5 * (1 + torch.erf(z * 0.7071067811865476))
        pdf = torch.exp(-0.5 * z * z) * 0.3989422804014327
        return (cdf + z * pdf) * g
    raise ValueError(f"no derivative for activation {act!r}; known: {list(ACTIVATIONS)}")


#: Added under the square root of the ``std`` aggregator (keeps its gradient finite).
std_eps = 1e-6

BLOCK_KINDS = ("dense", "grouped", "identity", "copy")
