"""Reusable symmetry checks, in the spirit of e3nn's ``assert_equivariant``.

``fn`` is any callable on a :class:`~wgraph.graph.WeightGraph`: a readout (invariant), a
per-parameter head returning a WeightGraph, or a per-node map returning a ``(B, N, ...)`` tensor
(equivariant). Each check draws ``trials`` function-preserving permutations with
:func:`wgraph.random_symmetry` and compares.
"""

from __future__ import annotations

import warnings

import torch

from .graph import WeightGraph
from .symmetry import Symmetry, random_symmetry


def _compare(a, b) -> float:
    """Largest absolute difference between two outputs (tensors, graphs or tuples of them)."""
    if isinstance(a, WeightGraph):
        parts = [(a.nodes, b.nodes)] + [(x, y) for x, y in zip(a.edges, b.edges) if x is not None]
        return max(_compare(x, y) for x, y in parts)
    if isinstance(a, (tuple, list)):
        return max(_compare(x, y) for x, y in zip(a, b))
    if a.shape != b.shape:
        raise AssertionError(f"output shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a - b).abs().max().item() if a.numel() else 0.0


def _scale(a) -> float:
    if isinstance(a, WeightGraph):
        return max([a.nodes.abs().max().item()] + [e.abs().max().item() for e in a.edges if e is not None])
    if isinstance(a, (tuple, list)):
        return max(_scale(x) for x in a)
    return a.abs().max().item() if a.numel() else 0.0


def _permute_output(out, graph: WeightGraph, sym: Symmetry):
    if isinstance(out, WeightGraph):
        return out.permute(sym)
    if isinstance(out, (tuple, list)):
        return type(out)(_permute_output(o, graph, sym) for o in out)
    if sym.scales:
        raise AssertionError("scaled symmetries act on WeightGraph outputs only, not on (B, N, ...) tensors")
    idx = sym.node_permutation(graph.layout, graph.batch_size).to(out.device)
    if out.dim() < 2 or out.shape[:2] != idx.shape:
        raise AssertionError(
            f"equivariant outputs must be WeightGraphs or (B, N, ...) tensors; got shape {tuple(out.shape)}"
        )
    return out[torch.arange(out.shape[0], device=out.device)[:, None], idx]


def _symmetries(graph: WeightGraph, trials: int, seed: int, scale: bool = False):
    syms = [random_symmetry(graph, seed=seed + t, scale=scale) for t in range(trials)]
    if all(s.is_identity() for s in syms):
        warnings.warn("the graph has no non-trivial neuron permutation: the symmetry check is vacuous", stacklevel=3)
    return syms


def equivariance_error(
    fn, graph: WeightGraph, *, invariant: bool = False, trials: int = 3, seed: int = 0, scale: bool = False
) -> float:
    """Largest ``|fn(g.permute(p)) - p(fn(g))|`` (``p`` the identity on outputs if ``invariant``).

    ``scale=True`` draws symmetries with per-neuron scalings too (``random_symmetry(scale=True)``).
    """
    with torch.no_grad():
        out = fn(graph)
        errs = []
        for sym in _symmetries(graph, trials, seed, scale):
            expected = out if invariant else _permute_output(out, graph, sym)
            errs.append(_compare(fn(graph.permute(sym)), expected))
    return max(errs)


def _assert(fn, graph, invariant, trials, seed, atol, rtol, scale=False):
    err = equivariance_error(fn, graph, invariant=invariant, trials=trials, seed=seed, scale=scale)
    with torch.no_grad():
        tol = atol + rtol * _scale(fn(graph))
    what = "invariant" if invariant else "equivariant"
    if not err <= tol:
        raise AssertionError(f"not {what} under neuron permutations: max error {err:.3e} > tolerance {tol:.3e}")


def assert_invariant(
    fn,
    graph: WeightGraph,
    *,
    trials: int = 3,
    seed: int = 0,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    scale: bool = False,
):
    """Assert ``fn(g.permute(p)) == fn(g)`` for random function-preserving permutations ``p``
    (with ``scale=True``, permutations and scalings)."""
    _assert(fn, graph, True, trials, seed, atol, rtol, scale)


def assert_equivariant(
    fn,
    graph: WeightGraph,
    *,
    trials: int = 3,
    seed: int = 0,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    scale: bool = False,
):
    """Assert ``fn(g.permute(p)) == fn(g).permute(p)`` (WeightGraph outputs) or the node-permuted
    ``(B, N, ...)`` tensor, for random function-preserving permutations ``p`` (``scale=True``:
    with scalings; WeightGraph outputs only)."""
    _assert(fn, graph, False, trials, seed, atol, rtol, scale)
