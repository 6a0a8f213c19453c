r"""NP and HNP layers of "Permutation Equivariant Neural Functionals" (Zhou et al., NeurIPS 2023).

Inputs and outputs are :class:`~wgraph.nn.weight_space.WeightSpace` objects (a ``WeightGraph`` is
accepted as a one-channel input). Notation, for a chain of ``L`` layers (``i = 0 .. L-1``):
``W_i`` of shape ``(C, n_{i+1}, n_i)`` and ``b_i`` of shape ``(C, n_{i+1})``. A convolution kernel
of ``K_i`` entries is folded into the channel axis (``C -> C K_i``, channel-major), as in ``nfn``:
kernel positions are not permuted, so they behave like channels.

Means: ``r_i = mean over rows of W_i`` (shape ``(C K_i, n_i)``, one value per input neuron),
``c_i = mean over columns of W_i`` (``(C K_i, n_{i+1})``, one per output neuron), ``m_i`` the mean
of all of ``W_i``, ``\bar b_i`` the mean of ``b_i``; ``g = [m_0 .. m_{L-1}, \bar b_0 .. \bar b_{L-1}]``.
``A x`` below is a learned matrix acting on the channel axis (shared by all neurons).

**NPLinear** (every neuron space permutable, the input and output ones included):

    W'_i[j,k] = A_i W_i[j,k] + R_i [r_i; c_{i-1}; b_{i-1}][k] + Q_i [c_i; b_i; r_{i+1}][j] + S_i g + e_i
    b'_i[j]   = U_i [c_i; b_i; r_{i+1}][j] + V_i g + f_i

(terms with ``i-1 < 0`` or ``i+1 = L`` are absent).

**HNPLinear** (input and output neurons fixed): as NP in the middle layers, plus terms that use
the identity of the input / output neurons. With ``g' = [g, r_0, c_{L-1}, b_{L-1}]`` flattened over
input/output positions:

* first layer, per row ``j`` (hidden neuron of layer 1): ``W'_0[j,:]`` and ``b'_0[j]`` are one linear
  map of ``[W_0[j,:] (all inputs, all channels); r_1[j]; b_0[j]; W_{L-1}[:, j] if L = 2]`` plus ``g'``;
* last layer, per column ``k``: ``W'_{L-1}[:,k]`` is a linear map of
  ``[W_{L-1}[:, k]; c_{L-2}[k]; W_0[k,:] if L = 2]`` plus ``g'``; ``b'_{L-1} = T g' + t``;
* the row term of layer 1 also sees ``W_0[k, :]``, the column term of layer ``L-2`` also sees
  ``W_{L-1}[:, j]``.

The first-layer map mixes all ``n_0 K_0 C`` entries of a row, so HNP has ``O((n_0 K_0 C)^2)``
parameters (630 M for MNIST MLPs at 32 channels); wgraph computes it with one matrix product on
``W_0`` in place of ``nfn``'s concatenate-and-convolve (see ``docs/param-sharing.md``).

**NPPool / HNPPool** (invariant): means of every weight and bias (NP); HNP keeps the input
positions of ``W_0``, the output positions of ``W_{L-1}`` and ``b_{L-1}``.

Parameters load from ``nfn``'s layers with :func:`wgraph.interop.nfn.load_nfn`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .weight_space import (
    ChainSpec,
    WeightSpace,
    WeightSpaceError,
    as_weight_space,
    check_input,
    flatten_kernel,
    mix_channels,
    unflatten_kernel,
)


class _Terms(nn.Module):
    """Learned matrices for one output tensor: ``out = sum_t M_t @ feat_t + const``.

    ``sizes`` maps term names to input widths. Initialised like one ``nn.Linear`` whose fan-in is the
    sum of all terms' widths.
    """

    def __init__(self, out: int, sizes: dict[str, int]):
        super().__init__()
        self.m = nn.ParameterDict({k: nn.Parameter(torch.empty(out, n)) for k, n in sizes.items() if n > 0})
        self.const = nn.Parameter(torch.empty(out))
        bound = 1 / math.sqrt(max(1, sum(sizes.values())))
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def __getitem__(self, k: str) -> torch.Tensor:
        return self.m[k]


def _apply(M: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """``(out, X) @ (B, X, n) -> (B, out, n)``, as one matrix product over all ``B n`` columns."""
    return F.linear(feat.transpose(1, 2), M).transpose(1, 2)


class _RowColMean(torch.autograd.Function):
    """``(W.mean(-2), W.mean(-1))`` with one fused backward: ``dW = dr / o + dc / i`` broadcast,
    a single full-size tensor instead of one per mean."""

    @staticmethod
    def forward(ctx, W):
        ctx.shape = W.shape
        return W.mean(-2), W.mean(-1)

    @staticmethod
    def backward(ctx, dr, dc):
        o, i = ctx.shape[-2:]
        if dr is None:
            dr = dc.new_zeros(*ctx.shape[:-2], i)
        if dc is None:
            dc = dr.new_zeros(*ctx.shape[:-2], o)
        return (dr / o).unsqueeze(-2) + (dc / i).unsqueeze(-1)


def _row_col_means(W: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    rc = [_RowColMean.apply(w) for w in W]
    return [x[0] for x in rc], [x[1] for x in rc]


class NPLinear(nn.Module):
    """NP layer: equivariant to permutations of every neuron space (see the module docstring).

    ``NPLinear(layout, in_channels, out_channels, io_embed=False)``; ``io_embed`` adds learned
    embeddings to ``W_0``'s inputs, ``W_{L-1}``'s outputs and ``b_{L-1}`` that break the input /
    output symmetry (as ``nfn``'s ``io_embed``).
    Parameters per layer: ``C_in C_out (K_i^2 + K_i (2K_i + 3 + K_{i-1} + K_{i+1} + L + sum K) +
    1 + K_i + K_{i+1} + L + sum K) + C_out (K_i + 1)``.
    """

    def __init__(self, spec, in_channels: int, out_channels: int, io_embed: bool = False):
        super().__init__()
        self.spec = spec = ChainSpec.of(spec)
        self.c_in, self.c_out = in_channels, out_channels
        L, K, ci = spec.num_layers, spec.kernel_numels, in_channels
        G = ci * (sum(K) + L)
        self.w, self.b = nn.ModuleList(), nn.ModuleList()
        for i in range(L):
            row = ci * (K[i] + (K[i - 1] + 1 if i > 0 else 0))
            col = ci * (K[i] + 1 + (K[i + 1] if i < L - 1 else 0))
            self.w.append(_Terms(out_channels * K[i], {"self": ci * K[i], "glob": G, "row": row, "col": col}))
            self.b.append(_Terms(out_channels, {"col": col, "glob": G}))
        self.io_embed = io_embed
        if io_embed:
            self.in_embed = nn.Parameter(torch.randn(ci * K[0], spec.n_in))
            self.out_embed = nn.Parameter(torch.randn(ci * K[-1], spec.n_out))
            self.out_bias_embed = nn.Parameter(torch.randn(ci, spec.n_out))

    def forward(self, x) -> WeightSpace:
        x = check_input(x, self.spec, self.c_in, "NPLinear")
        L = self.spec.num_layers
        W = [flatten_kernel(w) for w in x.weights]
        b = list(x.biases)
        if self.io_embed:
            W[0] = W[0] + self.in_embed[:, None, :]
            W[-1] = W[-1] + self.out_embed[:, :, None]
            b[-1] = b[-1] + self.out_bias_embed
        r, c = _row_col_means(W)
        g = torch.cat([x.mean(-1) for x in r] + [v.mean(-1) for v in b], -1)
        out_w, out_b = [], []
        for i in range(L):
            T, U = self.w[i], self.b[i]
            rows = torch.cat([r[i]] + ([c[i - 1], b[i - 1]] if i > 0 else []), 1)
            cols = torch.cat([c[i], b[i]] + ([r[i + 1]] if i < L - 1 else []), 1)
            row, col, const = _apply(T["row"], rows), _apply(T["col"], cols), F.linear(g, T["glob"], T.const)
            z = mix_channels(T["self"], W[i], row, col, const)
            out_w.append(unflatten_kernel(z, self.spec.kernels[i]))
            out_b.append(_apply(U["col"], cols) + F.linear(g, U["glob"], U.const)[:, :, None])
        return WeightSpace(out_w, out_b, self.spec)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.c_in}, out_channels={self.c_out}, layers={self.spec.num_layers}, "
            f"io_embed={self.io_embed}"
        )


class HNPLinear(nn.Module):
    """HNP layer: equivariant to permutations of the hidden neurons only (module docstring).

    Needs at least two layers. The first layer's map has ``(n_0 K_0)^2 C_in C_out`` parameters.
    """

    def __init__(self, spec, in_channels: int, out_channels: int):
        super().__init__()
        self.spec = spec = ChainSpec.of(spec)
        L, K, ci, co = spec.num_layers, spec.kernel_numels, in_channels, out_channels
        if L < 2:
            raise WeightSpaceError(
                "HNPLinear needs a chain of at least 2 layers (the first and last layers are special)"
            )
        self.c_in, self.c_out = ci, co
        n0, nL = spec.n_in, spec.n_out
        G = ci * (sum(K) + L + K[0] * n0 + K[-1] * nL + nL)
        self.glob_size = G
        self.layers = nn.ModuleList()
        for i in range(L):
            if i == 0:
                small = ci * (K[1] + 1 + (K[1] * spec.sizes[2] if L == 2 else 0))
                # rows 0 .. co K_0 n_0 - 1: W'_0[j, :]; last co rows: b'_0[j]
                t = _Terms(co * K[0] * n0 + co, {"big": ci * K[0] * n0, "small": small, "glob": G})
                self.layers.append(nn.ModuleDict({"w": t}))
            elif i == L - 1:
                cpt = ci * (K[i] * nL + K[i - 1])
                sizes = {"small": cpt, "big": ci * K[0] * n0 if L == 2 else 0, "glob": G}
                terms = {"w": _Terms(co * K[i] * nL, sizes), "b": _Terms(co * nL, {"glob": G})}
                self.layers.append(nn.ModuleDict(terms))
            else:
                row = ci * (K[i] + K[i - 1] + 1)
                col = ci * (K[i] + 1 + K[i + 1] + (K[i + 1] * nL if i == L - 2 else 0))
                wsizes = {"self": ci * K[i], "glob": G, "row": row, "big": ci * K[0] * n0 if i == 1 else 0, "col": col}
                terms = {"w": _Terms(co * K[i], wsizes), "b": _Terms(co, {"col": col, "glob": G})}
                self.layers.append(nn.ModuleDict(terms))

    def forward(self, x) -> WeightSpace:
        x = check_input(x, self.spec, self.c_in, "HNPLinear")
        spec, L, co = self.spec, self.spec.num_layers, self.c_out
        n0, nL = spec.n_in, spec.n_out
        W = [flatten_kernel(w) for w in x.weights]
        b = list(x.biases)
        B = W[0].shape[0]
        r, c = _row_col_means(W)
        g = torch.cat(
            [x.mean(-1) for x in r] + [v.mean(-1) for v in b] + [r[0].flatten(1), c[-1].flatten(1), b[-1].flatten(1)],
            -1,
        )
        n1 = W[0].shape[2]
        # W_0 row by row: (B, n_1, C K_0 n_0), index (channel * n_0 + input)
        W0rows = W[0].permute(0, 2, 1, 3).reshape(B, n1, -1)
        out_w, out_b = [], []
        for i in range(L):
            T = self.layers[i]["w"]
            if i == 0:
                small = [r[1], b[0]] + ([W[1].flatten(1, 2)] if L == 2 else [])
                y = F.linear(W0rows, T["big"])  # (B, n_1, co K_0 n_0 + co)
                y += _apply(T["small"], torch.cat(small, 1)).transpose(1, 2)
                y += F.linear(g, T["glob"], T.const)[:, None, :]
                split = y.shape[-1] - co
                z = y[..., :split].view(B, n1, -1, n0).permute(0, 2, 1, 3)
                out_w.append(unflatten_kernel(z, spec.kernels[0]))
                out_b.append(y[..., split:].transpose(1, 2))
            elif i == L - 1:
                z = _apply(T["small"], torch.cat([W[i].flatten(1, 2), c[i - 1]], 1))  # (B, co K nL, n_{L-1})
                if L == 2:
                    z += F.linear(W0rows, T["big"]).transpose(1, 2)
                z += F.linear(g, T["glob"], T.const)[:, :, None]
                out_w.append(unflatten_kernel(z.view(B, -1, nL, z.shape[-1]), spec.kernels[i]))
                U = self.layers[i]["b"]
                out_b.append(F.linear(g, U["glob"], U.const).view(B, co, nL))
            else:
                rowf = _apply(T["row"], torch.cat([r[i], c[i - 1], b[i - 1]], 1))
                if i == 1:
                    rowf = rowf + F.linear(W0rows, T["big"]).transpose(1, 2)
                cols = torch.cat([c[i], b[i], r[i + 1]] + ([W[-1].flatten(1, 2)] if i == L - 2 else []), 1)
                z = mix_channels(T["self"], W[i], rowf, _apply(T["col"], cols), F.linear(g, T["glob"], T.const))
                out_w.append(unflatten_kernel(z, spec.kernels[i]))
                U = self.layers[i]["b"]
                out_b.append(_apply(U["col"], cols) + F.linear(g, U["glob"], U.const)[:, :, None])
        return WeightSpace(out_w, out_b, spec)

    def extra_repr(self) -> str:
        s = self.spec
        sizes = f"layers={s.num_layers}, n_in={s.n_in}, n_out={s.n_out}"
        return f"in_channels={self.c_in}, out_channels={self.c_out}, {sizes}"


class NPPool(nn.Module):
    """Invariant pooling for NP: ``[mean(W_i) per kernel position, mean(b_i)]`` for every layer.

    Output ``(B, C, sum_i (K_i + 1))``; :attr:`out_features` is that last size.
    """

    def __init__(self, spec):
        super().__init__()
        self.spec = ChainSpec.of(spec)
        self.out_features = sum(k + 1 for k in self.spec.kernel_numels)

    def forward(self, x) -> torch.Tensor:
        x = as_weight_space(x)
        parts = []
        for w, v in x:
            parts += [w.mean((2, 3)).reshape(*w.shape[:2], -1), v.mean(-1, keepdim=True)]
        return torch.cat(parts, -1)


class HNPPool(nn.Module):
    """Invariant pooling for HNP: keeps fixed positions. For ``W_0`` the mean over rows
    (``n_0 K_0`` values), for ``W_{L-1}`` the mean over columns (``n_L K_{L-1}``), ``b_{L-1}`` whole,
    means elsewhere. Output ``(B, C, out_features)``.
    """

    def __init__(self, spec):
        super().__init__()
        self.spec = s = ChainSpec.of(spec)
        K, L = s.kernel_numels, s.num_layers
        n = 0
        for i in range(L):
            n += K[i] * (s.n_in if i == 0 else s.n_out if i == L - 1 else 1)
            n += s.n_out if i == L - 1 else 1
        self.out_features = n

    def forward(self, x) -> torch.Tensor:
        x = as_weight_space(x)
        L, parts = x.num_layers, []
        for i, (w, v) in enumerate(x):
            if i == 0:
                parts.append(w.mean(2).flatten(2))
            elif i == L - 1:
                parts.append(w.mean(3).flatten(2))
            else:
                parts.append(w.mean((2, 3)).reshape(*w.shape[:2], -1))
            parts.append(v if i == L - 1 else v.mean(-1, keepdim=True))
        return torch.cat(parts, -1)


class LearnedPosEmbedding(nn.Module):
    """Learned encodings that break the input/output symmetry (for NP stacks).

    ``W_i += e^W_i`` and ``b_i += e^b_i`` (one vector per layer, broadcast over neurons and kernel);
    ``W_0[:, p] += e^in_p``; ``W_{L-1}[q, :] += e^out_q`` and ``b_{L-1}[q] += e^out_q``.
    """

    def __init__(self, spec, channels: int):
        super().__init__()
        self.spec = s = ChainSpec.of(spec)
        self.channels = channels
        self.layer_w = nn.Parameter(torch.randn(s.num_layers, channels))
        self.layer_b = nn.Parameter(torch.randn(s.num_layers, channels))
        self.inp = nn.Parameter(torch.randn(s.n_in, channels))
        self.out = nn.Parameter(torch.randn(s.n_out, channels))

    def forward(self, x) -> WeightSpace:
        x = check_input(x, self.spec, self.channels, "LearnedPosEmbedding")
        L, ws, bs = x.num_layers, [], []
        for i, (w, v) in enumerate(x):
            k = (None,) * (w.dim() - 4)
            w = w + self.layer_w[i][(None, slice(None), None, None, *k)]
            v = v + self.layer_b[i][None, :, None]
            if i == 0:
                w = w + self.inp.T[(None, slice(None), None, slice(None), *k)]
            if i == L - 1:
                w = w + self.out.T[(None, slice(None), slice(None), None, *k)]
                v = v + self.out.T[None]
            ws.append(w)
            bs.append(v)
        return WeightSpace(ws, bs, x.spec)


class IOSinusoidalEncoding(nn.Module):
    """Fixed sinusoidal encodings of layer index and input/output position, appended as channels.

    For a position ``t`` in ``[-1, 1]``: ``enc(t) = [sin(pi s_m t), cos(pi s_m t) (m = 1..M), t]``
    with ``s = linspace(1, max_freq / 2, M)``. Channel ``C .. C + 2M`` of ``W_i`` holds
    ``enc(layer_i)`` (+ ``enc(input_p)`` on column ``p`` of ``W_0``, + ``enc(output_q)`` on row ``q``
    of ``W_{L-1}`` and of ``b_{L-1}``). Adds ``2M + 1`` channels (:meth:`num_out_chan`).
    """

    def __init__(self, spec, max_freq: float = 10, num_bands: int = 6, enc_layers: bool = True):
        super().__init__()
        self.spec = ChainSpec.of(spec)
        self.max_freq, self.num_bands, self.enc_layers = max_freq, num_bands, enc_layers

    def num_out_chan(self, in_chan: int) -> int:
        return in_chan + 2 * self.num_bands + 1

    def _enc(self, n: int, like: torch.Tensor) -> torch.Tensor:
        t = torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device)[:, None]
        s = torch.linspace(1.0, self.max_freq / 2, self.num_bands, dtype=like.dtype, device=like.device)
        a = math.pi * t * s
        return torch.cat([a.sin(), a.cos(), t], 1)  # (n, 2M + 1)

    def forward(self, x) -> WeightSpace:
        x = as_weight_space(x)
        L, B = x.num_layers, x.batch_size
        w0 = x.weights[0]
        lay = self._enc(L, w0) if self.enc_layers else w0.new_zeros(L, 2 * self.num_bands + 1)
        inp, out = self._enc(self.spec.n_in, w0), self._enc(self.spec.n_out, w0)
        ws, bs = [], []
        for i, (w, v) in enumerate(x):
            k = w.shape[4:]
            e = lay[i][:, None, None].expand(-1, *w.shape[2:4]).clone()  # (D, o, i)
            eb = lay[i][:, None].expand(-1, v.shape[-1]).clone()
            if i == 0:
                e = e + inp.T[:, None, :]
            if i == L - 1:
                e = e + out.T[:, :, None]
                eb = eb + out.T
            e = e[(..., *((None,) * len(k)))].expand(-1, -1, -1, *k)
            ws.append(torch.cat([w, e[None].expand(B, *e.shape)], 1))
            bs.append(torch.cat([v, eb[None].expand(B, *eb.shape)], 1))
        return WeightSpace(ws, bs, x.spec)


class TupleOp(nn.Module):
    """Apply a pointwise module (activation, dropout) to every weight and bias tensor."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, x) -> WeightSpace:
        return as_weight_space(x).map(self.op)
