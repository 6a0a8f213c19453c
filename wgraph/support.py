"""The answer to "can you do this?": a model class's ``supports(layout)`` and a message-passing
backend's ``supports(kind, aggr, act, dtype, device)`` both return a :class:`Support`.

Each model type answers for itself (:meth:`GraphNFN.supports <wgraph.nn.GraphNFN.supports>`,
:meth:`ParamSharingNFN.supports <wgraph.nn.ParamSharingNFN.supports>`,
:meth:`StatNN.supports <wgraph.nn.StatNN.supports>`), and so does each backend
(:meth:`wgraph.kernels.Backend.supports`); callers such as the profiler or
:func:`wgraph.kernels.explain` ask instead of keeping that knowledge themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Support:
    """``ok``: yes, it can; ``reason`` says why not (or, for a backend, how it computes the case),
    one sentence without a final period. Truthy exactly when ``ok``, so ``if Model.supports(layout):``
    reads as it should."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok
