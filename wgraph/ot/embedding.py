r"""A permutation-invariant embedding of a set by sliced optimal transport (a readout for NFNs).

For a set :math:`X = \{x_i\}` with masses :math:`w_i` in :math:`\mathbb{R}^d`, ``L`` slice directions
:math:`\theta_l` and ``M`` reference points :math:`z_m` (learned):

.. math:: \phi(X)_{l,m} = \frac{1}{\sqrt{L M}}\Bigl(F^{-1}_{\theta_l \# X}(q_m) - (\theta_l^\top z)_{(m)}\Bigr),
          \qquad q_m = \frac{m + 1/2}{M},

the quantile function of the projected set minus the sorted projections of the references (the
Monge map from the reference to the set on each slice, "Pooling by Sliced-Wasserstein Embedding",
Naderializadeh et al. 2021). It does not depend on the order of the set, and
:math:`\lVert \phi(X) - \phi(Y) \rVert_2` is the sliced :math:`W_2` distance between :math:`X` and
:math:`Y` for the same slices when both are uniform on ``M`` points (an approximation of it otherwise).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SlicedWassersteinEmbedding(nn.Module):
    """``forward(x (..., n, dim), weights=None (..., n)) -> (..., n_slices * n_references)`` (or
    ``(..., out_dim)`` through a final linear map). ``weights``: nonnegative masses per element
    (normalized per set; a 0/1 mask drops padded elements), uniform by default.

    ``learn_slices``: the directions are parameters (normalized at use) instead of a fixed buffer drawn
    from ``seed``; the reference points are always learned. ``seed = None`` draws the slices and
    the initial references from torch's global generator (as every other layer's initialization).
    """

    def __init__(self, dim: int, n_slices: int = 32, n_references: int = 16, *, out_dim: int | None = None,
                 learn_slices: bool = False, seed: int | None = 0):
        super().__init__()
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        self.reference = nn.Parameter(torch.randn(n_references, dim, generator=gen))
        slices = torch.randn(n_slices, dim, generator=gen)
        if learn_slices:
            self.slices = nn.Parameter(slices)
        else:
            self.register_buffer("slices", slices)
        self.levels: torch.Tensor
        self.register_buffer("levels", (torch.arange(n_references) + 0.5) / n_references, persistent=False)
        self.head = nn.Linear(n_slices * n_references, out_dim) if out_dim else None

    @property
    def out_features(self) -> int:
        return self.head.out_features if self.head is not None else self.slices.shape[0] * self.reference.shape[0]

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        theta = self.slices / self.slices.norm(dim=-1, keepdim=True)
        proj = (x @ theta.T).transpose(-1, -2)  # (..., L, n)
        values, order = proj.sort(dim=-1)
        if weights is None:
            weights = x.new_ones(x.shape[:-1])
        w = (weights / weights.sum(-1, keepdim=True)).unsqueeze(-2).expand_as(proj)
        cum = w.gather(-1, order).cumsum(-1)
        levels = self.levels.to(cum.dtype).expand(*cum.shape[:-1], -1).contiguous()
        idx = torch.searchsorted(cum.contiguous(), levels).clamp_max(proj.shape[-1] - 1)
        quantiles = values.gather(-1, idx)  # (..., L, M)
        ref = (self.reference @ theta.T).T.sort(dim=-1).values  # (L, M)
        emb = ((quantiles - ref) / math.sqrt(ref.numel())).flatten(-2)
        return self.head(emb) if self.head is not None else emb
