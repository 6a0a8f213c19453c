"""Names shared by every message-passing backend: aggregators and nonlinearities.

Backends receive these as strings (not callables) so that a fused kernel can implement them.
"""

from __future__ import annotations

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

#: Added under the square root of the ``std`` aggregator (keeps its gradient finite).
std_eps = 1e-6

BLOCK_KINDS = ("dense", "grouped", "identity", "copy")
