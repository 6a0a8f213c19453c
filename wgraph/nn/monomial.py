r"""Monomial layers: equivariant to hidden-neuron permutations *and* the scalings the activation allows.

The group (Monomial-NFN, Tran et al. 2024) acts on a chain network by monomial matrices
``M_i = D_i P_i`` per hidden layer (``D_i`` diagonal: positive for ReLU-like activations, ``+-1``
for odd ones such as tanh and sin; ``M_0 = M_L = I``):

    W_i -> M_{i+1} W_i M_i^{-1},        b_i -> M_{i+1} b_i

A linear map that commutes with every such ``D`` cannot mix entries that scale differently, so
the means and broadcasts of NP are gone. :class:`MonomialLinear` (``C_in -> C_out`` channels;
``A``, ``E``, ``F``, ``G`` learned, acting on channels and kernel positions):

    W'_i[j,k]   = A_i W_i[j,k]                                   (every layer)
                + E_0[k] b_0[j]                                  (first layer: input k is fixed)
    b'_i[j]     = F_i b_i[j]  +  sum_k G_0[k] W_0[j,k]   (i = 0)  +  f   (i = L-1: invariant)

``io_mixing=True`` adds the remaining equivariant terms, which mix fixed positions:
``sum_k' H[k,k'] W_0[j,k']`` (first layer), ``sum_q' H'[q,q'] W_{L-1}[q',k]`` and
``sum_q' H''[q,q'] b_{L-1}[q']`` (last layer): ``O((n_0 K_0 C)^2)`` parameters, as HNP's first layer.

Equivariant nonlinearities: ``ReLU`` (positively homogeneous) for the positive group, any odd
function (``tanh``) for the sign group, applied entrywise (:func:`activation_for`).

:class:`MonomialPool` is invariant: per channel, the product of the augmented matrices
``[[W_i, b_i], [0, 1]]`` (kernels summed over positions), ``P = W_{L-1} ... W_0`` of shape
``(n_L, n_0 + 1)``: every ``M_i`` cancels against its inverse. ``log=True`` maps it through
``sign(x) log(1 + |x|)`` to tame its range.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .weight_space import (
    ChainSpec,
    WeightSpace,
    as_weight_space,
    check_input,
    flatten_kernel,
    mix_channels,
    unflatten_kernel,
)


def _param(*shape: int, fan_in: int) -> nn.Parameter:
    bound = 1 / math.sqrt(max(1, fan_in))
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class MonomialLinear(nn.Module):
    """Linear layer equivariant to hidden permutations and scalings (see the module docstring).

    Parameters (``K_i`` kernel sizes, ``C_in``/``C_out`` channels):
    ``C_in C_out (sum_i K_i^2 + 2 K_0 n_0 + L) + C_out n_L`` (``A``, ``E_0``, ``G_0``, ``F``, ``f``);
    ``io_mixing`` adds ``C_in C_out ((K_0 n_0)^2 + (K_{L-1} n_L)^2 + n_L^2)``.
    """

    def __init__(self, spec, in_channels: int, out_channels: int, io_mixing: bool = False):
        super().__init__()
        self.spec = s = ChainSpec.of(spec)
        self.c_in, self.c_out, self.io_mixing = in_channels, out_channels, io_mixing
        ci, co, K, L = in_channels, out_channels, s.kernel_numels, s.num_layers
        n0, nL = s.n_in, s.n_out
        fan_first = ci * K[0] + ci + (ci * K[0] * n0 if io_mixing else 0)
        fans = [ci * K[i] * (1 + (nL if io_mixing and i == L - 1 else 0)) for i in range(L)]
        fans[0] = fan_first
        self.A = nn.ParameterList([_param(co * K[i], ci * K[i], fan_in=fans[i]) for i in range(L)])
        self.E0 = _param(co * K[0], n0, ci, fan_in=fan_first)
        self.F = nn.ParameterList([_param(co, ci, fan_in=ci * (1 + (K[0] * n0 if i == 0 else 0))) for i in range(L)])
        self.G0 = _param(co, ci * K[0], n0, fan_in=ci * (1 + K[0] * n0))
        self.b_const = _param(co, nL, fan_in=ci)
        self.w_const = _param(co * K[0], 1, 1, fan_in=fan_first) if L == 1 else None
        if io_mixing:
            self.H_in = _param(co * K[0] * n0, ci * K[0] * n0, fan_in=fan_first)
            self.H_out = _param(co * K[-1] * nL, ci * K[-1] * nL, fan_in=ci * K[-1] * (nL + 1))
            self.H_bias = _param(co * nL, ci * nL, fan_in=ci * (nL + 1))

    def forward(self, x) -> WeightSpace:
        x = check_input(x, self.spec, self.c_in, type(self).__name__)
        return WeightSpace(*self.terms(x), self.spec)

    def terms(self, x: WeightSpace) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The linear terms as (weights, biases) lists, kernel dims restored."""
        s, L, co = self.spec, self.spec.num_layers, self.c_out
        W = [flatten_kernel(w) for w in x.weights]
        b = x.biases
        B, n0, nL = W[0].shape[0], s.n_in, s.n_out
        out_w, out_b = [], []
        for i in range(L):
            z = mix_channels(self.A[i], W[i])
            if i == 0:
                z = z + torch.einsum("okc,bcj->bojk", self.E0, b[0])
                if self.io_mixing:
                    n1 = W[0].shape[2]
                    rows = W[0].permute(0, 2, 1, 3).reshape(B, n1, -1)
                    z = z + torch.matmul(rows, self.H_in.T).view(B, n1, -1, n0).permute(0, 2, 1, 3)
                if L == 1:
                    z = z + self.w_const
            if i == L - 1 and self.io_mixing:
                cols = W[i].flatten(1, 2)  # (B, C K n_L, n_{L-1})
                z = z + torch.matmul(self.H_out, cols).view(z.shape)
            out_w.append(unflatten_kernel(z, s.kernels[i]))
            v = torch.matmul(self.F[i], b[i])
            if i == 0:
                v = v + torch.einsum("oxk,bxjk->boj", self.G0, W[0])
            if i == L - 1:
                v = v + self.b_const
                if self.io_mixing:
                    v = v + (b[i].flatten(1) @ self.H_bias.T).view(B, co, nL)
            out_b.append(v)
        return out_w, out_b

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.c_in}, out_channels={self.c_out}, layers={self.spec.num_layers}, "
            f"io_mixing={self.io_mixing}"
        )


def chain_products(x: WeightSpace) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward and backward products of the (kernel-summed) weights, per channel.

    ``F[i]`` ``(B, C, n_{i+1}, n_0 + 1)``: rows of ``[[W_i, b_i],[0, 1]] ... [[W_0, b_0],[0, 1]]`` for the
    neurons of layer ``i + 1`` (column ``n_0`` carries the biases); transforms as ``M_{i+1} F_i``.
    ``G[i]`` ``(B, C, n_L, n_i)``: ``W_{L-1} ... W_i`` (``G[L]`` is the identity); transforms as
    ``G_i M_i^{-1}``. ``F[L-1]`` is invariant.
    """
    Ws = [w.flatten(4).sum(-1) if w.dim() > 4 else w for w in x.weights]
    B, C, n0 = Ws[0].shape[0], Ws[0].shape[1], Ws[0].shape[3]
    F = []
    prev = None
    for w, v in zip(Ws, x.biases):
        if prev is None:
            f = torch.cat([w, v[..., None]], -1)
        else:
            f = torch.matmul(w, prev)
            f = torch.cat([f[..., :n0], f[..., n0:] + v[..., None]], -1)
        F.append(f)
        prev = f
    G = [None] * (len(Ws) + 1)
    nL = Ws[-1].shape[2]
    G[-1] = torch.eye(nL, dtype=Ws[0].dtype, device=Ws[0].device).expand(B, C, nL, nL)
    for i in range(len(Ws) - 1, -1, -1):
        G[i] = Ws[i] if i == len(Ws) - 1 else torch.matmul(G[i + 1], Ws[i])
    return F, G


class MonomialPool(nn.Module):
    """Invariant readout: the augmented product chain ``(B, C, n_L (n_0 + 1))`` (module docstring)."""

    def __init__(self, spec, log: bool = True):
        super().__init__()
        self.spec = ChainSpec.of(spec)
        self.log = log
        self.out_features = self.spec.n_out * (self.spec.n_in + 1)

    def forward(self, x) -> torch.Tensor:
        F, _ = chain_products(as_weight_space(x))
        p = F[-1].flatten(2)
        return torch.sign(p) * torch.log1p(p.abs()) if self.log else p


def activation_for(spec) -> nn.Module:
    """The entrywise nonlinearity that commutes with the hidden scaling group of chain ``spec`` (a
    ChainSpec, Layout or WeightGraph):
    ``ReLU`` for ``positive``, ``Tanh`` for ``sign``, ``Identity`` for ``real`` (only linear maps
    commute with every nonzero factor), ``ReLU`` when the hidden layers admit no scaling."""
    s = ChainSpec.of(spec).hidden_scaling
    return {"positive": nn.ReLU(), "sign": nn.Tanh(), "real": nn.Identity()}.get(s, nn.ReLU())
