r"""What a message-passing backend is: a function, the cases it computes itself, and who takes the rest.

A block's :class:`Case` is everything a backend's ability may depend on: the block kind, the
aggregators, the activation, and the dtype and device of the block's tensors. A :class:`Backend`
answers :meth:`Backend.supports` for a case with a :class:`Support` (true or false, and why); a
case it does not compute goes to its ``fallback``, and from there down the chain
(``triton -> fused -> reference``). The chain is data: :meth:`Backend.route` walks it for one case
and :func:`wgraph.kernels.explain` prints it for every block kind.

A backend's function has the signature of :func:`wgraph.kernels.message_pass` after validation::

    fn(send, recv, edge, edge_weight, *, kind, reverse, aggr, act[, groups]) -> (B, n_recv, H * len(aggr))

(``aggr`` a tuple; ``groups`` passed only when it is not 1) and is called only for the cases its
``supports`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import WgraphError
from ..support import Support


class KernelError(WgraphError):
    """Bad arguments to :func:`wgraph.kernels.message_pass`, or an unknown backend."""


@dataclass(frozen=True)
class Case:
    """What decides which backend computes a block. ``dtype`` / ``device`` are ``None`` when the
    block's tensors do not share one; ``empty``: one of them has no elements."""

    kind: str
    aggr: tuple[str, ...]
    act: str
    dtype: torch.dtype | None
    device: torch.device | None
    empty: bool = False

    @classmethod
    def of(cls, tensors, kind: str, aggr: tuple[str, ...], act: str) -> Case:
        """The case of a block with these tensors (``None`` entries are skipped)."""
        tensors = [t for t in tensors if t is not None]
        dtypes, devices = {t.dtype for t in tensors}, {t.device for t in tensors}
        dtype = dtypes.pop() if len(dtypes) == 1 else None
        device = devices.pop() if len(devices) == 1 else None
        return cls(kind, aggr, act, dtype, device, any(t.numel() == 0 for t in tensors))


EVERY_CASE = Support(True, "every case")


def every_case(case: Case) -> Support:
    """The ``supports`` of a backend that computes every case."""
    return EVERY_CASE


@dataclass(frozen=True)
class Backend:
    """A message-passing backend: ``fn`` computes the cases ``check`` accepts, ``fallback`` the others.

    Call it like :func:`wgraph.kernels.message_pass` (arguments already validated) and it runs each
    block on the first backend of its chain that supports the block's case.
    """

    name: str
    fn: Callable[..., torch.Tensor] = field(repr=False)
    check: Callable[[Case], Support] = field(default=every_case, repr=False)
    fallback: Backend | None = None

    def supports(self, kind: str, aggr, act: str, dtype: torch.dtype | None, device) -> Support:
        """Whether this backend computes blocks of ``kind`` with these aggregators, activation, dtype
        and device itself (not through its fallback), and why (not)."""
        aggr = (aggr,) if isinstance(aggr, str) else tuple(aggr)
        return self.check(Case(kind, aggr, act, dtype, None if device is None else torch.device(device)))

    def route(self, case: Case) -> tuple[tuple[Backend, Support], ...]:
        """The chain ``case`` walks: each backend asked and its answer; the last one computes it."""
        steps, backend = [], self
        while True:
            answer = backend.check(case)
            steps.append((backend, answer))
            if answer:
                return tuple(steps)
            if backend.fallback is None:
                tried = "; ".join(f"{b.name}: {s.reason}" for b, s in steps)
                raise KernelError(f"no message-passing backend computes {case} ({tried})")
            backend = backend.fallback

    def runner(self, case: Case) -> Backend:
        """The backend of this chain that computes ``case`` (:meth:`route`'s last step)."""
        backend = self
        while not backend.check(case):
            if backend.fallback is None:
                self.route(case)  # raises, naming every answer
            backend = backend.fallback
        return backend

    def chain(self) -> tuple[str, ...]:
        """Names of this backend and its fallbacks, in order."""
        names, backend = [], self
        while backend is not None:
            names.append(backend.name)
            backend = backend.fallback
        return tuple(names)

    def __call__(self, send, recv, edge, edge_weight, *, kind, reverse, aggr, act, groups=1) -> torch.Tensor:
        runner = self.runner(Case.of((send, recv, edge, edge_weight), kind, aggr, act))
        extra = {"groups": groups} if groups != 1 else {}
        return runner.fn(send, recv, edge, edge_weight, kind=kind, reverse=reverse, aggr=aggr, act=act, **extra)

    def __repr__(self) -> str:
        return f"Backend({' -> '.join(map(repr, self.chain()))})"


__all__ = ["Backend", "Case", "Support", "KernelError", "every_case"]
