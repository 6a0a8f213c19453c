"""A zoo of small transformer encoders trained on digits, in the spirit of the Small Transformer Zoo's
MNIST-Transformers (Tran et al., ICLR 2025, Transformer-NFN).

The network (:class:`RowTransformer`, architecture name ``row_transformer``): the 8 rows of a digit
are 8 tokens of 8 pixels, embedded by a ``Linear(8, D)`` plus a learned position table, then
``blocks`` encoder blocks (LayerNorm without parameters, multi-head self-attention with separate
bias-free q/k/v/o projections and ``scaled_dot_product_attention``, LayerNorm, feed-forward
``Linear(D, ffn_mul D)``, ReLU, ``Linear(ffn_mul D, D)``), a final LayerNorm, the mean token and a
``Linear(D, 10)``. ``residual=False`` is the published zoo's block (skip connections commented out:
the attention output space is then permutable, ``P_D``); ``residual=True`` adds the pre-norm
residual connections ``x + attn(norm(x))`` and ``x + ffn(norm(x))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .archs import register_arch


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, e // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, e))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + a if self.residual else a
        f = self.fc2(torch.relu(self.fc1(self.norm2(x))))
        return x + f if self.residual else f


class RowTransformer(nn.Module):
    """Image rows as tokens -> encoder blocks -> mean token -> classes (module docstring); input
    ``(B, 1, rows, cols)`` or ``(B, rows, cols)``."""

    def __init__(self, dim: int = 16, heads: int = 2, blocks: int = 2, ffn_mul: int = 2, rows: int = 8, cols: int = 8,
                 classes: int = 10, residual: bool = False):
        super().__init__()
        self.rows, self.cols = rows, cols
        self.embed = nn.Linear(cols, dim)
        self.pos = nn.Parameter(torch.zeros(rows, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, ffn_mul * dim, residual) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.reshape(x.shape[0], self.rows, self.cols)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


register_arch("row_transformer", RowTransformer)
