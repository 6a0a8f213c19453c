r"""Tree-sliced Wasserstein distances (TSW-SL, Db-TSW) and the sliced Wasserstein baseline.

Measures are :math:`\mu = \sum_i a_i \delta_{x_i}` and :math:`\nu = \sum_j b_j \delta_{y_j}` in
:math:`\mathbb{R}^d` (masses normalized to sum to 1).

**Splitting.** On a tree of ``k`` lines (:mod:`wgraph.ot.trees`), a point :math:`y` of mass
:math:`a` sends :math:`\alpha_l(y)\,a` to its projection :math:`t_l(y)` on line :math:`l`:
``split="uniform"``: :math:`\alpha_l = 1/k` (TSW-SL); ``split="distance"``:
:math:`\alpha(y) = \mathrm{softmax}_l(-\delta\,\mathrm{dist}(y, \mathrm{line}_l))` (Db-TSW), which
makes the distance invariant to rotations and translations applied to the data and the trees together.

**Closed form.** On a tree metric, :math:`W_1(\mu, \nu) = \int_T |\mu(\Gamma(e)) - \nu(\Gamma(e))|\,de`
where :math:`\Gamma(e)` is the subtree below the point :math:`e`. Each line :math:`l` is rooted at its
coordinate 0 and carries, besides its own split masses, the net mass of the lines below it at the
coordinate :math:`c_l` where the next line starts. With :math:`d` the net signed masses
(:math:`\mu` minus :math:`\nu`) on a line sorted by coordinate :math:`u_0 \le \dots \le u_m` (0
included), the line contributes

.. math:: \sum_i (u_{i+1} - u_i)\,\bigl|F_i\bigr|, \qquad
          F_i = \sum_{j \le i} d_j \text{ if } u_{i+1} \le 0, \quad F_i = \sum_{j > i} d_j \text{ otherwise},

and :math:`\mathrm{TSW}(\mu, \nu) = \frac{1}{L} \sum_{\text{trees}} \sum_{\text{lines}}` of it:
sorts and cumulative sums, :math:`O(L k n \log n + L k d n)`. One line per tree (``n_lines=1``) is
the sliced Wasserstein-1 distance. The official code's ``p > 1`` (a Sobolev-type transport, not
:math:`W_p`) is not offered.
"""

from __future__ import annotations

import torch

from ..errors import WgraphError
from .trees import TreeSystem, sample_trees

SPLITS = ("distance", "uniform")


def _masses(w: torch.Tensor | None, x: torch.Tensor, name: str) -> torch.Tensor:
    """Nonnegative masses normalized to sum 1 (uniform if ``w`` is None)."""
    if x.dim() != 2:
        raise WgraphError(f"support points must be (n, d), got {tuple(x.shape)}")
    if w is None:
        return x.new_full((x.shape[0],), 1.0 / x.shape[0])
    if w.shape != (x.shape[0],):
        raise WgraphError(f"masses {name} must have shape ({x.shape[0]},), got {tuple(w.shape)}")
    return w / w.sum()


def split_masses(trees: TreeSystem, x: torch.Tensor, a: torch.Tensor, split: str = "distance",
                 delta: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(coordinates, masses)``, both ``(L, k, n)``: where each point of mass ``a`` lands on each
    line and the mass :math:`\alpha_l(y)\,a` it sends there (see the module docstring)."""
    if split not in SPLITS:
        raise WgraphError(f"split {split!r}: expected one of {SPLITS}")
    t, dist = trees.project(x)
    if split == "uniform":
        return t, a.expand_as(t) / trees.n_lines
    return t, torch.softmax(-delta * dist, dim=1) * a


def line_transport(coords: torch.Tensor, masses: torch.Tensor, attach: torch.Tensor) -> torch.Tensor:
    r"""``(L,)`` tree :math:`W_1` from net signed masses ``(L, k, n)`` at ``coords`` on each line, with
    line :math:`l + 1` starting at coordinate ``attach[:, l]`` of line :math:`l` (see the module docstring)."""
    net = masses.sum(-1)  # (L, k)
    below = net.flip(-1).cumsum(-1).flip(-1) - net  # mass of the lines after l, hanging at attach
    zero = torch.zeros_like(attach)
    pos = torch.cat([coords, attach[..., None], zero[..., None]], dim=-1)
    mass = torch.cat([masses, below[..., None], zero[..., None]], dim=-1)
    pos, order = pos.sort(dim=-1)
    prefix = mass.gather(-1, order).cumsum(-1)[..., :-1]
    total = mass.sum(-1, keepdim=True)
    left = (pos[..., 1:] + pos[..., :-1]) < 0  # the interval lies left of the line's root
    flow = torch.where(left, prefix, total - prefix)
    return ((pos[..., 1:] - pos[..., :-1]) * flow.abs()).sum(dim=(-1, -2))


def tree_wasserstein(x: torch.Tensor, y: torch.Tensor, trees: TreeSystem, a: torch.Tensor | None = None,
                     b: torch.Tensor | None = None, *, split: str = "distance", delta: float = 2.0) -> torch.Tensor:
    """``(L,)``: the exact Wasserstein-1 distance on each tree of ``trees`` between the split measures."""
    a, b = _masses(a, x, "a"), _masses(b, y, "b")
    tx, mx = split_masses(trees, x, a, split, delta)
    ty, my = split_masses(trees, y, b, split, delta)
    return line_transport(torch.cat([tx, ty], -1), torch.cat([mx, -my], -1), trees.attach)


def tree_sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    n_trees: int = 64,
    n_lines: int = 4,
    kind: str = "concurrent",
    split: str = "distance",
    delta: float = 2.0,
    std: float = 0.1,
    offset: float = 1.0,
    orthogonal: bool = False,
    trees: TreeSystem | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The tree-sliced Wasserstein distance between :math:`\sum_i a_i \delta_{x_i}` and
    :math:`\sum_j b_j \delta_{y_j}` (``x (n, d)``, ``y (m, d)``; uniform masses by default):
    the mean over trees of :func:`tree_wasserstein`. Differentiable in ``x``, ``y``, ``a``, ``b``.

    ``kind="concurrent", split="distance"`` is Db-TSW; ``kind="chain", split="uniform"`` is TSW-SL.
    Without ``trees``, draws ``n_trees`` systems of ``n_lines`` lines with :func:`sample_trees`
    (the root around the mean of both measures, spread ``std``; chain offsets in ``±offset``) from
    ``generator``. Given ``trees`` (a fixed :class:`TreeSystem`), the result is deterministic and a
    metric between measures: symmetric, zero on equal measures, with the triangle inequality.
    """
    if trees is None:
        a_, b_ = _masses(a, x, "a"), _masses(b, y, "b")
        center = ((a_ @ x + b_ @ y) / 2).detach()
        trees = sample_trees(n_trees, n_lines, x.shape[1], kind=kind, center=center, std=std, offset=offset,
                             orthogonal=orthogonal, generator=generator, dtype=x.dtype, device=x.device)
    elif trees.dim != x.shape[1]:
        raise WgraphError(f"trees live in dimension {trees.dim}, the points in {x.shape[1]}")
    return tree_wasserstein(x, y, trees, a, b, split=split, delta=delta).mean()


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: float = 1) -> torch.Tensor:
    r"""``(L,)``: :math:`W_p^p` between the 1-d measures :math:`\sum_i a_i \delta_{u_{l,i}}` and
    :math:`\sum_j b_j \delta_{v_{l,j}}` for every row ``l`` of ``u (L, n)``, ``v (L, m)``:
    :math:`\int_0^1 |F^{-1}(q) - G^{-1}(q)|^p\,dq` over the merged quantile levels."""
    us, iu = u.sort(-1)
    vs, iv = v.sort(-1)
    cu, cv = a[iu].cumsum(-1), b[iv].cumsum(-1)
    q, _ = torch.cat([cu, cv], -1).sort(-1)
    dq = torch.diff(q, dim=-1, prepend=q.new_zeros(q.shape[0], 1))
    qu = us.gather(-1, torch.searchsorted(cu.contiguous(), q).clamp_max(u.shape[-1] - 1))
    qv = vs.gather(-1, torch.searchsorted(cv.contiguous(), q).clamp_max(v.shape[-1] - 1))
    return (dq * (qu - qv).abs() ** p).sum(-1)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    n_projections: int = 100,
    p: float = 1,
    directions: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The sliced Wasserstein distance :math:`\bigl(\frac{1}{L} \sum_l W_p^p(\theta_l \# \mu,
    \theta_l \# \nu)\bigr)^{1/p}`, with ``directions (L, d)`` (unit rows) or ``n_projections`` drawn
    uniformly on the sphere from ``generator``. Same definition as POT's
    ``ot.sliced_wasserstein_distance``, in torch (differentiable, any device)."""
    a, b = _masses(a, x, "a"), _masses(b, y, "b")
    if directions is None:
        g = torch.randn(n_projections, x.shape[1], generator=generator, dtype=x.dtype).to(x.device)
        directions = g / g.norm(dim=-1, keepdim=True)
    return wasserstein_1d(directions @ x.T, directions @ y.T, a, b, p).mean() ** (1 / p)
