r"""Names shared by every message-passing backend: block kinds, aggregators and nonlinearities.

Backends receive these as strings (not callables) so that a fused kernel can implement them.
:data:`ACTIVATION_TABLE` is the one list of nonlinearities: each entry holds :math:`\phi` and
:math:`g \odot \phi'(z)` as torch computes them, and its position is the code the native C and
Triton kernels branch on (``native.c`` is compiled with ``-DWG_ACT_<NAME>=<position>``; the Triton
kernels compare with the same positions). A kernel declares which of them it implements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

#: Aggregators over the incoming messages of a node. ``std`` is ``sqrt(E[m^2] - E[m]^2 + eps)``.
AGGREGATORS = ("sum", "mean", "max", "min", "std")

#: Block structures (see :func:`wgraph.kernels.message_pass`).
BLOCK_KINDS = ("dense", "grouped", "identity", "copy")

#: Added under the square root of the ``std`` aggregator (keeps its gradient finite).
std_eps = 1e-6


@dataclass(frozen=True)
class Activation:
    r"""A pointwise nonlinearity :math:`\phi` as the backends need it.

    ``grad(z, g)`` is :math:`g \odot \phi'(z)` exactly as torch's autograd forms it, NaN and Inf
    included (ReLU: ``0 if z <= 0 else g``, so a NaN pre-activation passes its gradient on, as
    ``threshold_backward`` does). ``inplace``, where given, computes :math:`\phi(z)` into ``z``.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    inplace: Callable[[torch.Tensor], torch.Tensor] | None = None


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def _tanh_grad(z, g):
    t = torch.tanh(z)
    return (1 - t * t) * g


def _silu_grad(z, g):
    sg = torch.sigmoid(z)
    return sg * (1 + z * (1 - sg)) * g


def _gelu(z: torch.Tensor) -> torch.Tensor:
    r"""Exact (erf) GELU :math:`z\,\Phi(z) = \tfrac12 z\,(1 + \mathrm{erf}(z/\sqrt2))`, written out as the
    native and Triton kernels compute it: :func:`torch.nn.functional.gelu`'s AVX-512 float32 kernel
    returns NaN for :math:`+\infty` (its scalar path returns :math:`+\infty`), so the reference would
    depend on the CPU and the tensor's length."""
    return 0.5 * z * (1 + torch.erf(z * 0.7071067811865476))


def _gelu_grad(z, g):
    r"""Exact (erf) GELU: :math:`\Phi(z) + z\,\varphi(z)`."""
    cdf = 0.5 * (1 + torch.erf(z * 0.7071067811865476))
    pdf = torch.exp(-0.5 * z * z) * 0.3989422804014327
    return (cdf + z * pdf) * g


#: Every nonlinearity, in code order: the position of an entry is its kernel code (append new ones; the
#: native kernels' speed depends on the codes' values, measured with these).
ACTIVATION_TABLE = (
    Activation("identity", _identity, lambda z, g: g.expand_as(z), _identity),
    Activation("relu", F.relu, lambda z, g: torch.ops.aten.threshold_backward(g.expand_as(z), z, 0), torch.relu_),
    Activation("tanh", F.tanh, _tanh_grad, torch.tanh_),
    Activation("silu", F.silu, _silu_grad, lambda z: F.silu(z, inplace=True)),
    Activation("gelu", _gelu, _gelu_grad),
)

_BY_NAME = {a.name: a for a in ACTIVATION_TABLE}

#: Name -> :math:`\phi` of every nonlinearity applied to each message before aggregation.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {a.name: a.fn for a in ACTIVATION_TABLE}


def act_code(name: str) -> int:
    """The code of activation ``name`` in the C and Triton kernels: its position in :data:`ACTIVATION_TABLE`."""
    return ACTIVATION_TABLE.index(_BY_NAME[name])


def apply_act_(z: torch.Tensor, act: str) -> torch.Tensor:
    """``phi(z)``, in place where the activation has an in-place form (ReLU, tanh, SiLU)."""
    a = _BY_NAME[act]
    return a.inplace(z) if a.inplace is not None else a.fn(z)


def act_grad(z: torch.Tensor, g: torch.Tensor, act: str) -> torch.Tensor:
    """``g * phi'(z)`` for the activation named ``act`` (``g`` broadcasts against ``z``)."""
    if act not in _BY_NAME:
        raise ValueError(f"no derivative for activation {act!r}; known: {list(ACTIVATIONS)}")
    return _BY_NAME[act].grad(z, g)
