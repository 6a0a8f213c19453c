r"""Systems of lines ("trees") for tree-sliced Wasserstein distances, and their sampler.

A tree system of ``k`` lines in :math:`\mathbb{R}^d`: line :math:`l` is
:math:`\{x_l + t\,\theta_l : t \in \mathbb{R}\}` with a unit direction :math:`\theta_l`, and
:math:`t` is the line's coordinate (its origin :math:`x_l` at :math:`t = 0`). The lines form a tree
(a metric graph whose distance is the length of the path along the lines):

- **chain** (TSW-SL, Tran et al. 2024, Alg. 1): line :math:`l + 1` starts on line :math:`l`,
  :math:`x_{l+1} = x_l + c_l\,\theta_l` with an offset :math:`c_l \sim U(-s, s)`;
- **concurrent** (Db-TSW, Tran et al., ICLR 2025): every line goes through one root
  :math:`r \sim N(\bar{x}, \sigma^2 I)` (:math:`\bar{x}` the data mean), :math:`c_l = 0`.

Both are rooted at :math:`x_1` (coordinate 0 of line 1), and line :math:`l + 1` hangs below the
point :math:`c_l` of line :math:`l`. A fixed :class:`TreeSystem` gives a deterministic distance (a
metric, with the triangle inequality); :func:`sample_trees` draws ``L`` of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import WgraphError

TREE_KINDS = ("concurrent", "chain")


@dataclass(frozen=True)
class TreeSystem:
    r"""``L`` trees of ``k`` lines in :math:`\mathbb{R}^d`.

    ``origins (L, k, d)``: the point at coordinate 0 of every line; ``directions (L, k, d)``: unit
    vectors; ``attach (L, k)``: the coordinate on line ``l`` where line ``l + 1`` starts (0 for a
    concurrent system and for the last line). ``kind`` is one of :data:`TREE_KINDS`.
    """

    origins: torch.Tensor
    directions: torch.Tensor
    attach: torch.Tensor
    kind: str = "concurrent"

    def __post_init__(self):
        L, k, d = self.origins.shape
        if self.directions.shape != (L, k, d) or self.attach.shape != (L, k):
            raise WgraphError(
                f"tree system: origins {tuple(self.origins.shape)}, directions {tuple(self.directions.shape)} "
                f"and attach {tuple(self.attach.shape)} do not fit (expected (L, k, d), (L, k, d), (L, k))"
            )
        if self.kind not in TREE_KINDS:
            raise WgraphError(f"tree kind {self.kind!r}: expected one of {TREE_KINDS}")

    @property
    def n_trees(self) -> int:
        return self.origins.shape[0]

    @property
    def n_lines(self) -> int:
        return self.origins.shape[1]

    @property
    def dim(self) -> int:
        return self.origins.shape[2]

    def __len__(self) -> int:
        return self.n_trees

    def __getitem__(self, index) -> TreeSystem:
        """The trees ``index`` (an int keeps a tree axis of length 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return TreeSystem(self.origins[index], self.directions[index], self.attach[index], self.kind)

    def to(self, *args, **kwargs) -> TreeSystem:
        return TreeSystem(
            self.origins.to(*args, **kwargs), self.directions.to(*args, **kwargs),
            self.attach.to(*args, **kwargs), self.kind,
        )

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(coordinates, distances)``, both ``(L, k, n)``: the coordinate of each point's projection
        on each line, :math:`t_l(y) = \langle y - x_l, \theta_l \rangle`, and the point's distance
        to the line, :math:`\sqrt{\lVert y - x_l \rVert^2 - t_l(y)^2}`.

        Both come from products with the directions and the origins, taken relative to the mean
        origin :math:`c` (to keep the squares small): :math:`O(L k d n)` time, no ``(L, k, n, d)`` tensor."""
        c = self.origins.mean(dim=(0, 1))
        u, v = x - c, self.origins - c  # (n, d), (L, k, d)
        t = torch.einsum("lkd,nd->lkn", self.directions, u) - (self.directions * v).sum(-1)[..., None]
        sq = (u * u).sum(-1) - 2 * torch.einsum("lkd,nd->lkn", v, u) + (v * v).sum(-1)[..., None]
        return t, (sq - t * t).clamp_min(torch.finfo(t.dtype).tiny).sqrt()

    def transform(self, rotation: torch.Tensor, translation: torch.Tensor | None = None) -> TreeSystem:
        r"""The system moved by :math:`y \mapsto R y + t` (``rotation (d, d)`` orthogonal): the
        coordinates of the moved points on the moved lines are the old ones, so the distances between
        moved measures are unchanged (a joint isometry)."""
        origins = self.origins @ rotation.T
        if translation is not None:
            origins = origins + translation
        return TreeSystem(origins, self.directions @ rotation.T, self.attach, self.kind)


def _directions(n_trees: int, n_lines: int, dim: int, orthogonal: bool, gen, dtype, device) -> torch.Tensor:
    """``(L, k, d)`` unit directions, uniform on the sphere; orthonormal within a tree if ``orthogonal``."""
    g = torch.randn(n_trees, dim, n_lines, generator=gen, dtype=dtype).to(device)
    if orthogonal:
        if n_lines > dim:
            raise WgraphError(f"orthogonal directions: {n_lines} lines do not fit in dimension {dim}")
        q, r = torch.linalg.qr(g)  # Haar-distributed once the signs of r's diagonal are fixed
        return (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]).transpose(1, 2)
    g = g.transpose(1, 2)
    return g / g.norm(dim=-1, keepdim=True)


def sample_trees(
    n_trees: int,
    n_lines: int,
    dim: int,
    *,
    kind: str = "concurrent",
    center: torch.Tensor | None = None,
    std: float = 0.1,
    offset: float = 1.0,
    orthogonal: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TreeSystem:
    r"""Draw ``n_trees`` tree systems of ``n_lines`` lines in dimension ``dim``.

    The root (every line's origin for ``kind="concurrent"``, the first line's for ``"chain"``) is
    :math:`N(\text{center}, \text{std}^2 I)` (``center`` defaults to the origin; pass the data
    mean, as :func:`~wgraph.ot.tree_sliced_wasserstein` does). Directions are uniform on the sphere,
    orthonormal within each tree if ``orthogonal`` (needs ``n_lines <= dim``). In a chain, line
    :math:`l + 1` starts at coordinate :math:`c_l \sim U(-\text{offset}, \text{offset})` of line
    :math:`l`. Random numbers come from ``generator`` (on the CPU, so a seed gives the same trees on
    every device).
    """
    if kind not in TREE_KINDS:
        raise WgraphError(f"tree kind {kind!r}: expected one of {TREE_KINDS}")
    if n_trees < 1 or n_lines < 1 or dim < 1:
        raise WgraphError(f"sample_trees needs n_trees, n_lines, dim >= 1, got {n_trees}, {n_lines}, {dim}")
    theta = _directions(n_trees, n_lines, dim, orthogonal, generator, dtype, device)
    root = std * torch.randn(n_trees, 1, dim, generator=generator, dtype=dtype).to(device)
    if center is not None:
        root = root + center.to(dtype=dtype, device=theta.device)
    if kind == "concurrent":
        attach = torch.zeros(n_trees, n_lines, dtype=dtype, device=theta.device)
        return TreeSystem(root.expand(-1, n_lines, -1).contiguous(), theta, attach, kind)
    steps = offset * (2 * torch.rand(n_trees, n_lines, generator=generator, dtype=dtype) - 1)
    attach = torch.cat([steps[:, :-1], torch.zeros(n_trees, 1, dtype=dtype)], dim=1).to(theta.device)
    # x_{l+1} = x_l + c_l theta_l: origins are the root plus the partial sums of c_l theta_l
    moves = torch.cumsum(attach[..., None] * theta, dim=1)
    origins = torch.cat([root, root + moves[:, :-1]], dim=1)
    return TreeSystem(origins, theta, attach, kind)
