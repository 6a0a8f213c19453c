r"""MAGEP: a polynomial layer equivariant to hidden permutations and scalings (monomial matrices).

MAGEP-NFN (Vo et al. 2024) goes beyond linear equivariant layers by adding polynomial terms built
from *products of consecutive weight matrices*, which transform under the monomial group
``W_i -> M_{i+1} W_i M_i^{-1}`` (see :mod:`wgraph.nn.monomial`) like a single weight matrix.
With the per-channel chain products of :func:`~wgraph.nn.monomial.chain_products`

    F_i = rows of [[W_i, b_i],[0,1]] ... [[W_0, b_0],[0,1]]   (n_{i+1} x (n_0 + 1)),  F_i -> M_{i+1} F_i
    G_i = W_{L-1} ... W_i                                    (n_L x n_i),            G_i -> G_i M_i^{-1}

the products ``F_i a G_i`` (``a`` any ``(n_0 + 1) x n_L`` matrix: input and output positions are
fixed) transform exactly as ``W_i``, and ``F_i c`` (``c`` a vector over the ``n_0 + 1`` columns) as
``b_i``. The :class:`MAGEP` layer is the :class:`~wgraph.nn.monomial.MonomialLinear` layer plus

    W'_i[o] += sum_c F_i^c alpha_i[o, c] G_i^c         (degree L + 1 in the weights)
    b'_i[o] += sum_c F_i^c beta_i[o, c]                (degree i + 1: weight-bias products)

with ``o`` an output channel (times kernel position for convolutions, whose kernels are summed
inside the products), ``c`` an input channel. It is equivariant under every permutation of the
hidden neurons and every scaling the activation admits, positive or sign (tests check both in
float64). Extra parameters: ``sum_i C_out C_in (K_i (n_0 + 1) n_L + n_0 + 1)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .monomial import MonomialLinear, chain_products
from .weight_space import WeightSpace, check_input, unflatten_kernel


class MAGEP(MonomialLinear):
    """Polynomial equivariant layer (module docstring); ``MAGEP(layout, in_channels, out_channels)``.

    ``poly_scale`` multiplies the polynomial terms at initialisation (products of many weight
    matrices can be large; keep it small for deep chains).
    """

    def __init__(self, spec, in_channels: int, out_channels: int, io_mixing: bool = False, poly_scale: float = 0.1):
        super().__init__(spec, in_channels, out_channels, io_mixing)
        s, ci, co = self.spec, in_channels, out_channels
        n0, nL = s.n_in, s.n_out
        bound = poly_scale / math.sqrt(ci * (n0 + 1) * nL)
        self.alpha = nn.ParameterList(
            [nn.Parameter(torch.empty(co * k, ci, n0 + 1, nL).uniform_(-bound, bound)) for k in s.kernel_numels]
        )
        bound = poly_scale / math.sqrt(ci * (n0 + 1))
        self.beta = nn.ParameterList(
            [nn.Parameter(torch.empty(co, ci, n0 + 1).uniform_(-bound, bound)) for _ in s.kernel_numels]
        )

    def forward(self, x) -> WeightSpace:
        x = check_input(x, self.spec, self.c_in, "MAGEP")
        ws, bs = self.terms(x)
        F, G = chain_products(x)
        out_w, out_b = [], []
        for i, (w, v) in enumerate(zip(ws, bs)):
            B, C, n, _ = F[i].shape
            # (B, c, n_{i+1}, n_0+1) x (o, c, n_0+1, n_L) -> (B, o, n_{i+1}, c, n_L)
            y = torch.einsum("bcjp,ocpq->bojcq", F[i], self.alpha[i])
            y = y.reshape(B, -1, n, C * G[i].shape[2])  # contract (c, q) with G_i
            poly = torch.matmul(y, G[i].reshape(B, 1, -1, G[i].shape[-1]))  # (B, o, n_{i+1}, n_i)
            out_w.append(w + unflatten_kernel(poly, self.spec.kernels[i]))
            out_b.append(v + torch.einsum("bcjp,ocp->boj", F[i], self.beta[i]))
        return WeightSpace(out_w, out_b, self.spec)

