r"""MAGEP: polynomial layers equivariant to hidden permutations and scalings (monomial matrices).

MAGEP-NFN (Vo et al. 2024) goes beyond linear equivariant layers by adding polynomial terms built
from *products of consecutive weight matrices*, which transform under the monomial group
``W_i -> M_{i+1} W_i M_i^{-1}`` (see :mod:`wgraph.nn.monomial`) like a single weight matrix.
Two variants live here:

* ``"paper"``: the published layers, term for term (github Fsoft-AIC/MAGEP-NFN,
  ``nfn/layers/equiv_layers.py: HNPSMixerLinear`` and ``nfn/layers/inv_layers.py: HNPSMixerInv``):
  :class:`MAGEPPaper` and the invariant :class:`MAGEPInvariant`, on kernel-free chains
  (:class:`KernelSum`); ``tests/test_magep_paper.py`` checks them against the official formulas.
* ``"wgraph"``: :class:`MAGEP`, an independent derivation (below): the Monomial linear layer plus
  one product term per weight and per bias; kernels are summed inside the products only.

:class:`MAGEP` (wgraph's variant). With the per-channel chain products of
:func:`~wgraph.nn.monomial.chain_products`

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

import dataclasses
import math

import torch
from torch import nn

from .monomial import MonomialLinear, chain_products
from .weight_space import (
    ChainSpec,
    WeightSpace,
    WeightSpaceError,
    as_weight_space,
    check_input,
    mix_channels,
    unflatten_kernel,
)


class MAGEP(MonomialLinear):
    """wgraph's polynomial equivariant layer (module docstring); ``MAGEP(layout, in_channels, out_channels)``.

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


# ----------------------------------------------------------------------------- the published layers
def kernel_free(spec) -> ChainSpec:
    """The chain of ``spec`` with every kernel summed away (the weight space the paper layers read)."""
    s = ChainSpec.of(spec)
    return dataclasses.replace(s, kernels=((),) * s.num_layers)


class KernelSum(nn.Module):
    """``(B, C, o, i, *kernel) -> (B, C, o, i)``: each weight summed over its kernel positions, biases
    unchanged. Kernel positions are never permuted and every neuron scales all of them alike, so the
    sum is equivariant; the paper model's input layer ends with it (the official ``HNPSLinear``
    maps a CNN's weight space onto a kernel-free one the same way, by learned sums)."""

    def forward(self, x) -> WeightSpace:
        x = as_weight_space(x)
        weights = [w.flatten(4).sum(-1) if w.dim() > 4 else w for w in x.weights]
        return WeightSpace(weights, x.biases, kernel_free(x.spec))


def _paper_input(x, spec: ChainSpec, channels: int, who: str) -> WeightSpace:
    x = as_weight_space(x)
    if any(x.spec.kernels):
        raise WeightSpaceError(
            f"{who} reads weight spaces without kernel axes (the published layer's inner network spec); got "
            f"kernels {x.spec.kernels}: sum them first (KernelSum, as the magep paper model's input layer does)"
        )
    return check_input(x, spec, channels, who)


class _Chains:
    r"""The products the paper layers read, per channel, for a kernel-free weight space.

    With neuron-layer indices (``W_i: n_i -> n_{i+1}``, ``β_s = b_{s-1}`` the bias of layer ``s``):
    ``fwd[s] = P(s, 0)``, ``bwd[t] = P(L, t)`` (``P(s, t) = W_{s-1} ⋯ W_t``) and
    ``u[s] = Σ_{t=1}^{s-1} P(s, t) β_t`` (``u[1] = 0``; ``u[s+1] = W_s (u[s] + β_s)``).
    """

    def __init__(self, x: WeightSpace):
        self.W, self.beta = W, beta = x.weights, x.biases
        L = len(W)
        self.fwd = [None, W[0]]
        for s in range(1, L):
            self.fwd.append(W[s] @ self.fwd[s])
        self.bwd = [None] * L
        self.bwd[L - 1] = W[L - 1]
        for t in range(L - 2, -1, -1):
            self.bwd[t] = self.bwd[t + 1] @ W[t]
        self.u = [None, torch.zeros_like(beta[0])]
        for s in range(1, L):
            self.u.append((W[s] @ (self.u[s] + beta[s - 1])[..., None])[..., 0])

    def terms(self, s: int, t: int, Psi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """``[P(s,t), [WW]^{(s,0)}(L,t), [bW]^{(s)}(L,t)]`` on the channel axis (``3C``, ``n_s x n_t``), for
        ``t = s - 1`` or ``t = 0``: ``[WW] = P(s,0) Ψ P(L,t)``, ``[bW] = β_s ψ P(L,t)``."""
        P = self.W[s - 1] if t == s - 1 else self.fwd[s]
        WW = self.fwd[s] @ (Psi @ self.bwd[t])
        bW = self.beta[s - 1][..., None] * (psi @ self.bwd[t])
        return torch.cat([P, WW, bW], 1)

    def traces(self, Psi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """``(B, 2C, L-1)``: ``tr(P(s,0) Ψ_s P(L,s)) = Σ Ψ_s ⊙ P(L,0)ᵀ`` and ``tr(β_s ψ_s P(L,s)) = ψ_s P(L,s) β_s``
        for ``s = 1 .. L-1`` (the published trace invariants, without their ``n_s x n_s`` products)."""
        L = len(self.W)
        tau = torch.einsum("ldqp,bdpq->bdl", Psi, self.fwd[L])
        sig = [(psi[s - 1] @ self.bwd[s] @ self.beta[s - 1][..., None])[..., 0, 0] for s in range(1, L)]
        sig = torch.stack(sig, -1) if sig else tau.new_zeros(tau.shape)
        return torch.cat([tau, sig], 1)


def _init_group(*terms: tuple[torch.Tensor, int]) -> None:
    """The official ``pytorch_default`` init (``set_init_einsum_``): every term adding into one output
    drawn from ``U(±1/sqrt(Σ fan-in))``, the fan-ins of the group's terms summed."""
    bound = 1 / math.sqrt(max(1, sum(fan for _, fan in terms)))
    for p, _ in terms:
        nn.init.uniform_(p, -bound, bound)


def _fixed_psi(count: int, d: int, rows: int, n_out: int) -> torch.Tensor:
    """``count`` per-channel ``rows x n_L`` matrices ``N(0, 1) / (d rows n_L)`` (the official scale)."""
    return torch.randn(count, d, rows, n_out) / (d * rows * n_out)


class MAGEPPaper(nn.Module):
    r"""The published MAGEP-NFN equivariant layer (``HNPSMixerLinear`` of github Fsoft-AIC/MAGEP-NFN,
    ``nfn/layers/equiv_layers.py``), ``C -> E`` channels, on a kernel-free chain (:func:`kernel_free`).

    With the products of :class:`_Chains` and fixed random per-channel ``Ψ`` (``n_0 x n_L``) and ``ψ``
    (``1 x n_L``), one pair per use (buffers; the official layer holds them with ``requires_grad=False``),
    ``X_s^t = [P(s,t), P(s,0) Ψ P(L,t), β_s ψ P(L,t)]`` (``3C`` channels, ``n_s x n_t``) and
    ``u_s = Σ_{t=1}^{s-1} P(s,t) β_t``, the update of weight ``W_{s-1}`` and bias ``β_s`` is (every
    coefficient learned, mixing channels):

    * first layer (``s = 1``): ``W' = Σ_q A[q,k] X_1^0[j,q] + E[k] β_1[j]``,
      ``β' = Σ_q G[q] X_1^0[j,q] + F β_1[j]`` (input positions mixed);
    * middle layers: ``W' = A X_s^{s-1}``, ``β' = Σ_q G[q] X_s^0[j,q] + F [u_s; β_s][j]``;
    * last layer (``s = L``): ``W' = Σ_p A[p,j] X_L^{L-1}[p,k]`` (output positions mixed),
      ``β'[j] = Σ_{p,q} G[p,q,j] X_L^0[p,q] + Σ_p F[p,j] [u_L; β_L][p] + Σ_l T[l,j] τ_l + c[j]``
      with the trace invariants ``τ`` of :meth:`_Chains.traces` (their own fixed ``Ψ_s``, ``ψ_s``).

    A one-layer chain takes the first-layer formulas only (as the official code). Initialisation as
    the official ``pytorch_default``. Parameters (``L >= 2``): ``CE (3 n_0^2 + 4 n_0 + 1 + (L-2)(3 n_0 + 5)
    + 5 n_L^2 + 3 n_0 n_L^2 + 2 (L-1) n_L) + E n_L``. Equivariant to hidden permutations and to the
    scalings the activation allows (``tests/test_magep_paper.py``).
    """

    def __init__(self, spec, in_channels: int, out_channels: int):
        super().__init__()
        self.spec = s = kernel_free(spec)
        self.c_in, self.c_out = d, e = in_channels, out_channels
        L, n0, nL = s.num_layers, s.n_in, s.n_out
        self.register_buffer("Psi_w", _fixed_psi(L, d, n0, nL))  # (s, s-1), s = 1..L
        self.register_buffer("psi_w", _fixed_psi(L, d, 1, nL))
        self.register_buffer("Psi_b", _fixed_psi(L - 1, d, n0, nL))  # (s, 0), s = 2..L
        self.register_buffer("psi_b", _fixed_psi(L - 1, d, 1, nL))
        self.register_buffer("Psi_tr", _fixed_psi(L - 1, d, n0, nL))  # traces, s = 1..L-1
        self.register_buffer("psi_tr", _fixed_psi(L - 1, d, 1, nL))
        p = lambda *shape: nn.Parameter(torch.empty(*shape))  # noqa: E731
        last = L - 1 if L > 1 else None
        self.w_mix, self.b_mix, self.b_lin = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(L):
            if i == 0:
                self.w_mix.append(p(e, 3 * d, n0, n0))
                self.w_from_b = p(e, d, n0)
                _init_group((self.w_mix[0], 3 * d * n0), (self.w_from_b, d))
            elif i == last:
                self.w_mix.append(p(e, 3 * d, nL, nL))
                _init_group((self.w_mix[i], 3 * d * nL))
            else:
                self.w_mix.append(p(e, 3 * d))
                _init_group((self.w_mix[i], 3 * d))
            if i == last:
                self.b_mix.append(p(e, 3 * d, nL, n0, nL))
                self.b_lin.append(p(e, 2 * d, nL, nL))
                self.b_trace, self.b_const = p(e, 2 * d, L - 1, nL), p(e, nL)
                fans = (3 * d * nL * n0, 2 * d * nL, 2 * d * (L - 1), 0)
                _init_group(*zip((self.b_mix[i], self.b_lin[i], self.b_trace, self.b_const), fans))
            else:
                k = 1 if i == 0 else 2  # [u_s; β_s] past the first layer
                self.b_mix.append(p(e, 3 * d, n0))
                self.b_lin.append(p(e, k * d))
                _init_group((self.b_mix[i], 3 * d * n0), (self.b_lin[i], k * d))

    def forward(self, x) -> WeightSpace:
        x = _paper_input(x, self.spec, self.c_in, "MAGEPPaper")
        ch, beta, L = _Chains(x), x.biases, x.num_layers
        out_w, out_b = [], []
        for i in range(L):
            s = i + 1
            X = ch.terms(s, i, self.Psi_w[i], self.psi_w[i])
            if i == 0:
                out_w.append(
                    torch.einsum("edqk,bdjq->bejk", self.w_mix[0], X)
                    + torch.einsum("edk,bdj->bejk", self.w_from_b, beta[0])
                )
                out_b.append(
                    torch.einsum("edq,bdjq->bej", self.b_mix[0], X)
                    + torch.einsum("ed,bdj->bej", self.b_lin[0], beta[0])
                )
                continue
            Y = ch.terms(s, 0, self.Psi_b[i - 1], self.psi_b[i - 1])
            ub = torch.cat([ch.u[s], beta[i]], 1)
            if i < L - 1:
                out_w.append(mix_channels(self.w_mix[i], X))
                out_b.append(
                    torch.einsum("edq,bdjq->bej", self.b_mix[i], Y) + torch.einsum("ed,bdj->bej", self.b_lin[i], ub)
                )
            else:
                out_w.append(torch.einsum("edpj,bdpk->bejk", self.w_mix[i], X))
                tr = ch.traces(self.Psi_tr, self.psi_tr)
                out_b.append(
                    torch.einsum("edpqj,bdpq->bej", self.b_mix[i], Y)
                    + torch.einsum("edpj,bdp->bej", self.b_lin[i], ub)
                    + torch.einsum("edlj,bdl->bej", self.b_trace, tr)
                    + self.b_const
                )
        return WeightSpace(out_w, out_b, self.spec)

    def extra_repr(self) -> str:
        return f"in_channels={self.c_in}, out_channels={self.c_out}, layers={self.spec.num_layers}"


class MAGEPInvariant(nn.Module):
    r"""The published MAGEP-NFN invariant layer (``HNPSMixerInv``, ``nfn/layers/inv_layers.py``):
    ``(B, C)`` weight space ``->`` ``(B, E)``, with *learned* ``Ψ``, ``ψ`` (one pair for the full
    product, one per hidden layer for the traces):

        y = Σ_{p,q} A[p,q] X_L^0[p,q] + Σ_p F[p] [u_L; β_L][p] + Σ_l T[l] τ_l + c

    (``X_L^0 = [P(L,0), P(L,0) Ψ P(L,0), β_L ψ P(L,0)]``, see :class:`MAGEPPaper`; ``A``, ``F``, ``T``
    mix channels too; ``c`` drawn from ``U(0, 1)`` as the official ``tau_weight``). ``out_features``
    is 1: the ``E`` outputs are one feature per channel of the stack.
    """

    out_features = 1

    def __init__(self, spec, in_channels: int, out_channels: int):
        super().__init__()
        self.spec = s = kernel_free(spec)
        self.c_in, self.c_out = d, e = in_channels, out_channels
        L, n0, nL = s.num_layers, s.n_in, s.n_out
        self.Psi, self.psi = nn.Parameter(_fixed_psi(1, d, n0, nL)[0]), nn.Parameter(_fixed_psi(1, d, 1, nL)[0])
        self.Psi_tr, self.psi_tr = nn.Parameter(_fixed_psi(L - 1, d, n0, nL)), nn.Parameter(_fixed_psi(L - 1, d, 1, nL))
        self.mix = nn.Parameter(torch.empty(e, 3 * d, nL, n0))
        self.lin = nn.Parameter(torch.empty(e, 2 * d, nL))
        self.trace = nn.Parameter(torch.empty(e, 2 * d, L - 1))
        self.const = nn.Parameter(torch.rand(e))
        _init_group((self.mix, 3 * d * nL * n0), (self.lin, 2 * d * nL), (self.trace, 2 * d * (L - 1)))

    def forward(self, x) -> torch.Tensor:
        x = _paper_input(x, self.spec, self.c_in, "MAGEPInvariant")
        ch, L = _Chains(x), x.num_layers
        X = ch.terms(L, 0, self.Psi, self.psi)
        ub = torch.cat([ch.u[L], x.biases[-1]], 1)
        tr = ch.traces(self.Psi_tr, self.psi_tr)
        return (
            torch.einsum("edpq,bdpq->be", self.mix, X)
            + torch.einsum("edp,bdp->be", self.lin, ub)
            + torch.einsum("edl,bdl->be", self.trace, tr)
            + self.const
        )
