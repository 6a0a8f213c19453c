"""Backend names and the one resolver that turns them into :class:`~wgraph.kernels.backend.Backend` objects.

``reference`` and ``fused`` are always there; ``pyg``, ``scatter`` and ``triton`` are imported on
first use, each needing an optional package. Resolving a backend whose package is missing warns,
every time, and returns :data:`FALLBACK` instead; the registry itself never changes, so the name
means the real backend again as soon as the package imports. :func:`explain` prints, for one
backend and case, which backend of the fallback chain computes each block kind and why.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import fused, reference
from .backend import Backend, Case, KernelError, Support, every_case
from .spec import BLOCK_KINDS

_BACKENDS: dict[str, Backend] = {"reference": reference.BACKEND, "fused": fused.BACKEND}

#: Backends whose module is imported on first use, with the optional package each needs. Each
#: module defines ``BACKEND``, a :class:`Backend`.
_LAZY: dict[str, tuple[str, str]] = {
    "pyg": ("wgraph.kernels.pyg", "torch_geometric"),
    "scatter": ("wgraph.kernels.scatter", "torch_scatter"),
    "triton": ("wgraph.kernels.triton_fused", "triton"),
}

#: What runs, with a warning, when a lazy backend's optional dependency is missing.
FALLBACK = "fused"


def register_backend(
    name: str | Backend,
    fn: Callable[..., torch.Tensor] | None = None,
    *,
    supports: Callable[[Case], Support] | None = None,
    fallback: str | Backend | None = None,
) -> Backend:
    """Make a backend selectable as ``message_pass(..., backend=name)``; returns it.

    Either a :class:`Backend`, or its parts: ``fn`` receives the arguments of
    :func:`wgraph.kernels.message_pass` after validation (``aggr`` as a tuple, without ``backend``;
    ``groups`` only when it is not 1) and must return what the reference backend returns, for every
    case ``supports(case)`` accepts (default: every case); the other cases go to ``fallback`` (a
    name or a backend).
    """
    if isinstance(name, Backend):
        backend = name
    else:
        if isinstance(fallback, str):
            fallback = get_backend(fallback)
        backend = Backend(name, fn, supports or every_case, fallback)
    _BACKENDS[backend.name] = backend
    return backend


def available_backends() -> tuple[str, ...]:
    """Every backend name :func:`message_pass` accepts, ``"auto"`` included."""
    return (*_BACKENDS, *(n for n in _LAZY if n not in _BACKENDS), "auto")


def missing_package(name: str) -> str | None:
    """The optional package backend ``name`` needs and this environment lacks, or ``None``."""
    package = _LAZY[name][1] if name in _LAZY and name not in _BACKENDS else None
    return package if package and importlib.util.find_spec(package) is None else None


def _lookup(name: str, device) -> tuple[Backend, str | None]:
    """The backend ``name`` means on ``device``, and why it is another one (``None`` if it is not)."""
    if name == "auto":
        name = "triton" if torch.device(device or "cpu").type == "cuda" else "fused"
    if name in _BACKENDS:
        return _BACKENDS[name], None
    if name not in _LAZY:
        raise KernelError(f"unknown message-passing backend {name!r}; available: {list(available_backends())}")
    try:
        module = importlib.import_module(_LAZY[name][0])
    except ImportError as e:
        why = f"message-passing backend {name!r} is unavailable ({e}); using {FALLBACK!r} instead. "
        return _BACKENDS[FALLBACK], why + "Install the missing package to use it."
    return module.BACKEND, None


def get_backend(name: str | Backend, device: torch.device | str | None = None) -> Backend:
    """The :class:`Backend` that ``name`` runs on ``device`` (a :class:`Backend` is returned as it is).

    ``"auto"`` is ``"triton"`` on CUDA devices and ``"fused"`` elsewhere. A lazy backend whose
    optional dependency does not import resolves to :data:`FALLBACK`, with a warning naming the
    missing package each time (resolve once per layer and device, not per block).
    """
    if isinstance(name, Backend):
        return name
    backend, why = _lookup(name, device)
    if why:
        warnings.warn(why, stacklevel=3)
    return backend


def resolve_backend(name: str, device: torch.device | str | None = None) -> str:
    """The name of the backend that ``name`` runs on ``device`` (see :func:`get_backend`)."""
    return get_backend(name, device).name


@dataclass(frozen=True)
class Explanation:
    """Which backend computes each block kind of one case, and why: ``str()`` of it is a table.

    ``rows`` holds ``(kind, backend that runs it, ((backend name, Support), ...) along the chain)``.
    """

    title: str
    rows: tuple[tuple[str, str, tuple[tuple[str, Support], ...]], ...]

    def runs(self, kind: str) -> str:
        """The backend that computes blocks of ``kind``."""
        return next(r for k, r, _ in self.rows if k == kind)

    def __str__(self) -> str:
        def steps(chain):
            return " -> ".join(f"{n}: {'yes' if s else 'no'}, {s.reason}" for n, s in chain)

        lines = [(k, r, steps(chain)) for k, r, chain in self.rows]
        wk, wr = (max(len(x) for x in col) for col in zip(("kind", "runs"), *[(k, r) for k, r, _ in lines]))
        table = [f"{'kind':<{wk}}  {'runs':<{wr}}  why", f"{'-' * wk}  {'-' * wr}  ---"]
        table += [f"{k:<{wk}}  {r:<{wr}}  {why}" for k, r, why in lines]
        return "\n".join([self.title, *table])


def explain(
    backend: str | Backend = "auto",
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    aggr: str | tuple[str, ...] = "mean",
    act: str = "relu",
    kinds: tuple[str, ...] = BLOCK_KINDS,
) -> Explanation:
    """Which backend of ``backend``'s fallback chain computes each block kind on ``device`` with this
    ``dtype``, ``aggr`` and ``act``, and why each backend asked does (not) compute it::

        print(wgraph.kernels.explain("triton", device="cpu", aggr=("mean", "max")))

    Resolving does not warn here: a missing optional package is named in the title instead.
    """
    aggr = (aggr,) if isinstance(aggr, str) else tuple(aggr)
    device = torch.device(device)
    resolved, why = (backend, None) if isinstance(backend, Backend) else _lookup(backend, device)
    name = backend.name if isinstance(backend, Backend) else backend
    title = f"backend {name!r} on {device}, {dtype}, aggr {list(aggr)}, act {act!r}"
    if why:
        title += f"\n{why}"
    elif resolved.name != name:
        title += f" ({name!r} is {resolved.name!r} here)"
    rows = []
    for kind in kinds:
        steps = resolved.route(Case(kind, aggr, act, dtype, device))
        rows.append((kind, steps[-1][0].name, tuple((b.name, s) for b, s in steps)))
    return Explanation(title, tuple(rows))


__all__ = [
    "register_backend",
    "get_backend",
    "resolve_backend",
    "available_backends",
    "missing_package",
    "explain",
    "Explanation",
    "FALLBACK",
]
